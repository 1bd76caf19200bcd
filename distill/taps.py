"""Feature taps: the outputs of named submodules, captured with forward hooks during a normal forward.

Hooks (not FX tracing) so any model runs unchanged: data-dependent control flow, PixelShuffle,
attention, ``forward(x, level=...)`` all keep working, and the tap is exactly what the module
returned.  A module path is what ``model.named_modules()`` lists (``"up2"``, ``"dec1.0"``).
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn


class TapError(ValueError):
    """A tap names no module, or a tapped module did not produce exactly one tensor per forward."""


def tap_paths(model: nn.Module) -> tuple[str, ...]:
    """The model's declared ``feature_taps`` (module paths, coarse to fine); a per-level dict (PyNET)
    is listed coarsest level first."""
    taps = getattr(model, "feature_taps", ())
    if isinstance(taps, Mapping):
        return tuple(taps[level] for level in sorted(taps, reverse=True))
    return tuple(taps)


def resolve_modules(model: nn.Module, paths: Iterable[str], owner: str = "model") -> dict[str, nn.Module]:
    """``path -> module``; an unknown path fails naming the closest existing paths and the declared taps."""
    modules = dict(model.named_modules())
    found: dict[str, nn.Module] = {}
    for path in paths:
        if path in modules and path:
            found[path] = modules[path]
            continue
        close = difflib.get_close_matches(path, [n for n in modules if n], n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        declared = tap_paths(model)
        listed = f" (its feature_taps: {', '.join(declared)})" if declared else ""
        raise TapError(f"{owner} {type(model).__name__} has no submodule {path!r}{hint}{listed}")
    return found


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


class FeatureTaps:
    """Context manager: while active, every forward of ``model`` records ``{path: output}``.

    ``with FeatureTaps(student, ["up2", "up3"]) as feats: y = student(x)`` leaves ``feats["up2"]``
    holding the tensor ``up2`` returned (with its autograd graph).  A module run twice in one forward
    (a shared block) is ambiguous and raises; tap its caller instead.
    """

    def __init__(self, model: nn.Module, paths: Sequence[str], owner: str = "model") -> None:
        self.paths = tuple(dict.fromkeys(paths))
        self.modules = resolve_modules(model, self.paths, owner)
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, path: str):  # noqa: ANN202
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            tensor = _first_tensor(output)
            if tensor is None:
                raise TapError(f"tapped module {path!r} returned {type(output).__name__}, not a tensor")
            if path in self.features:
                raise TapError(f"tapped module {path!r} ran more than once in one forward (a shared block); "
                               "tap the module that calls it instead")
            self.features[path] = tensor

        return record

    def clear(self) -> None:
        self.features = {}

    def __enter__(self) -> dict[str, torch.Tensor]:
        self.clear()
        self._handles = [m.register_forward_hook(self._hook(p)) for p, m in self.modules.items()]
        return self.features

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def collect(self) -> dict[str, torch.Tensor]:
        """The taps of the last forward; fails naming any tap that did not run."""
        missing = [p for p in self.paths if p not in self.features]
        if missing:
            raise TapError(f"tapped modules {missing} did not run in the forward pass")
        return {p: self.features[p] for p in self.paths}
