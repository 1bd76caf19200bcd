"""Name -> model-factory registries for the whole zoo: ``TEACHERS`` and ``STUDENTS``.

Models are plain ``nn.Module``s; recipes name them, and the factory's error lists what exists so a
typo in a recipe is fixed without reading code.

This module sits on the ground floor (it imports nothing of this project), so both model packages
register into it.  The zoo is complete only once every *provider* module has run its ``@register``
decorators: ``teachers`` (PUNET, PyNET, AA-UNet) and ``students`` (which also registers the
clean-image teachers, since those are student bodies run J -> J).  A lookup loads the providers by
name first, so ``create_teacher("lwisp_clean")`` works whichever package was imported.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

ModelFactory = Callable[..., nn.Module]

PROVIDERS = ("teachers", "students")
"""Modules whose import registers the zoo's models (each imports its own architecture modules)."""
_providers_loaded = False


def load_providers() -> None:
    """Import every provider module once, so every registered name is known before a lookup."""
    global _providers_loaded
    if _providers_loaded:
        return
    _providers_loaded = True  # set first: a provider's own imports come back here
    for module in PROVIDERS:
        importlib.import_module(module)


@dataclass(frozen=True)
class ModelInfo:
    """What tests, benchmarks and docs need to know about a registered model without building it.

    ``tiny_config``: factory kwargs for a fast CPU-sized instance (tests parametrized over the
    registry use it).  ``input_multiple``/``min_input``: the packed-input H and W the model accepts
    (multiples of ``input_multiple``, at least ``min_input``).  ``in_channels``/``upscale``: input
    channels and output/input size ratio.  ``paper``: figures the source paper reports for the default
    configuration, e.g. ``{"params": 2_014_681, "source": "LW-ISP Table 3"}``, shown beside ours.
    """

    tiny_config: dict[str, Any] = field(default_factory=dict)
    input_multiple: int = 1
    min_input: int = 8
    in_channels: int = 4
    upscale: int = 2
    paper: dict[str, Any] = field(default_factory=dict)


class ModelRegistry:
    """A small typed registry: ``@REG.register("name")`` on a factory, ``REG.create(name, **cfg)``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, ModelFactory] = {}
        self._info: dict[str, ModelInfo] = {}

    def register(self, name: str, info: ModelInfo | None = None) -> Callable[[ModelFactory], ModelFactory]:
        def decorator(factory: ModelFactory) -> ModelFactory:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            self._info[name] = info or ModelInfo()
            return factory

        return decorator

    def info(self, name: str) -> ModelInfo:
        load_providers()
        if name not in self._info:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._info[name]

    def names(self) -> list[str]:
        load_providers()
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        load_providers()
        return name in self._factories

    def create(self, name: str, **config: object) -> nn.Module:
        load_providers()
        if name not in self._factories:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        try:
            return self._factories[name](**config)
        except TypeError as exc:  # a wrong config key: say which model and what it got
            raise TypeError(f"{self.kind} {name!r} rejected its config {sorted(config)}: {exc}") from exc


TEACHERS = ModelRegistry("teacher")
STUDENTS = ModelRegistry("student")
