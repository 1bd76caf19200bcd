"""Structured channel pruning with torch-pruning's dependency graph.

Concats, residual adds and norms are followed by the graph; PixelShuffle chains and channel-coupled
blocks (attention) have their own rules (``compress.pruning.rules``).  Layers whose output channels are
fixed by the model's contract (the RGB head) are listed in the model's ``prune_ignore``; without one,
the last conv is.

Targets (``PruneTarget``): a channel ``ratio`` per prunable layer, or a ``macs_reduction`` /
``params_reduction`` budget met by searching the ratio that reaches it (bisection over pruned copies);
``layer_ratios`` overrides single layers.  Importance: L2 weight magnitude, BatchNorm scale, or
first-order Taylor (|w * dL/dw|, needs gradients from a few training batches).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
import torch_pruning as tp
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from compress.checkpoint import channel_plan
from compress.pruning.rules import CUSTOMIZED_PRUNERS, ShuffleChainStandIn, dependency_graph, prunable_view
from compress.runtime.profile import count_macs, count_params

Importance = Literal["magnitude", "bn_scale", "taylor"]
GradFn = Callable[[nn.Module], None]
"""Runs forward + backward on a few training batches so Taylor importance can read ``.grad``."""


class PruneError(ValueError):
    """A pruning target that cannot be met or a model this pruner cannot handle."""


class PruneTarget(BaseModel):
    """How much to prune and how to rank channels; a recipe's ``prune:`` block (minus its fine-tune)."""

    model_config = ConfigDict(extra="forbid")

    ratio: float | None = Field(None, gt=0.0, lt=0.95, description="fraction of channels removed per prunable "
                                "layer (default 0.25 when no budget is given)")
    macs_reduction: float | None = Field(None, gt=0.0, lt=0.95, description="remove this fraction of the MACs")
    params_reduction: float | None = Field(None, gt=0.0, lt=0.95, description="remove this fraction of the params")
    layer_ratios: dict[str, float] = Field(default_factory=dict, description="module path -> its own ratio")
    layer_weights: dict[str, float] = Field(default_factory=dict, description="module path -> multiplier of the "
                                            "(searched) ratio, e.g. from a sensitivity analysis")
    importance: Importance = "magnitude"
    global_pruning: bool = False
    round_to: int | None = Field(None, ge=1, description="keep widths a multiple of this")

    @model_validator(mode="after")
    def _one_target(self) -> PruneTarget:
        given = [k for k in ("ratio", "macs_reduction", "params_reduction") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of ratio, macs_reduction, params_reduction; got {', '.join(given)}")
        for name, value in self.layer_ratios.items():
            if not 0.0 <= value < 0.95:
                raise ValueError(f"layer_ratios.{name}: {value} is not in [0, 0.95)")
        for name, value in self.layer_weights.items():
            if value < 0:
                raise ValueError(f"layer_weights.{name}: {value} is negative")
        return self

    def layer_ratio_dict(self, ratio: float) -> dict[str, float]:
        """Per-layer ratios at global ``ratio``: weighted layers scale with it, explicit ones stay."""
        weighted = {name: min(0.9, ratio * w) for name, w in self.layer_weights.items()}
        return {**weighted, **self.layer_ratios}

    @property
    def budget(self) -> tuple[str, float] | None:
        """``("macs" | "params", fraction to remove)`` for a budget target, else None."""
        if self.macs_reduction is not None:
            return "macs", self.macs_reduction
        if self.params_reduction is not None:
            return "params", self.params_reduction
        return None

    @property
    def channel_ratio(self) -> float:
        return self.ratio if self.ratio is not None else 0.25


def ignored_layers(model: nn.Module) -> list[nn.Module]:
    names = getattr(model, "prune_ignore", None)
    modules = dict(model.named_modules())
    if names is not None:
        return [modules[n] for n in names]
    convs: list[nn.Module] = [m for m in model.modules()
                              if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, ShuffleChainStandIn))]
    return convs[-1:]


def _importance(kind: Importance) -> tp.importance.Importance:
    if kind == "bn_scale":
        return tp.importance.BNScaleImportance()
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=2)


def _prune_once(model: nn.Module, example_input: torch.Tensor, target: PruneTarget, ratio: float,
                grad_fn: GradFn | None) -> None:
    model.eval()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    for p in model.parameters():  # torch-pruning traces the autograd graph: a frozen model (a KD teacher) has none
        p.requires_grad_(True)
    try:
        _prune_traced(model, example_input, target, ratio, grad_fn)
    finally:  # by name: pruning replaces the parameter objects
        for name, p in model.named_parameters():
            if name in frozen:
                p.requires_grad_(False)


