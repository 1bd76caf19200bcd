"""Pruning rules for blocks torch-pruning cannot trace channel by channel.

**Channel-coupled blocks.**  A block that mixes spatial positions through reshapes and matrix products
(self-attention) makes torch-pruning's index mapping walk every ``reshape``/``transpose``/``bmm`` inside it
(AA-UNet at width 8: 110 s to list the groups, against 0.04 s for the same U-Net without attention), and it does
not tie the query and key widths anyway.  Such a block instead declares itself *channel-coupled*:

* ``coupled_channels`` (int): its input and output width, which stay equal (a residual block);
* ``remove_channels(idxs)``: drop those input/output channels from its own layers.

While torch-pruning traces and prunes, ``coupled_blocks_as_leaves`` swaps each such block for a
stand-in that passes its input through (same shape, nothing inside to trace) and that torch-pruning
prunes with ``ChannelCoupledPruner``: in- and out-channels together, forwarded to the real block.

**PixelShuffle.**  ``PixelShuffle(r)`` turns channel ``c * r^2 + k`` into sub-pixel ``k`` of channel
``c``; torch-pruning 1.6 maps its channels one to one, so a conv feeding it cannot be pruned without
breaking the shuffle.  ``shuffle_chains_as_leaves`` finds each ``conv -> [BatchNorm | activation]* ->
PixelShuffle`` chain (siblings in one module, checked on a probe forward to really feed each other) and,
while torch-pruning traces and prunes, puts one ``ShuffleChainStandIn`` in the conv's place that runs the
whole chain: its out-channels are the shuffled channels ``c``, and ``ShuffleChainPruner`` removes all
``r^2`` conv channels (and BatchNorm channels) of each pruned ``c`` at once.  The other chain members
become ``Identity`` meanwhile (the stand-in already ran them).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol, cast

import torch
import torch_pruning as tp
from torch import nn


class CoupledBlock(Protocol):
    """What a channel-coupled block provides (see the module docstring)."""

    @property
    def coupled_channels(self) -> int: ...

    def remove_channels(self, idxs: list[int]) -> None: ...


def _is_coupled(module: nn.Module) -> bool:
    return hasattr(module, "remove_channels") and hasattr(module, "coupled_channels")


class CoupledStandIn(nn.Module):
    """Pass-through leaf standing in for a channel-coupled block during tracing and pruning."""

    block: CoupledBlock

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


# --- PixelShuffle ---------------------------------------------------------------------------------

CHAIN_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Tanh, nn.Sigmoid, nn.Hardswish, nn.SiLU, nn.GELU,
                     nn.Identity)
"""Parameter-free per-element modules that may sit between a conv and its PixelShuffle."""


class ShuffleChainStandIn(nn.Module):
    """Runs ``shuffle(members(conv(x)))`` as one leaf whose out-channels are the shuffled channels."""

    conv: nn.Conv2d
    members: list[nn.Module]
    upscale: int

    def __init__(self, conv: nn.Conv2d, members: Sequence[nn.Module], upscale: int) -> None:
        super().__init__()
        object.__setattr__(self, "conv", conv)  # hidden from torch-pruning: pruned through this stand-in
        object.__setattr__(self, "members", list(members))
        self.upscale = upscale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        for member in self.members:
            y = member(y)
        return nn.functional.pixel_shuffle(y, self.upscale)


class ShuffleChainPruner(tp.pruner.function.BasePruningFunc):
    """Out-channel ``c`` of the chain is conv (and BatchNorm) channels ``c*r^2 .. c*r^2 + r^2 - 1``."""

    def prune_out_channels(self, layer: ShuffleChainStandIn, idxs: Sequence[int]) -> ShuffleChainStandIn:
        block = layer.upscale**2
        expanded = sorted({int(i) * block + k for i in idxs for k in range(block)})
        tp.prune_conv_out_channels(layer.conv, expanded)
        for member in layer.members:
            if isinstance(member, nn.BatchNorm2d):
                tp.prune_batchnorm_out_channels(member, expanded)
        return layer

    def prune_in_channels(self, layer: ShuffleChainStandIn, idxs: Sequence[int]) -> ShuffleChainStandIn:
        tp.prune_conv_in_channels(layer.conv, sorted({int(i) for i in idxs}))
        return layer

    def get_out_channels(self, layer: ShuffleChainStandIn) -> int:
        return int(layer.conv.out_channels) // layer.upscale**2

    def get_in_channels(self, layer: ShuffleChainStandIn) -> int:
        return int(layer.conv.in_channels)


def _candidate_chains(model: nn.Module) -> list[tuple[nn.Module, list[str], nn.PixelShuffle]]:
    """``(parent, [conv, member..., shuffle] attribute names, shuffle)`` for each sibling run ending in a
    PixelShuffle whose nearest preceding sibling conv is reached through BatchNorm/activations only."""
    chains = []
    for parent in model.modules():
        names = list(parent._modules)
        for i, name in enumerate(names):
            shuffle = parent._modules[name]
            if not isinstance(shuffle, nn.PixelShuffle):
                continue
            j = i - 1
            while j >= 0 and isinstance(parent._modules[names[j]], (nn.BatchNorm2d, *CHAIN_ELEMENTWISE)):
                j -= 1
            conv = parent._modules[names[j]] if j >= 0 else None
            if (isinstance(conv, nn.Conv2d) and conv.groups == 1
                    and conv.out_channels % shuffle.upscale_factor**2 == 0):
                chains.append((parent, names[j : i + 1], shuffle))
    return chains


def _feeds_in_order(model: nn.Module, modules: Sequence[nn.Module], example_input: torch.Tensor) -> bool:
    """On a probe forward, each module's input is exactly the previous module's output, every call."""
    outputs: dict[int, list[torch.Tensor]] = {}
    ok = [True]

    def record(index: int):  # noqa: ANN202
        def hook(_m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if index > 0:
                previous = outputs.get(index - 1, [])
                if not previous or not inputs or inputs[0] is not previous[-1]:
                    ok[0] = False
            outputs.setdefault(index, []).append(output)

        return hook

    was_training = model.training
    with ExitStack() as stack:
        for index, module in enumerate(modules):
            stack.callback(module.register_forward_hook(record(index)).remove)
        stack.callback(model.train, was_training)
        model.eval()  # no BatchNorm statistics update (and batch 1 works at any size)
        with torch.no_grad():
            model(example_input)
    counts = {len(outputs.get(i, [])) for i in range(len(modules))}
    return ok[0] and len(counts) == 1 and 0 not in counts


@contextmanager
def shuffle_chains_as_leaves(model: nn.Module, example_input: torch.Tensor) -> Iterator[list[str]]:
    """Within the block, each verified conv->...->PixelShuffle chain is one ``ShuffleChainStandIn`` at the
    conv's path (so ``prune_ignore`` naming that conv still fixes its shuffled output); yields those paths."""
    found = []
    for parent, names, _shuffle in _candidate_chains(model):
        members = cast("list[nn.Module]", [parent._modules[n] for n in names])  # all set: found by isinstance
        if _feeds_in_order(model, members, example_input):
            found.append((parent, names, members))
    paths = {id(m): n for n, m in model.named_modules()}
    wrapped = [paths[id(members[0])] for _, _, members in found]
    try:
        for parent, names, members in found:
            conv, middle, shuffle = cast(nn.Conv2d, members[0]), members[1:-1], cast(nn.PixelShuffle, members[-1])
            setattr(parent, names[0], ShuffleChainStandIn(conv, middle, shuffle.upscale_factor))
            for name in names[1:]:
                setattr(parent, name, nn.Identity())
        yield wrapped
    finally:
        for parent, names, members in found:
            for name, module in zip(names, members):
                setattr(parent, name, module)


CUSTOMIZED_PRUNERS: dict[type[nn.Module], tp.pruner.function.BasePruningFunc] = {
    CoupledStandIn: ChannelCoupledPruner(), ShuffleChainStandIn: ShuffleChainPruner()}
"""``customized_pruners`` for torch-pruning while the stand-ins of this module are in place."""


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


@contextmanager
def prunable_view(model: nn.Module, example_input: torch.Tensor) -> Iterator[nn.Module]:
    """The model with every stand-in of this module in place, for tracing and pruning."""
    with shuffle_chains_as_leaves(model, example_input), coupled_blocks_as_leaves(model):
        yield model
