"""The student registry (same mechanism as the teachers')."""
from teachers.registry import ModelRegistry

STUDENTS = ModelRegistry("student")
