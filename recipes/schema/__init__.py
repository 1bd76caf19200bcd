"""The recipe: one YAML file that reads top to bottom, validated strictly.

Every block forbids unknown keys, so a typo is an error naming its key path, never a silently ignored
setting.  YAML is read with ``safe_load``; nothing in a recipe is imported or called by name except
registered models and losses.
"""
from recipes.schema.base import KeyPathError, Strict, flatten
from recipes.schema.compression import *  # noqa: F403
from recipes.schema.compression import __all__ as _compression
from recipes.schema.models import *  # noqa: F403
from recipes.schema.models import __all__ as _models
from recipes.schema.recipe import STAGE_ORDER, Recipe

__all__ = ["KeyPathError", "Strict", "flatten", "STAGE_ORDER", "Recipe", *_models, *_compression]
