"""Pruning rules for blocks torch-pruning cannot trace channel by channel.

A block that mixes spatial positions through reshapes and matrix products (self-attention) makes
torch-pruning's index mapping walk every ``reshape``/``transpose``/``bmm`` inside it (AA-UNet at
width 8: 110 s to list the groups, against 0.04 s for the same U-Net without attention), and it does
not tie the query and key widths anyway.  Such a block instead declares itself *channel-coupled*:

* ``coupled_channels`` (int): its input and output width, which stay equal (a residual block);
* ``remove_channels(idxs)``: drop those input/output channels from its own layers.

While torch-pruning traces and prunes, ``coupled_blocks_as_leaves`` swaps each such block for a
stand-in that passes its input through (same shape, nothing inside to trace) and that torch-pruning
prunes with ``ChannelCoupledPruner``: in- and out-channels together, forwarded to the real block.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch_pruning as tp
from torch import nn


def _is_coupled(module: nn.Module) -> bool:
    return hasattr(module, "remove_channels") and hasattr(module, "coupled_channels")


class CoupledStandIn(nn.Module):
    """Pass-through leaf standing in for a channel-coupled block during tracing and pruning."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "block", block)  # not a submodule: its insides stay out of the trace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0  # a node of its own, so torch-pruning maps this module's output


class ChannelCoupledPruner(tp.pruner.function.BasePruningFunc):
    """Prunes a ``CoupledStandIn``'s block: input and output channels ``idxs`` at once."""

    def prune_out_channels(self, layer: CoupledStandIn, idxs: Sequence[int]) -> CoupledStandIn:
        layer.block.remove_channels(sorted({int(i) for i in idxs}))
        return layer

    prune_in_channels = prune_out_channels  # the same function: torch-pruning couples in and out

    def get_out_channels(self, layer: CoupledStandIn) -> int:
        return int(layer.block.coupled_channels)

    get_in_channels = get_out_channels


CUSTOMIZED_PRUNERS = {CoupledStandIn: ChannelCoupledPruner()}
"""``customized_pruners`` for torch-pruning while ``coupled_blocks_as_leaves`` is active."""


@contextmanager
def coupled_blocks_as_leaves(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every channel-coupled submodule of ``model`` is a ``CoupledStandIn``."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for name, module in list(model.named_modules()):
        if name and _is_coupled(module):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            swapped.append((parent, attr, module))
    try:
        for parent, attr, module in swapped:
            setattr(parent, attr, CoupledStandIn(module))
        yield model
    finally:
        for parent, attr, module in swapped:
            setattr(parent, attr, module)


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's graph of ``model``; call inside ``coupled_blocks_as_leaves(model)``."""
    return tp.DependencyGraph().build_dependency(
        model, example_inputs=example_input, customized_pruners=CUSTOMIZED_PRUNERS)
