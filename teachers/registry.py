"""Name -> model-factory registries shared by ``teachers`` and ``students``.

Models are plain ``nn.Module``s; recipes name them, and the factory's error lists what exists so a
typo in a recipe is fixed without reading code.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

ModelFactory = Callable[..., nn.Module]


class ModelRegistry:
    """A small typed registry: ``@REG.register("name")`` on a factory, ``REG.create(name, **cfg)``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, ModelFactory] = {}

    def register(self, name: str) -> Callable[[ModelFactory], ModelFactory]:
        def decorator(factory: ModelFactory) -> ModelFactory:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def create(self, name: str, **config: object) -> nn.Module:
        if name not in self._factories:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        try:
            return self._factories[name](**config)
        except TypeError as exc:  # a wrong config key: say which model and what it got
            raise TypeError(f"{self.kind} {name!r} rejected its config {sorted(config)}: {exc}") from exc


TEACHERS = ModelRegistry("teacher")
