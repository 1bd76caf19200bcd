"""``compress.model_check`` and ``ispdc check-model``: a zoo model passes, each kind of broken model fails
the right stage with a message that names the cause, and one failure does not hide the other checks.

Broken models are registered under unique names for one test and removed afterwards.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from compress.model_check import ModelReport, check_model, quick_contract_findings
from recipes.cli_check import run_command
from students.smallnet import Smallnet
from teachers.registry import STUDENTS, TEACHERS, ModelInfo, ModelRegistry


@contextmanager
def registered(name: str, factory: Callable[..., nn.Module], info: ModelInfo | None = None,
               registry: ModelRegistry = STUDENTS) -> Iterator[str]:
    registry.register(name, info or ModelInfo(tiny_config={}))(factory)
    try:
        yield name
    finally:  # every per-name table of the registry (factories, infos, origins)
        for table in vars(registry).values():
            if isinstance(table, dict):
                table.pop(name, None)


def failures(report: ModelReport, stage: str) -> list[str]:
    return [f.message for f in report.findings if f.stage == stage and not f.ok]


def stages(report: ModelReport) -> set[str]:
    return {f.stage for f in report.findings}


class NoShuffle(nn.Module):
    """Forgets the pixel shuffle: 1x output where the contract (ModelInfo.upscale=2) says 2x."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(torch.relu(self.conv1(x))))


class BadTap(Smallnet):
    feature_taps = ("act1", "act9")


class UnusedBranch(Smallnet):
    """A refinement conv built but never called: its parameters would never train."""

    def __init__(self, width: int = 8) -> None:
        super().__init__(width=width)
        self.refine = nn.Conv2d(width, width, 3, padding=1)


