"""Read a recipe file into a validated ``Recipe``: YAML, one ``extends:`` level, ``--set`` overrides.

Every failure is a ``RecipeError`` whose message names the file and the key path, fit for one line.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from recipes.paths import RecipePathError, check_confined, resolve_paths
from recipes.schema import Recipe


class RecipeError(ValueError):
    """A recipe that cannot be used; ``str()`` is a one-line message naming the file and the key."""


def builtin_recipes() -> dict[str, Path]:
    """The recipes that ship with the package (``recipes/builtin/*.yaml``), by name."""
    folder = resources.files("recipes") / "builtin"
    return {p.name[: -len(".yaml")]: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """A file path, or the name of a built-in recipe (``quickstart``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = builtin_recipes()
    if str(name_or_path) in builtin:
        return builtin[str(name_or_path)]
    raise RecipeError(f"{path}: no such recipe file (built-in recipes: {', '.join(sorted(builtin))})")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}{where}: malformed YAML: {problem}") from exc
    if data is None:
        raise RecipeError(f"{path}: the recipe is empty")
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _apply_override(data: dict[str, Any], assignment: str, path: Path) -> None:
    key, sep, raw_value = assignment.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"{path}: --set {assignment!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: --set {key}: value {raw_value!r} is not valid YAML") from exc
    set_dotted(data, key.strip(), value, f"{path}: --set {key.strip()}")


def set_dotted(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Assign ``value`` at dotted ``key`` (creating sections); ``where`` prefixes the error when a part of
    the path is a value rather than a section (shared by ``--set`` and sweeps)."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"{where}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def _suggest(loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    """'did you mean' for an unknown key, by walking the schema along the key path."""
    fields: dict[str, Any] = model.model_fields
    for part in loc[:-1]:
        field = fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        sub = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if sub is None:
            return ""
        fields = sub.model_fields
    close = difflib.get_close_matches(str(loc[-1]), list(fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_validation_error(path: Path, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc) or "<root>"
        message = item["msg"].removeprefix("Value error, ")
        blamed = getattr(item.get("ctx", {}).get("error"), "key_path", None)
        if blamed:  # a whole-recipe check that names the key it blames
            key = ".".join(filter(None, [key if loc else "", blamed]))
        if item["type"] == "extra_forbidden":
            message = f"unknown key{_suggest(loc, Recipe)}"
        lines.append(f"{path}: {key}: {message}")
    return "; ".join(lines)


def load_recipe_data(path: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The merged raw mapping; relative paths are resolved against the file that wrote them (the recipe,
    or its ``extends:`` parent), and those given with ``--set`` against the working directory."""
    data = _read_yaml(path)
    resolve_paths(data, Recipe, path.resolve().parent)
    parent_ref = data.pop("extends", None)
    if parent_ref is not None:
        parent_path = (path.parent / str(parent_ref)) if not Path(str(parent_ref)).is_absolute() else Path(parent_ref)
        if not parent_path.is_file():
            parent_path = resolve_recipe_path(str(parent_ref).removesuffix(".yaml"))
        parent = _read_yaml(parent_path)
        if "extends" in parent:
            raise RecipeError(f"{path}: extends: {parent_ref} extends another recipe; only one level is allowed")
        resolve_paths(parent, Recipe, parent_path.resolve().parent)
        data = _deep_merge(parent, data)
    for assignment in overrides or []:
        _apply_override(data, assignment, path)
    resolve_paths(data, Recipe, Path.cwd())  # only --set values can still be relative
    return data


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, Path]:
    path = resolve_recipe_path(name_or_path)
    data = load_recipe_data(path, overrides)
    try:
        check_confined(data, Recipe)
    except RecipePathError as exc:
        raise RecipeError(f"{path}: {exc.key_path}: {exc}") from None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(path, exc)) from exc
    if recipe.sweep:  # every point must validate before anything runs
        expand_sweep(recipe, path)
    return recipe, path


def recipe_hash(recipe: Recipe) -> str:
    """Content hash of the validated recipe (defaults filled in), for provenance."""
    canonical = json.dumps(recipe.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class SweepPoint:
    index: int
    values: dict[str, Any]
    recipe: Recipe

    @property
    def label(self) -> str:
        """``prune.ratio=0.25, student.config.width=8``: the run name and the table's row label."""
        return ", ".join(f"{k}={v}" for k, v in self.values.items())

    @property
    def short_label(self) -> str:
        """``width=8 ratio=0.25``: last key parts (when they are unique), short enough for a UI column."""
        lasts = [k.rsplit(".", 1)[-1] for k in self.values]
        names = lasts if len(set(lasts)) == len(lasts) else list(self.values)
        return " ".join(f"{n}={v}" for n, v in zip(names, self.values.values()))


def is_variant_axis(key: str) -> bool:
    """A sweep key that is no recipe key (``family``): its values are named variants, each a mapping of
    dotted recipe keys set together (``{name: lwisp_w05, student.model: lwisp, student.config: {width:
    0.5}}``), for values that only make sense in pairs, like a model and its config."""
    return "." not in key and key not in Recipe.model_fields


def _variant(key: str, value: Any, path: Path | str) -> tuple[str, dict[str, Any]]:
    """One named variant: (its label, its dotted settings)."""
    if not isinstance(value, dict) or not [k for k in value if k != "name"]:
        close = difflib.get_close_matches(key, list(Recipe.model_fields), n=1)
        hint = f"did you mean {close[0]!r}? Else " if close else ""
        raise RecipeError(f"{path}: sweep.{key}: {key!r} is not a recipe key: {hint}its values must be named "
                          f"variants, mappings of dotted keys ({{name: a, student.model: smallnet}}); got {value!r}")
    settings = {str(k): v for k, v in value.items() if k != "name"}
    label = str(value.get("name") or " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in settings.items()))
    return label, settings


def _sweep_points(recipe: Recipe, path: Path | str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Per point: (its values as labelled, the dotted settings it makes); a variant axis labels a point
    by the variant's name and sets every key of the variant."""
    if not recipe.sweep:
        return []
    keys = list(recipe.sweep)
    axes: list[list[tuple[Any, dict[str, Any]]]] = []
    for key in keys:
        if is_variant_axis(key):
            axes.append(list(_variant(key, v, path) for v in recipe.sweep[key]))
        else:
            axes.append([(v, {key: v}) for v in recipe.sweep[key]])
    if recipe.sweep_mode == "zip":
        lengths = {k: len(v) for k, v in zip(keys, axes)}
        if len(set(lengths.values())) != 1:
            raise RecipeError(f"{path}: sweep: sweep_mode zip needs lists of one length; got "
                              + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
        combos = list(zip(*axes))
    else:
        combos = list(itertools.product(*axes))
    points = []
    for combo in combos:
        settings: dict[str, Any] = {}
        for _, part in combo:
            settings.update(part)
        points.append(({k: label for k, (label, _) in zip(keys, combo)}, settings))
    return points


def sweep_values(recipe: Recipe, path: Path | str = "<recipe>") -> list[dict[str, Any]]:
    """The points' values: the product of the lists (grid) or their i-th entries (zip); a variant axis
    (``is_variant_axis``) gives its variant's name."""
    return [values for values, _ in _sweep_points(recipe, path)]


def expand_sweep(recipe: Recipe, path: Path | str = "<recipe>") -> list[SweepPoint]:
    """Every point as a validated recipe; a bad key or value raises ``RecipeError`` naming the point.

    Each point's bundle gets its own folder (``<bundle>_p<index>``) unless the sweep sets
    ``handoff.name`` itself, so points never overwrite each other's hand-off.
    """
    base = recipe.model_dump(mode="json", exclude={"sweep", "sweep_mode"})
    points = []
    for index, (values, settings) in enumerate(_sweep_points(recipe, path)):
        data = copy.deepcopy(base)
        for key, value in settings.items():
            set_dotted(data, key, value, f"{path}: sweep.{key}")
        if "handoff.name" not in settings:
            data["handoff"]["name"] = f"{recipe.bundle_name}_p{index:02d}"
        try:
            points.append(SweepPoint(index, values, Recipe.model_validate(data)))
        except ValidationError as exc:
            label = SweepPoint(index, values, recipe).label
            problems = format_validation_error(Path(str(path)), exc).replace(f"{path}: ", "")
            raise RecipeError(f"{path}: sweep point {index} [{label}]: {problems}") from None
    return points


def select_points(specs: list[str], count: int, path: Path | str = "<recipe>") -> list[int]:
    """The point indices ``--point I`` / ``--points I..J`` name (``I..J`` inclusive, ``I,J,K`` a list), in
    order without repeats; every index must be one of the sweep's ``count`` points."""
    chosen: list[int] = []
    for spec in specs:
        for part in filter(None, (p.strip() for p in str(spec).split(","))):
            first, dots, last = part.partition("..")
            try:
                lo, hi = int(first), int(last if dots else first)
            except ValueError:
                raise RecipeError(f"{path}: --points {spec!r}: expected I, I..J or I,J,K (point indices)") from None
            bad = [i for i in (lo, hi) if not 0 <= i < count]
            if bad or hi < lo:
                raise RecipeError(f"{path}: --points {spec!r}: the sweep has points 0..{count - 1}"
                                  + (f"; {bad[0]} is not one" if bad else f"; {lo}..{hi} is empty"))
            chosen += [i for i in range(lo, hi + 1) if i not in chosen]
    return chosen
