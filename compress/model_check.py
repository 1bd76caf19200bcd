"""Everything a stage assumes of a model, checked on a freshly built one before anybody trains it.

``check_model(family, name, config)`` builds a registered model (``teachers.registry``) and tries what
every stage will do with it, each step guarded so one failure does not hide the others:

- ``build``: the factory with ``config``, and the ``ModelInfo``;
- ``output``: the shape contract at two sizes (``compress.model_contract``), finite values;
- ``backward``: a loss on the output (and on ``forward_levels()``) gives every trainable parameter a
  finite gradient;
- ``levels``: ``forward_levels()``, where a level-wise teacher has one, gives level ``k`` at
  ``1/2^k`` of the output size;
- ``taps``: every ``feature_taps`` path names a module that yields one tensor per forward;
- ``fold``: ``compress.fold.fold_model`` computes the same function, on a copy that looks trained
  (``exercised_copy``: random BatchNorm statistics, zero-initialised parameters made non-zero), so a
  wrong fold shows;
- ``prune``: torch-pruning's groups with the PixelShuffle rule, the layers kept whole, and a trial
  prune at 30 % that still runs with the right output;
- ``export``/``tflite``: ONNX export with onnxruntime parity, then onnx2tf fp32 TFLite (builtin ops
  only) with parity against PyTorch (``compress.model_export_check``; ``convert=False`` skips TFLite).

A recipe folds, prunes and exports the student only: for a teacher those checks still run, but a
failure is a note (``Finding.blocking`` False) and the teacher passes.  A library: it returns a
``ModelReport`` and prints nothing (``ispdc check-model`` prints it).
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from compress.fold import fold_model
from compress.model_contract import (
    FAMILIES,
    info_problems,
    output_problems,
    parse_config,
    probe_inputs,
    quick_contract_findings,
    resolve_family,
    shape_text,
)
from compress.model_export_check import check_export
from compress.pruning.prune import PruneTarget, ignored_layers, prunable_layers, prune_model
from compress.runtime.profile import count_params
from distill.taps import FeatureTaps, tap_paths
from teachers.registry import ModelInfo

__all__ = ["Finding", "ModelReport", "check_model", "exercised_copy", "parse_config", "quick_contract_findings",
           "resolve_family", "STAGES", "STUDENT_STAGES"]

STAGES = ("build", "output", "backward", "levels", "taps", "fold", "prune", "export", "tflite")
STUDENT_STAGES = ("fold", "prune", "export", "tflite")
"""What a recipe does to the student only: a teacher is trained and distilled from, never compressed or
exported, so these checks only inform about a teacher (``Finding.blocking`` is False)."""
MAX_FOLD_ERROR = 1e-4
"""As the fold stage: the folded model may differ from the unfolded one by this much (absolute)."""
TRIAL_PRUNE_RATIO = 0.3
LISTED = 6
"""Names listed in one message before "and N more"."""


@dataclass
class Finding:
    """One verdict: ``stage`` (one of ``STAGES``), whether the model passes it, and why, in plain words."""

    stage: str
    ok: bool
    message: str
    blocking: bool = True
    """False for a failure no stage would meet (a teacher's export): reported, but the model passes."""


@dataclass
class ModelReport:
    """Every finding about one model, plus the facts behind them (``facts``, for tables)."""

    family: str
    name: str
    config: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every stage can take the model (and at least the build ran)."""
        return bool(self.findings) and not self.problems

    @property
    def problems(self) -> list[Finding]:
        """The failures that would break a stage."""
        return [f for f in self.findings if not f.ok and f.blocking]

    @property
    def notes(self) -> list[Finding]:
        """The failures of checks no stage will put this model through (``STUDENT_STAGES`` for a teacher)."""
        return [f for f in self.findings if not f.ok and not f.blocking]

    def stage_ok(self, stage: str) -> bool | None:
        """Whether every finding of ``stage`` passed; None when the stage did not run."""
        found = [f.ok for f in self.findings if f.stage == stage]
        return all(found) if found else None

    def add(self, stage: str, ok: bool, message: str) -> None:
        self.findings.append(Finding(stage, ok, message))


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def _guard(report: ModelReport, stage: str, check: Callable[[], None]) -> None:
    """Run one check; an exception it raises becomes that stage's FAIL finding."""
    start = time.perf_counter()
    try:
        check()
    except Exception as exc:
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError's str() is a repr
        report.add(stage, False, f"{type(exc).__name__}: {text}".strip())
    finally:
        seconds = report.facts.setdefault("seconds", {})
        seconds[stage] = round(seconds.get(stage, 0.0) + time.perf_counter() - start, 2)


def check_model(family: str, name: str, config: Mapping[str, Any] | None = None, convert: bool = True) -> ModelReport:
    """Build ``name`` from the ``family`` registry (``"auto"``: whichever has it) with ``config`` and check
    it against every stage.  An unknown name raises ``KeyError`` (the registry's message); everything
    else, a failing build included, is a finding.  ``convert=False`` skips the TFLite conversion."""
    start = time.perf_counter()
    family = resolve_family(name, family)
    registry = FAMILIES[family]
    info = registry.info(name)
    report = ModelReport(family, name, dict(config or {}))
    try:
        for problem in info_problems(info):
            report.add("build", False, problem)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = _build(report, registry.create, name, info)
        if model is None:
            return report
        inputs = probe_inputs(info, generator=torch.Generator().manual_seed(0))
        _guard(report, "output", lambda: _check_output(report, model, inputs, info))
        _guard(report, "backward", lambda: _check_backward(report, model, inputs[0]))
        if callable(getattr(model, "forward_levels", None)):
            _guard(report, "levels", lambda: _check_levels(report, model, inputs[0], info))
        _guard(report, "taps", lambda: _check_taps(report, model, inputs[0]))
        trained = exercised_copy(model)
        folded: list[nn.Module] = []
        _guard(report, "fold", lambda: folded.append(_check_fold(report, model, trained, inputs[0])))
        _guard(report, "prune", lambda: _check_prune(report, model, inputs, info))
        shipped = folded[0] if folded and report.stage_ok("fold") else trained
        _guard(report, "export", lambda: check_export(report.add, report.facts, shipped, inputs[0], convert))
        if family == "teacher":
            _informational(report)
        return report
    finally:
        report.seconds = time.perf_counter() - start


def _informational(report: ModelReport) -> None:
    for finding in report.findings:
        if not finding.ok and finding.stage in STUDENT_STAGES:
            finding.blocking = False
            finding.message += " (informational: no recipe folds, prunes or exports a teacher)"


def _build(report: ModelReport, create: Callable[..., Any], name: str, info: ModelInfo) -> nn.Module | None:
    try:
        model = create(name, **report.config)
    except Exception as exc:
        report.add("build", False, f"the factory failed with config {report.config}: {type(exc).__name__}: {exc}")
        return None
    if not isinstance(model, nn.Module):
        report.add("build", False, f"the factory returned a {type(model).__name__}, not a torch.nn.Module")
        return None
    params, trainable = count_params(model), sum(p.numel() for p in model.parameters() if p.requires_grad)
    report.facts.update(params=params, model_class=type(model).__name__)
    report.add("build", True, f"{type(model).__name__} with {params:,} parameters ({trainable:,} trainable), "
               f"input {info.in_channels} channels, x{info.upscale}, H and W multiples of {info.input_multiple} "
               f"and >= {info.min_input}")
    return model


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


@torch.no_grad()
def _check_output(report: ModelReport, model: nn.Module, inputs: list[torch.Tensor], info: ModelInfo) -> None:
    model.eval()
    passed, low, high = [], float("inf"), float("-inf")
    for x in inputs:
        try:
            y = model(x)
        except Exception as exc:
            report.add("output", False, f"forward on {shape_text(x.shape)} failed: {type(exc).__name__}: {exc}")
            continue
        problems = output_problems(y, tuple(x.shape), info)
        if not problems and not _finite(y):
            problems = [f"input {shape_text(x.shape)} gave non-finite values (NaN or inf) in the output"]
        for problem in problems:
            report.add("output", False, problem)
        if not problems:
            passed.append(f"{shape_text(x.shape)} -> {shape_text(y.shape)}")
            low, high = min(low, float(y.min())), max(high, float(y.max()))
    report.facts["output_ok"] = len(passed) == len(inputs)
    if report.facts["output_ok"]:
        report.add("output", True, f"{' and '.join(passed)} (3 channels, x{info.upscale}), finite, "
                   f"values in [{low:.3g}, {high:.3g}]")


def _check_backward(report: ModelReport, model: nn.Module, x: torch.Tensor) -> None:
    """Gradients from an L2 loss against a random target (a mean of the output would give exact zeros
    through a normalisation), first of ``forward`` alone, then with every level of ``forward_levels``."""
    report.facts["backward_ok"] = False
    trial = copy.deepcopy(model).train()  # a train-mode forward updates BatchNorm statistics
    trainable = {n: p for n, p in trial.named_parameters() if p.requires_grad}
    if not trainable:
        report.add("backward", False, "the model has no trainable parameters: no stage can train it")
        return
    batch = torch.cat([x, x.flip(-1)])  # batch 2: BatchNorm statistics over more than one image
    target = torch.Generator().manual_seed(1)

    def loss_of(y: Any) -> torch.Tensor:
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"forward returned a {type(y).__name__}, not a tensor")
        return (y.float() - torch.rand(y.shape, generator=target)).pow(2).mean()

    loss_of(trial(batch)).backward()
    from_forward = {n for n, p in trainable.items() if p.grad is not None}
    levels = getattr(trial, "forward_levels", None)
    if callable(levels):
        outputs = levels(batch)
        sum((loss_of(y) for y in outputs.values()), torch.zeros(())).backward()
    missing = [n for n, p in trainable.items() if p.grad is None]
    bad = [n for n, p in trainable.items() if p.grad is not None and not _finite(p.grad)]
    zero = [n for n, p in trainable.items() if p.grad is not None and not bool(p.grad.any())]
    if missing:
        report.add("backward", False, f"{len(missing)} of {len(trainable)} trainable parameter tensors get no "
                   f"gradient (not on the path to the output; freeze them or remove them): {_listed(missing)}")
    if bad:
        report.add("backward", False, f"non-finite gradients in {_listed(bad)}")
    if missing or bad:
        return
    notes = []
    levels_only = sorted(set(trainable) - from_forward)
    if levels_only:
        notes.append(f"{len(levels_only)} reach the loss only through forward_levels(): {_listed(levels_only)}")
    if zero:
        notes.append(f"{len(zero)} have an all-zero gradient at initialisation (zero-initialised "
                     f"branches, dead ReLUs): {_listed(zero)}")
    report.facts["backward_ok"] = True
    report.add("backward", True, f"all {len(trainable)} trainable parameter tensors get finite gradients"
               + (f"; {'; '.join(notes)}" if notes else ""))


