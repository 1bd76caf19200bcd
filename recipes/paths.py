"""File paths inside a recipe: resolved against the recipe's own folder, optionally confined to a data root.

A recipe names its dataset, teacher checkpoint and loss weights by path; resolving a relative path
against the recipe file (not the shell's working directory) makes a recipe mean the same thing wherever
``ispdc`` is started.  Which keys are paths is read from the schema (every ``Path``-typed field), so a new
path setting is covered by being declared.  When ``ISPDC_DATA_ROOT`` is set, every recipe path must lie
inside it (after following symlinks and ``..``): a shared or served setup can accept recipes without
letting them read arbitrary files.
"""
from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

DATA_ROOT_ENV = "ISPDC_DATA_ROOT"


class RecipePathError(ValueError):
    """A recipe path that escapes the declared data root; ``key_path`` names the key."""

    def __init__(self, key_path: str, message: str) -> None:
        super().__init__(message)
        self.key_path = key_path


def _kinds(annotation: Any) -> tuple[bool, type[BaseModel] | None, bool]:
    """(is a path, the nested model, is a list of that model) for one field annotation."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        found = [_kinds(a) for a in args if a is not type(None)]
        is_path = any(k[0] for k in found)
        nested = next(((k[1], k[2]) for k in found if k[1] is not None), (None, False))
        return is_path, nested[0], nested[1]
    if origin is typing.Annotated:
        return _kinds(args[0])
    if origin in (list, tuple) and args:
        inner = _kinds(args[0])
        return False, inner[1], inner[1] is not None
    if isinstance(annotation, type):
        if issubclass(annotation, Path):
            return True, None, False
        if issubclass(annotation, BaseModel):
            return False, annotation, False
    return False, None, False


def resolve_paths(data: dict[str, Any], model: type[BaseModel], base: Path) -> None:
    """Make every relative path value in ``data`` (a raw recipe mapping) absolute against ``base``, in place.

    Values that are not strings (a wrong type) are left for validation to report.
    """
    for key, value in data.items():
        field = model.model_fields.get(str(key))
        if field is None or value is None:
            continue  # unknown keys are reported by validation
        is_path, nested, is_list = _kinds(field.annotation)
        if is_path and isinstance(value, str) and value:
            path = Path(value).expanduser()
            data[key] = str(path if path.is_absolute() else (base / path))
        elif nested is not None and is_list and isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    resolve_paths(item, nested, base)
        elif nested is not None and isinstance(value, dict):
            resolve_paths(value, nested, base)


def recipe_paths(data: dict[str, Any], model: type[BaseModel], prefix: str = "") -> list[tuple[str, Path]]:
    """(key path, value) of every path setting in a raw recipe mapping."""
    found: list[tuple[str, Path]] = []
    for key, value in data.items():
        field = model.model_fields.get(str(key))
        if field is None or value is None:
            continue
        name = f"{prefix}{key}"
        is_path, nested, is_list = _kinds(field.annotation)
        if is_path and isinstance(value, str) and value:
            found.append((name, Path(value)))
        elif nested is not None and is_list and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    found += recipe_paths(item, nested, f"{name}.{i}.")
        elif nested is not None and isinstance(value, dict):
            found += recipe_paths(value, nested, f"{name}.")
    return found


def data_root() -> Path | None:
    """The declared data root (``ISPDC_DATA_ROOT``), resolved; None when unset or empty."""
    value = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else None


def check_confined(data: dict[str, Any], model: type[BaseModel], root: Path | None = None) -> None:
    """Raise ``RecipePathError`` for the first recipe path outside ``root`` (default: ``ISPDC_DATA_ROOT``)."""
    root = root if root is not None else data_root()
    if root is None:
        return
    for key, path in recipe_paths(data, model):
        real = path.resolve()
        if not real.is_relative_to(root):
            raise RecipePathError(key, f"{path} is outside the data root {root} ({DATA_ROOT_ENV})")