def _prune_traced(model: nn.Module, example_input: torch.Tensor, target: PruneTarget, ratio: float,
                  grad_fn: GradFn | None) -> None:
    if target.importance == "taylor":
        if grad_fn is None:
            raise PruneError("importance 'taylor' needs gradients: pass grad_fn (training batches)")
        model.zero_grad(set_to_none=True)
        grad_fn(model)
    with prunable_view(model, example_input):
        modules = dict(model.named_modules())
        per_layer = target.layer_ratio_dict(ratio)
        unknown = [n for n in per_layer if n not in modules]
        if unknown:
            raise PruneError(f"layer_ratios / layer_weights name no module: {', '.join(unknown)}")
        pruner = tp.pruner.MetaPruner(
            model,
            example_input,
            importance=_importance(target.importance),
            pruning_ratio=ratio,
            pruning_ratio_dict={modules[n]: r for n, r in per_layer.items()} or None,
            global_pruning=target.global_pruning,
            ignored_layers=ignored_layers(model),
            round_to=target.round_to,
            customized_pruners=CUSTOMIZED_PRUNERS,
            root_module_types=[nn.Conv2d, nn.ConvTranspose2d, nn.Linear, ShuffleChainStandIn],
        )
        pruner.step()
    model.zero_grad(set_to_none=True)


def _cost(model: nn.Module, kind: str, shape: tuple[int, ...]) -> float:
    return float(count_macs(model, shape) if kind == "macs" else count_params(model))


def ratio_for_budget(model: nn.Module, example_input: torch.Tensor, target: PruneTarget,
                     grad_fn: GradFn | None = None, tolerance: float = 0.01) -> float:
    """The smallest channel ratio whose pruning removes ``target.budget``'s fraction of MACs or params.

    A coarse scan (0.1 .. 0.9) finds the first ratio that meets the budget, then bisection narrows it
    down on pruned copies.  The scan comes first because the cost is not monotonic in the ratio on
    narrow layers: torch-pruning skips a group it would empty, so a higher ratio can remove less.
    """
    budget = target.budget
    if budget is None:
        return target.channel_ratio
    kind, fraction = budget
    shape = tuple(example_input.shape)
    base = _cost(model, kind, shape)

    def reduction(ratio: float) -> float:
        trial = copy.deepcopy(model)
        _prune_once(trial, example_input, target, ratio, grad_fn)
        return 1.0 - _cost(trial, kind, shape) / base

    low, best = 0.0, 0.0
    high = None
    for step in range(1, 10):
        ratio = step / 10
        reached = reduction(ratio)
        best = max(best, reached)
        if reached >= fraction:
            high = ratio
            break
        low = ratio
    if high is None:
        raise PruneError(f"no channel ratio up to 90 % removes {fraction:.0%} of the {kind} (at most {best:.0%}); "
                         "the layers in prune_ignore keep the rest")
    while high - low > tolerance / 4:
        mid = (low + high) / 2
        if reduction(mid) < fraction:
            low = mid
        else:
            high = mid
    return high


def prune_model(model: nn.Module, example_input: torch.Tensor, target: PruneTarget,
                grad_fn: GradFn | None = None) -> dict[str, int]:
    """Prune ``model`` in place to the target; returns the new channel plan (conv name -> out channels)."""
    if target.importance == "bn_scale" and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise PruneError("importance 'bn_scale' needs a model with BatchNorm layers; use 'magnitude' or 'taylor'")
    ratio = ratio_for_budget(model, example_input, target, grad_fn)
    _prune_once(model, example_input, target, ratio, grad_fn)
    return channel_plan(model)


def prunable_layers(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Module paths of the layers that root a pruning group (what a per-layer ratio can name)."""
    model.eval()
    with prunable_view(model, example_input):
        names = {id(m): n for n, m in model.named_modules()}
        graph = dependency_graph(model, example_input)
        roots = [group[0].dep.target.module for group in graph.get_all_groups(
            ignored_layers=ignored_layers(model),
            root_module_types=[nn.Conv2d, nn.ConvTranspose2d, nn.Linear, ShuffleChainStandIn])]
        return [names[id(m)] for m in roots if id(m) in names]


def round_targets(target: PruneTarget, rounds: int) -> list[PruneTarget]:
    """Split a target into ``rounds`` successive targets that compose to it (iterative pruning).

    A ratio keeps ``(1 - r)^(1/rounds)`` of the channels per round; a budget removes an equal share of
    the *original* cost per round, each round's fraction taken of what the previous rounds left.
    """
    if rounds == 1:
        return [target]
    out = []
    budget = target.budget
    for i in range(1, rounds + 1):
        if budget is None:
            keep = (1 - target.channel_ratio) ** (1 / rounds)
            layers = {n: 1 - (1 - r) ** (1 / rounds) for n, r in target.layer_ratios.items()}  # weights scale as is
            out.append(target.model_copy(update={"ratio": 1 - keep, "layer_ratios": layers}))
        else:
            kind, fraction = budget
            done, goal = fraction * (i - 1) / rounds, fraction * i / rounds
            step = 1 - (1 - goal) / (1 - done)
            out.append(target.model_copy(update={f"{kind}_reduction": step}))
    return out