@torch.no_grad()
def _check_levels(report: ModelReport, model: nn.Module, x: torch.Tensor, info: ModelInfo) -> None:
    model.eval()
    outputs = cast(Any, model).forward_levels(x)  # an optional method nn.Module does not declare
    if not isinstance(outputs, Mapping) or not all(isinstance(v, torch.Tensor) for v in outputs.values()):
        report.add("levels", False, f"forward_levels() returned a {type(outputs).__name__}; level-wise training "
                   "needs a dict {level: image}, level 0 the full-size output")
        return
    _, _, h, w = x.shape
    bad = []
    for level, y in sorted(outputs.items()):
        step = 2 ** int(level)
        want = (x.shape[0], 3, info.upscale * h // step, info.upscale * w // step)
        if tuple(y.shape) != want:
            bad.append(f"level {level} is {shape_text(y.shape)}, expected {shape_text(want)} (1/{step} of the output)")
    if 0 not in outputs:
        bad.append("no level 0 (the full-size image)")
    for problem in bad:
        report.add("levels", False, f"forward_levels(): {problem}")
    if not bad:
        report.add("levels", True, f"forward_levels() gives levels {sorted(outputs)}, each at 1/2^level of the output")


def _check_taps(report: ModelReport, model: nn.Module, x: torch.Tensor) -> None:
    paths = tap_paths(model)
    report.facts["taps"] = len(paths)
    if not paths:
        report.add("taps", True, "no feature_taps declared: output KD works; feature KD needs the recipe to name "
                   "module paths")
        return
    model.eval()
    taps = FeatureTaps(model, paths, owner=f"{report.family} {report.name!r}")  # TapError for an unknown path
    with taps:
        model(x)
        found = taps.collect()  # one tensor per path per forward, or a TapError naming the path
    detached = [p for p, t in found.items() if not t.requires_grad]
    if detached:
        report.add("taps", False, f"feature_taps {_listed(detached)} give tensors outside the autograd graph: "
                   "feature KD would get no gradient through them")
        return
    shapes = [f"{p} ({shape_text(t.shape[1:])})" for p, t in found.items()]
    report.add("taps", True, f"{len(paths)} feature_taps resolve, one tensor each per forward: {_listed(shapes)}")


@torch.no_grad()
def exercised_copy(model: nn.Module) -> nn.Module:
    """A copy in eval mode that looks trained: BatchNorm statistics and affine terms random (so a fold that
    drops them shows), and every all-zero parameter (a residual gain, a zero-initialised fusion conv)
    small and random (so export parity covers the branch it gates, not the identity it starts as)."""
    copied = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(2)
    for m in copied.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            if m.running_mean is not None and m.running_var is not None:
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            if m.weight is not None and m.bias is not None:
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
    for p in copied.parameters():
        if p.is_floating_point() and p.numel() and not bool(p.any()):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return copied


@torch.no_grad()
def _check_fold(report: ModelReport, model: nn.Module, reference: nn.Module, x: torch.Tensor) -> nn.Module:
    folded, counts = fold_model(reference)
    expected, got = reference(x), folded(x)
    diff = float((got.float() - expected.float()).abs().max()) if got.shape == expected.shape else float("inf")
    report.facts["fold"] = {**counts, "max_abs_diff": diff}
    what = (f"{counts['reparameterized_blocks']} reparameterize() blocks, {counts['conv_bn_folded']} Conv+BN pairs "
            f"folded; max |folded - unfolded| = {diff:.1e} (limit {MAX_FOLD_ERROR:.0e})")
    if not diff <= MAX_FOLD_ERROR:
        report.add("fold", False, f"the folded model computes something else: {what}")
        return folded
    if callable(getattr(model, "reparameterize", None)):
        report.add("fold", False, f"{type(model).__name__}.reparameterize() is on the model itself: compress.fold only "
                   "calls it on sub-modules (the blocks that fold), so the shipped model would stay unfolded")
    left = counts["batchnorm_left"]
    note = (f"; {left} BatchNorm layer(s) stay unfolded (put each right after its conv in an nn.Sequential or "
            "declare conv_bn_pairs)") if left else ""
    report.add("fold", True, what + note)
    return folded


def _check_prune(report: ModelReport, model: nn.Module, inputs: list[torch.Tensor], info: ModelInfo) -> None:
    view = copy.deepcopy(model).eval()
    declared = getattr(view, "prune_ignore", None)
    modules = dict(view.named_modules())
    unknown = [n for n in (declared or ()) if n not in modules]
    if unknown:
        report.add("prune", False, f"prune_ignore names no module: {_listed(unknown)}")
        return
    names = {id(m): n for n, m in modules.items()}
    kept = [names[id(m)] for m in ignored_layers(view)]
    why = "declared in prune_ignore" if declared is not None else \
        "no prune_ignore: the last conv is kept whole as the RGB head; declare prune_ignore if other layers fix " \
        "the output channels"
    groups = prunable_layers(view, inputs[0])
    report.facts.update(prunable_groups=len(groups), ignored=kept)
    none = "; nothing to prune: the prune stage would leave the model as it is" if not groups else ""
    report.add("prune", True, f"{len(groups)} prunable groups; kept whole: {_listed(kept) or 'nothing'} ({why}){none}")
    trial = copy.deepcopy(model).eval()
    before = count_params(trial)
    prune_model(trial, inputs[0], PruneTarget(ratio=TRIAL_PRUNE_RATIO))
    problems = []
    with torch.no_grad():
        for x in inputs:
            y = trial(x)
            problems += output_problems(y, tuple(x.shape), info)
            if not problems and not _finite(y):
                problems.append(f"non-finite output on {shape_text(x.shape)}")
    after = count_params(trial)
    report.facts["trial_prune_params"] = (before, after)
    for problem in problems:
        report.add("prune", False, f"after a {TRIAL_PRUNE_RATIO:.0%} trial prune: {problem}")
    if not problems:
        report.add("prune", True, f"a {TRIAL_PRUNE_RATIO:.0%} trial prune runs with the right output: "
                   f"{before:,} -> {after:,} parameters")
