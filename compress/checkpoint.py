"""Models on disk as *architecture + weights*, never a pickled module.

A ``ModelSpec`` (registry name, config, per-layer channel widths after pruning, whether it was folded)
is enough to rebuild the exact module; the weights are a plain ``state_dict`` loaded with
``weights_only=True``.  So a pruned and folded student round-trips through JSON + ``.pt``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, cast

import torch
import torch_pruning as tp
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compress.fold import fold_model
from compress.pruning.rules import CUSTOMIZED_PRUNERS, ShuffleChainStandIn, dependency_graph, prunable_view
from distill.atomic import atomic_torch_save, atomic_write_bytes
from distill.checkpointing import CheckpointError, load_weights, state_mismatch
from students import create_student
from teachers import create_teacher

SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.pt"


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    family: Literal["teacher", "student"]
    name: str
    config: dict[str, Any] = Field(default_factory=dict)
    widths: dict[str, int] | None = None  # conv name -> out_channels, set once pruned
    folded: bool = False
    widths_after_fold: bool = False  # pruned after folding: the widths name the folded model's convs


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate the registry model and reshape it to the spec's widths / folded form."""
    create = create_teacher if spec.family == "teacher" else create_student
    model = create(spec.name, **spec.config)
    if spec.folded and spec.widths_after_fold:
        model, _ = fold_model(model, inplace=True)
    if spec.widths:
        apply_channel_plan(model, spec.widths)
    if spec.folded and not spec.widths_after_fold:
        model, _ = fold_model(model, inplace=True)
    return model


def channel_plan(model: nn.Module) -> dict[str, int]:
    """Output width of every conv: what pruning changed, and all a rebuild needs."""
    return {
        name: m.out_channels for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    }


def _example_input(model: nn.Module) -> torch.Tensor:
    """A zero input the model accepts: 32x32, or its ``min_input`` rounded up to its ``input_multiple``."""
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    multiple = int(getattr(model, "input_multiple", 1))
    side = max(32, int(getattr(model, "min_input", 0)))
    side = -(-side // multiple) * multiple
    return torch.zeros(1, first.in_channels, side, side)


def apply_channel_plan(model: nn.Module, widths: dict[str, int]) -> nn.Module:
    """Shrink a freshly built model to ``widths`` (trailing channels dropped; weights are loaded after)."""
    modules = dict(model.named_modules())
    unknown = sorted(set(widths) - set(modules))
    if unknown:
        raise ValueError(f"channel plan names layers the model does not have: {unknown[:5]}")
    example = _example_input(model)
    with prunable_view(model, example):  # PixelShuffle chains and coupled blocks as torch-pruning sees them
        in_view = dict(model.named_modules())
        for name, target in widths.items():
            # a conv of the plan or its PixelShuffle chain's stand-in; inside a coupled block: follows its neighbours
            layer = cast("nn.Conv2d | nn.ConvTranspose2d | ShuffleChainStandIn", in_view.get(name, modules[name]))
            chain = isinstance(layer, ShuffleChainStandIn)
            block = layer.upscale**2 if isinstance(layer, ShuffleChainStandIn) else 1
            # read now: may have shrunk already
            current = (layer.conv if isinstance(layer, ShuffleChainStandIn) else layer).out_channels
            if target > current:
                raise ValueError(f"channel plan asks {name} for {target} channels; the model has only {current}")
            if target % block:
                raise ValueError(f"channel plan asks {name} for {target} channels; it feeds a PixelShuffle and "
                                 f"needs a multiple of {block}")
            if target < current:
                # A fresh graph per trim: torch-pruning's split/slice index mappings keep the offsets
                # of the widths they were traced at, so a graph reused after a trim miscounts.
                graph = dependency_graph(model, example)
                handler = (CUSTOMIZED_PRUNERS[ShuffleChainStandIn].prune_out_channels if chain
                           else tp.prune_conv_out_channels)
                group = graph.get_pruning_group(layer, handler, idxs=list(range(target // block, current // block)))
                group.prune()
    got = channel_plan(model)
    wrong = {n: (w, got[n]) for n, w in widths.items() if got[n] != w}
    if wrong:
        raise ValueError(f"channel plan could not be reproduced (wanted, got): {wrong}")
    return model


def save_model(model: nn.Module, spec: ModelSpec, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / SPEC_FILE, spec.model_dump_json(indent=2).encode())
    atomic_torch_save(model.state_dict(), folder / WEIGHTS_FILE)  # a full disk: OSError naming the file
    return folder


def load_model(folder: Path) -> tuple[nn.Module, ModelSpec]:
    folder = Path(folder)
    spec_path = folder / SPEC_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(f"no model spec at {spec_path}")
    spec = ModelSpec.model_validate(json.loads(spec_path.read_text()))
    model = build_model(spec)
    state = load_weights(folder / WEIGHTS_FILE)
    mismatch = state_mismatch(model, state)
    if mismatch:
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: weights do not fit {spec.family} {spec.name!r}: {mismatch}")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, spec
