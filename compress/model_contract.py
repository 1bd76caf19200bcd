"""The model contract every stage assumes, and the cheap check of its shape part.

A registered model (``teachers.registry``: a factory plus its ``ModelInfo``) takes packed RAW
``N x in_channels x H x W`` in [0, 1] (4 channels; a clean-image teacher takes 3-channel RGB) and
returns sRGB ``N x 3 x (upscale*H) x (upscale*W)``, for every H and W that are multiples of
``input_multiple`` and at least ``min_input``.  The rest of the contract (gradients, feature taps,
folding, pruning, export) is checked by ``compress.model_check``, which builds and runs the model.

``quick_contract_findings`` checks the shape part only, on PyTorch's ``meta`` device (no weights are
allocated, no arithmetic is done), so ``ispdc validate`` can afford it for any configuration, the
full-width PyNET included.  This module imports nothing heavier than torch and the registry.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import torch
import yaml
from torch import nn

from teachers.registry import STUDENTS, TEACHERS, ModelInfo, ModelRegistry

FAMILIES: dict[str, ModelRegistry] = {"teacher": TEACHERS, "student": STUDENTS}
PROBE_MIN_SIDE = 32
"""The probes' smallest side: big enough for a few 2x2 poolings, small enough for a CPU."""
INPUT_CHANNELS = (4, 3)
"""What ispdc feeds a model: 4-channel packed RAW (3-channel RGB for the clean-image teachers)."""


def resolve_family(name: str, family: str = "auto") -> str:
    """``"teacher"`` or ``"student"``: ``family`` itself (checked), or for ``"auto"`` the registry that has
    ``name``.  An unknown name raises ``KeyError`` with the registry's message (what exists)."""
    if family != "auto":
        if family not in FAMILIES:
            raise ValueError(f"family must be 'auto', 'teacher' or 'student'; got {family!r}")
        FAMILIES[family].info(name)  # the registry's KeyError: "unknown student 'x'; known: ..."
        return family
    found = [kind for kind, registry in FAMILIES.items() if name in registry]
    if len(found) > 1:
        raise KeyError(f"{name!r} is both a teacher and a student; say which with family 'teacher' or 'student'")
    if not found:
        close = difflib.get_close_matches(name, TEACHERS.names() + STUDENTS.names(), n=2)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise KeyError(f"unknown teacher or student {name!r}{hint}; teachers: {', '.join(TEACHERS.names())}; "
                       f"students: {', '.join(STUDENTS.names())}")
    return found[0]


