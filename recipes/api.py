"""Run a recipe from Python (a notebook, a script) with your own ``nn.Module``s.

    from recipes.api import run_recipe_with_models
    result = run_recipe_with_models("my_recipe.yaml", students={"acme_tiny": make_tiny},
                                    workdir="runs/acme")
    result.metrics["export"]["psnr_tflite_int8"], result.bundle, result.run_id

Models are handed over as factories (``config -> nn.Module``), ``(factory, ModelInfo)`` pairs, or
module instances (each stage builds a fresh copy, weights included); they are registered under their
name (origin ``api``) for this process and the recipe names them like zoo models.  Later processes
that rebuild a pruned or folded model from its channel plan (``--resume`` from the CLI,
``ispdc handoff --from-registry``) need the same names registered again, which an installed plugin
package (entry point ``ispdc.models``, docs/your-model.md) does by itself.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import yaml
from torch import nn

from recipes.context import StageOutcome
from recipes.loader import RecipeError, load_recipe
from recipes.paths import resolve_paths
from recipes.results import HandoffResult
from recipes.runner import run_recipe
from recipes.schema import Recipe
from recipes.tracking import default_tracking_uri
from teachers.registry import API, STUDENTS, TEACHERS, ModelInfo, ModelRegistry, registering_as

ModelSource: TypeAlias = nn.Module | Callable[..., nn.Module] | tuple[Callable[..., nn.Module], ModelInfo]
"""A module instance, a factory, or a factory with the ``ModelInfo`` it declares."""


@dataclass
class RecipeRun:
    """What a recipe run produced: per-stage metrics and results, the bundle, the MLflow run."""

    run_id: str
    tracking_uri: str
    recipe: Recipe
    outcomes: list[StageOutcome]

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """Stage name -> the metrics that stage logged."""
        return {o.name: o.metrics for o in self.outcomes}

    @property
    def bundle(self) -> Path | None:
        """The hand-off bundle folder, when the recipe ran to the hand-off stage."""
        return next((o.result.bundle for o in self.outcomes if isinstance(o.result, HandoffResult)), None)


def register_models(registry: ModelRegistry, models: Mapping[str, ModelSource]) -> None:
    """Register each model under its name with origin ``api`` (replacing an earlier API registration)."""
    for name, source in models.items():
        factory, info = _factory(name, source)
        with registering_as(API):
            registry.add(name, factory, info)


def _factory(name: str, source: ModelSource) -> tuple[Callable[..., nn.Module], ModelInfo | None]:
    if isinstance(source, tuple):
        factory, info = source
        if not callable(factory) or not isinstance(info, ModelInfo):
            raise TypeError(f"model {name!r}: a tuple must be (factory, ModelInfo)")
        return factory, info
    if isinstance(source, nn.Module):
        instance = source

        def copy_of_instance(**config: object) -> nn.Module:
            if config:
                raise TypeError(f"model {name!r} was given as a module instance, so it takes no config; "
                                f"got {sorted(config)}")
            return copy.deepcopy(instance)

        return copy_of_instance, None
    if callable(source):
        return source, None
    raise TypeError(f"model {name!r}: expected an nn.Module, a factory or (factory, ModelInfo); "
                    f"got {type(source).__name__}")


def run_recipe_with_models(recipe: str | Path | Mapping[str, Any], *, workdir: str | Path,
                           teachers: Mapping[str, ModelSource] | None = None,
                           students: Mapping[str, ModelSource] | None = None,
                           overrides: list[str] | None = None, tracking_uri: str | None = None,
                           use_cache: bool = True, resume: bool = True) -> RecipeRun:
    """Register the given models, then load (a built-in name, a file, or a mapping written like the YAML),
    validate and run the recipe; errors are the CLI's (``RecipeError`` naming the key, ``StageError``)."""
    register_models(TEACHERS, teachers or {})
    register_models(STUDENTS, students or {})
    workdir = Path(workdir).resolve()
    if isinstance(recipe, Mapping):
        data = copy.deepcopy(dict(recipe))
        if not isinstance(data.get("name"), str):
            raise RecipeError("<recipe mapping>: name: a recipe mapping needs a name")
        resolve_paths(data, Recipe, Path.cwd())  # relative paths in a mapping are relative to the caller
        workdir.mkdir(parents=True, exist_ok=True)
        recipe = workdir / f"{data['name']}.recipe.yaml"  # validated, tracked and cited like a file
        recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    loaded, path = load_recipe(recipe, overrides)
    run_id, outcomes = run_recipe(loaded, path, workdir, tracking_uri, use_cache=use_cache, resume=resume)
    return RecipeRun(run_id=run_id, tracking_uri=tracking_uri or default_tracking_uri(workdir), recipe=loaded,
                     outcomes=outcomes)
