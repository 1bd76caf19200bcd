"""Name -> model-factory registries for the zoo and for users' own models: ``TEACHERS`` and ``STUDENTS``.

Models are plain ``nn.Module``s; recipes name them, and the factory's error lists what exists so a
typo in a recipe is fixed without reading code.

This module sits on the ground floor (it imports nothing of this project), so every model registers
into it the same way, with ``@STUDENTS.register("name", ModelInfo(...))`` on a factory:

- the zoo's *providers*: ``teachers`` (PUNET, PyNET, AA-UNet) and ``students`` (which also registers
  the clean-image teachers, since those are student bodies run J -> J);
- *plugins*: installed distributions that advertise a module in the entry-point group
  ``ispdc.models`` (``[project.entry-points."ispdc.models"] acme = "acme_isp.models"``); importing
  that module registers its models, recorded with the distribution's name as their origin;
- models handed to the Python API (``recipes.api``), origin ``api``.

A lookup loads the providers and plugins first, so ``create_teacher("lwisp_clean")`` or a plugin's
name works whichever package was imported.  A recipe never names an import path.
"""
from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from torch import nn

ModelFactory = Callable[..., nn.Module]

PROVIDERS = ("teachers", "students")
"""Modules whose import registers the zoo's models (each imports its own architecture modules)."""
ENTRY_POINT_GROUP = "ispdc.models"
ZOO = "zoo"
API = "api"
_origin = ZOO  # who is registering right now: the zoo, a plugin distribution, or the API
_loaded = False
_load_error: PluginError | None = None


class PluginError(RuntimeError):
    """A plugin that cannot be used (it fails to import, or a name clashes); one line naming its origin."""


@contextlib.contextmanager
def registering_as(origin: str) -> Iterator[None]:
    """Models registered inside the block are recorded as coming from ``origin``."""
    global _origin
    previous, _origin = _origin, origin
    try:
        yield
    finally:
        _origin = previous


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.value, ep.name))


def load_providers() -> None:
    """Import the zoo's providers and every plugin once, so every registered name is known before a
    lookup.  A plugin that fails to import makes every later lookup fail with the same one line."""
    global _loaded, _load_error
    if _loaded:
        if _load_error is not None:
            raise _load_error
        return
    _loaded = True  # set first: a provider's own imports come back here
    try:
        for module in PROVIDERS:
            importlib.import_module(module)
    except PluginError as exc:  # a plugin imported by hand earlier took a zoo name
        _load_error = exc
        raise
    for entry in _entry_points():
        distribution = entry.dist.name if entry.dist is not None else "an unknown distribution"
        try:
            with registering_as(distribution):
                entry.load()
        except PluginError as exc:
            _load_error = exc
        except Exception as exc:  # whatever the plugin raised: name it, do not let it look like ours
            _load_error = PluginError(
                f"plugin {distribution}: entry point '{entry.name} = {entry.value}' (group {ENTRY_POINT_GROUP}) "
                f"failed to import: {type(exc).__name__}: {exc}")
        if _load_error is not None:
            raise _load_error


@dataclass(frozen=True)
class ModelInfo:
    """What stages, tests, benchmarks and docs need to know about a registered model without building it.

    ``tiny_config``: factory kwargs for a fast CPU-sized instance (tests parametrized over the
    registry use it).  ``input_multiple``/``min_input``: the packed-input H and W the model accepts
    (multiples of ``input_multiple``, at least ``min_input``).  ``in_channels``/``upscale``: input
    channels and output/input size ratio.  ``paper``: figures the source paper reports for the default
    configuration, e.g. ``{"params": 2_014_681, "source": "LW-ISP Table 3"}``, shown beside ours.
    ``trunk_tap``: the module path where the student's shared trunk ends and its own small top (the
    layers that make RGB) begins; once-for-all training (``distill.once_for_all``) grows its detachable
    super-net head there.  The channel count is read from a probe forward, so it follows ``width``.
    The rest of the contract lives on the module (docs/your-model.md): ``feature_taps``,
    ``prune_ignore``, ``reparameterize()`` on blocks, ``forward_levels()`` for level-wise teachers.
    """

    tiny_config: dict[str, Any] = field(default_factory=dict)
    input_multiple: int = 1
    min_input: int = 8
    in_channels: int = 4
    upscale: int = 2
    paper: dict[str, Any] = field(default_factory=dict)
    trunk_tap: str | None = None


class ModelRegistry:
    """A small typed registry: ``@REG.register("name")`` on a factory, ``REG.create(name, **cfg)``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, ModelFactory] = {}
        self._info: dict[str, ModelInfo] = {}
        self._origins: dict[str, str] = {}

    def register(self, name: str, info: ModelInfo | None = None) -> Callable[[ModelFactory], ModelFactory]:
        def decorator(factory: ModelFactory) -> ModelFactory:
            self.add(name, factory, info)
            return factory

        return decorator

    def add(self, name: str, factory: ModelFactory, info: ModelInfo | None = None) -> None:
        """Register ``factory`` under ``name`` for the current origin.  A name taken by another origin is
        refused naming both; the API may replace its own (a notebook cell run twice)."""
        if name in self._factories:
            taken, new = self._origins[name], _origin_of(factory)
            if not (taken == new == API):
                raise PluginError(f"{self.kind} {name!r} from {_describe(new)} clashes with the {self.kind} "
                                  f"of that name from {_describe(taken)}; rename one of them")
        self._factories[name] = factory
        self._info[name] = info or ModelInfo()
        self._origins[name] = _origin_of(factory)

    def info(self, name: str) -> ModelInfo:
        self._require(name)
        return self._info[name]

    def origin(self, name: str) -> str:
        """``zoo``, ``api`` or the name of the distribution whose entry point registered ``name``."""
        self._require(name)
        return self._origins[name]

    def names(self) -> list[str]:
        load_providers()
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        load_providers()
        return name in self._factories

    def create(self, name: str, **config: object) -> nn.Module:
        self._require(name)
        try:
            return self._factories[name](**config)
        except TypeError as exc:  # a wrong config key: say which model and what it got
            raise TypeError(f"{self.kind} {name!r} rejected its config {sorted(config)}: {exc}") from exc

    def _require(self, name: str) -> None:
        load_providers()
        if name not in self._factories:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")


def _origin_of(factory: ModelFactory) -> str:
    """The current origin; for a module imported by hand (not through its entry point) the distribution
    that installed it, so a plugin is named the same however it was loaded."""
    if _origin != ZOO:
        return _origin
    package = str(getattr(factory, "__module__", "")).split(".")[0]
    if package in PROVIDERS:
        return ZOO
    distributions = metadata.packages_distributions().get(package)
    return distributions[0] if distributions else f"module {package}"


def _describe(origin: str) -> str:
    return {ZOO: "the ispdc zoo", API: "the Python API"}.get(origin, f"plugin {origin}")


TEACHERS = ModelRegistry("teacher")
STUDENTS = ModelRegistry("student")