def parse_config(assignments: list[str]) -> dict[str, Any]:
    """Factory arguments from ``KEY=VALUE`` strings, each value parsed as YAML as in a recipe's ``--set``
    (``["width=0.25", "batch_norm=true"]`` -> ``{"width": 0.25, "batch_norm": True}``); ``ValueError`` on a
    malformed one."""
    config: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--config {assignment!r} is not of the form KEY=VALUE")
        try:
            config[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ValueError(f"--config {key.strip()}: value {raw!r} is not valid YAML") from exc
    return config


def probe_sizes(info: ModelInfo) -> tuple[tuple[int, int], tuple[int, int]]:
    """Two valid packed sizes ``(H, W)``: the smallest square side >= max(min_input, 32) that is a
    multiple of ``input_multiple``, then the same height with the next multiple up as width (a
    rectangle, so a swapped H and W shows; an odd width when the model claims any size works)."""
    multiple = max(1, info.input_multiple)
    side = -(-max(info.min_input, PROBE_MIN_SIDE) // multiple) * multiple
    return (side, side), (side, side + multiple)


def info_problems(info: ModelInfo) -> list[str]:
    """What in the ``ModelInfo`` itself no stage can work with."""
    problems = []
    if info.in_channels not in INPUT_CHANNELS:
        problems.append(f"ModelInfo.in_channels={info.in_channels}: ispdc feeds 4-channel packed RAW "
                        "(3-channel RGB to clean-image teachers)")
    for key in ("upscale", "input_multiple", "min_input"):
        if getattr(info, key) < 1:
            problems.append(f"ModelInfo.{key}={getattr(info, key)} must be at least 1")
    return problems


def shape_text(shape: Any) -> str:
    return "x".join(str(int(d)) for d in shape)


def output_problems(output: Any, input_shape: tuple[int, ...], info: ModelInfo) -> list[str]:
    """How ``output`` (of a forward on ``input_shape``) breaks ``N x 3 x (upscale*H) x (upscale*W)``."""
    if not isinstance(output, torch.Tensor):
        kind = type(output).__name__
        hint = " (return the image; per-level outputs go in forward_levels())" if isinstance(
            output, (tuple, list, Mapping)) else ""
        return [f"forward returned a {kind}, not a tensor{hint}"]
    n, _, h, w = input_shape
    expected = (n, 3, info.upscale * h, info.upscale * w)
    got = tuple(int(d) for d in output.shape)
    if got == expected:
        return []
    where = f"input {shape_text(input_shape)} gave output {shape_text(got)}, expected {shape_text(expected)}"
    if output.dim() != 4:
        return [f"{where}: the output must be 4-D N x 3 x H x W"]
    problems = []
    if got[0] != n:
        problems.append(f"{where}: batch {got[0]} for a batch of {n}")
    if got[1] != 3:
        problems.append(f"{where}: {got[1]} channels, sRGB has 3")
    if got[2:] != expected[2:]:
        problems.append(f"{where}: spatial scale {_scale(got[2], h)} x {_scale(got[3], w)}, "
                        f"ModelInfo.upscale says x{info.upscale}")
    return problems


def _scale(out: int, inp: int) -> str:
    if out % inp == 0:
        return f"x{out // inp}"
    if inp % out == 0:
        return f"x1/{inp // out}"
    return f"x{out / inp:.3g}"


def probe_inputs(info: ModelInfo, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Batch 1 at the first probe size and batch 2 at the second, uniform in [0, 1]."""
    first, second = probe_sizes(info)
    shapes = [(1, info.in_channels, *first), (2, info.in_channels, *second)]
    if torch.device(device).type == "meta":
        return [torch.empty(s, device="meta") for s in shapes]
    return [torch.rand(s, generator=generator).to(device) for s in shapes]


def quick_contract_findings(family: str, name: str, config: Mapping[str, Any] | None = None) -> list[str]:
    """The shape contract of ``name`` built with ``config``, checked without weights: [] when it holds.

    The model is built and run on the ``meta`` device at both probe sizes (milliseconds, even for
    PyNET at full width).  A model that cannot run there (one that reads tensor values while it
    builds or runs) is built and run once on the CPU instead.  Unknown names raise ``KeyError``.
    """
    registry = FAMILIES[resolve_family(name, family)]
    info = registry.info(name)
    config = dict(config or {})
    label = f"{registry.kind} {name!r}"
    problems = [f"{label}: {p}" for p in info_problems(info)]
    try:
        with torch.device("meta"):
            found = _shape_findings(registry, name, config, info, "meta")
    except Exception:
        try:
            found = _shape_findings(registry, name, config, info, "cpu")
        except Exception as exc:
            return [*problems, f"{label}: {exc}"]
    return [*problems, *(f"{label}: {p}" for p in found)]


def _shape_findings(registry: ModelRegistry, name: str, config: dict[str, Any], info: ModelInfo,
                    device: str) -> list[str]:
    try:
        model = registry.create(name, **config)
    except Exception as exc:
        raise RuntimeError(f"building it with {config} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        return [f"the factory returned a {type(model).__name__}, not a torch.nn.Module"]
    model.eval()
    problems = []
    with torch.no_grad():
        for x in probe_inputs(info, device, torch.Generator().manual_seed(0)):
            try:
                output = model(x)
            except Exception as exc:
                raise RuntimeError(f"forward on {shape_text(x.shape)} failed: {type(exc).__name__}: {exc}") from exc
            problems += output_problems(output, tuple(x.shape), info)
    return problems