class TwinConv(nn.Module):
    """A 3x3 and a 1x1 conv side by side; ``reparameterize()`` sums them but forgets the 1x1 bias."""

    def __init__(self) -> None:
        super().__init__()
        self.k3 = nn.Conv2d(4, 12, 3, padding=1)
        self.k1: nn.Conv2d | None = nn.Conv2d(4, 12, 1)
        nn.init.uniform_(self.k1.bias, 0.5, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k3(x) if self.k1 is None else self.k3(x) + self.k1(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        assert self.k1 is not None
        self.k3.weight += nn.functional.pad(self.k1.weight, (1, 1, 1, 1))
        self.k1 = None  # the 1x1 bias is dropped


class WrongFold(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = TwinConv()
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.body(x))


class FoldsItself(nn.Module):
    """A correct ``reparameterize()``, but on the model itself: compress.fold never calls it."""

    def __init__(self) -> None:
        super().__init__()
        self.k3, self.k1 = nn.Conv2d(4, 12, 3, padding=1), nn.Conv2d(4, 12, 1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.k3(x) + self.k1(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        self.k3.weight += nn.functional.pad(self.k1.weight, (1, 1, 1, 1))
        self.k3.bias += self.k1.bias
        self.k1.weight.zero_()
        self.k1.bias.zero_()


class ExactGelu(nn.Module):
    """nn.GELU() exports as ONNX Erf, which TFLite only has as a Flex (TF Select) op."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.act = nn.GELU()
        self.head = nn.Conv2d(8, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.head(self.act(self.conv1(x))))


def test_zoo_student_passes_every_check() -> None:
    report = check_model("auto", "smallnet", {"width": 8}, convert=False)
    assert report.ok, [f"{f.stage}: {f.message}" for f in report.problems]
    assert report.family == "student"
    assert stages(report) == {"build", "output", "backward", "taps", "fold", "prune", "export"}
    assert report.facts["prunable_groups"] == 2 and report.facts["ignored"] == ["conv3"]
    assert report.facts["taps"] == 3 and report.facts["onnx_parity_db"] >= 60
    assert quick_contract_findings("student", "smallnet", {"width": 8}) == []


def test_wrong_output_scale_fails_the_contract_and_the_quick_check() -> None:
    with registered("check_test_noshuffle", NoShuffle) as name:
        report = check_model("student", name, convert=False)
        quick = quick_contract_findings("auto", name)
    assert not report.ok
    [first, *_] = failures(report, "output")
    assert "expected 1x3x64x64" in first and "x1 x x1" in first and "upscale says x2" in first
    assert len(quick) == 2 and all("x1 x x1" in q and name in q for q in quick)
    assert report.stage_ok("backward") and report.stage_ok("export")  # the other checks still ran


def test_missing_feature_tap_is_named() -> None:
    with registered("check_test_badtap", lambda width=8: BadTap(width=width)) as name:
        report = check_model("auto", name, convert=False)
    [message] = failures(report, "taps")
    assert "no submodule 'act9'" in message and "act1" in message
    assert [f.stage for f in report.problems] == ["taps"]


def test_parameter_without_gradient_is_named() -> None:
    with registered("check_test_unused", UnusedBranch) as name:
        report = check_model("auto", name, convert=False)
    [message] = failures(report, "backward")
    assert "2 of 8" in message and "refine.weight" in message and "refine.bias" in message
    assert [f.stage for f in report.problems] == ["backward"]


def test_fold_that_changes_the_function_fails() -> None:
    with registered("check_test_wrongfold", WrongFold) as name:
        report = check_model("auto", name, convert=False)
    [message] = failures(report, "fold")
    assert "computes something else" in message and "1 reparameterize() blocks" in message
    assert not report.ok and report.stage_ok("export")  # exported unfolded when the fold is wrong
    with registered("check_test_foldsitself", FoldsItself) as name:
        report = check_model("auto", name, convert=False)
    [message] = failures(report, "fold")
    assert "FoldsItself.reparameterize() is on the model itself" in message


def test_a_teacher_that_would_not_fold_still_passes_with_a_note() -> None:
    """No recipe folds, prunes or exports a teacher: those failures are notes, not problems."""
    with registered("check_test_wrongfold_teacher", WrongFold, registry=TEACHERS) as name:
        report = check_model("auto", name, convert=False)
    assert report.family == "teacher" and report.ok and report.problems == []
    [note] = report.notes
    assert note.stage == "fold" and "informational" in note.message


def test_prune_ignore_naming_no_module_and_failing_build() -> None:
    class Ignoring(Smallnet):
        prune_ignore = ("conv3", "tail")

    def broken(width: int = 8) -> nn.Module:
        raise RuntimeError("weights file missing")

    with registered("check_test_ignore", lambda: Ignoring(width=8)) as name:
        report = check_model("auto", name, convert=False)
    assert failures(report, "prune") == ["prune_ignore names no module: tail"]
    with registered("check_test_broken", broken) as name:
        report = check_model("auto", name, {"width": 4}, convert=False)
    assert not report.ok and stages(report) == {"build"}
    assert "weights file missing" in failures(report, "build")[0]


def test_quick_contract_is_cheap_for_full_size_models() -> None:
    """PyNET at full width (47.5 M parameters) is built and run on the meta device: no weights allocated."""
    assert quick_contract_findings("teacher", "pynet", {}) == []
    assert quick_contract_findings("student", "lwisp", {"width": 1.0}) == []
    with pytest.raises(KeyError, match="unknown student 'nope'"):
        quick_contract_findings("student", "nope")


@pytest.mark.slow
def test_op_tflite_lacks_fails_the_conversion_naming_it() -> None:
    with registered("check_test_gelu", ExactGelu) as name:
        report = check_model("auto", name)
    assert report.stage_ok("export")  # ONNX has Erf; it is TFLite that lacks it
    [message] = failures(report, "tflite")
    assert "no builtin op for Erf" in message and "approximate='tanh'" in message
    assert report.facts["non_builtin_ops"] == ["Erf"]


def _args(name: str, *config: str) -> argparse.Namespace:
    return argparse.Namespace(command="check-model", name=name, family="auto", config=list(config), convert=False)


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(_args("smallnet", "width=8")) == 0
    out = capsys.readouterr().out
    assert "ok   taps: 3 feature_taps resolve" in out and "every stage can take it" in out
    with registered("check_test_cli_noshuffle", NoShuffle) as name:
        assert run_command(_args(name)) == 1
    captured = capsys.readouterr()
    assert "FAIL output:" in captured.out and "problem(s), fix before training" in captured.err
    assert run_command(_args("no_such_model")) == 2
    assert "unknown teacher or student 'no_such_model'" in capsys.readouterr().err
    assert run_command(_args("smallnet", "width")) == 2
    assert "not of the form KEY=VALUE" in capsys.readouterr().err
