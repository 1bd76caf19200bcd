"""The recipe schema's base: strict blocks, the key-path error, and dotted keys."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyPathError(ValueError):
    """A whole-recipe check that blames one key: the error names ``key_path``, not the recipe root."""

    def __init__(self, key_path: str, message: str) -> None:
        super().__init__(message)
        self.key_path = key_path


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b.c": value}`` (MLflow params, dotted sweep keys)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat
