"""Once-for-all training (ENERZAI, seed 001 Sec. 4.4): a detachable super-net head on the student's trunk."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from distill.checkpointing import CheckpointError, load_checkpoint
from distill.data.unpaired import UnpairedRaw
from distill.evaluation import DEFAULT_TASK
from distill.once_for_all import OnceForAll
from distill.trainer import TrainSpec, _TrainStep, train
from students import create_student
from teachers.registry import STUDENTS

INF = float("inf")
SPEC = TrainSpec(steps=4, lr=1e-2, batch_size=4, log_every=1, checkpoint_every=2, device="cpu")


def Pairs() -> Any:  # noqa: N802  (train() is typed for PairedPatchDataset; any indexable of pairs works)
    """8 packed RAW 8x8 patches and their target: a fixed colour mix of the RAW, at twice the size."""
    raw = torch.rand(8, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return torch.utils.data.TensorDataset(raw, nn.functional.pixel_shuffle(raw[:, [0, 1, 2, 3] * 3] * 0.5, 2)[:, :3])


def _student() -> Any:  # a Smallnet (create_student is typed nn.Module)
    torch.manual_seed(0)
    return create_student("smallnet", width=8)


def _ofa(threshold_db: float, **kw) -> OnceForAll:  # noqa: ANN003
    return OnceForAll(STUDENTS.info("smallnet").trunk_tap or "", threshold_db=threshold_db, head_width=8, blocks=1,
                      **kw)


@pytest.mark.parametrize("name", [n for n in STUDENTS.names() if STUDENTS.info(n).trunk_tap])
def test_the_head_reads_the_declared_trunk_and_draws_the_students_image(name: str) -> None:
    info = STUDENTS.info(name)
    student = create_student(name, **info.tiny_config).train()
    side = max(16, info.min_input)
    x = torch.rand(2, 4, side, side)
    ofa = OnceForAll(info.trunk_tap or "", threshold_db=INF, head_width=4, blocks=1)
    rng = torch.get_rng_state()
    ofa.prepare(student, x)
    assert torch.equal(rng, torch.get_rng_state())  # the head's init leaves the global RNG alone
    with ofa.tapping():
        out = student(x)
    image = ofa.super_forward()
    assert image is not None and image.shape == out.shape == (2, 3, 2 * side, 2 * side)
    assert 0 <= float(image.detach().min()) and float(image.detach().max()) <= 1
    fresh = create_student(name, **info.tiny_config)
    assert list(student.state_dict()) == list(fresh.state_dict())  # the head is no part of the student


def test_a_trunk_tap_that_does_not_exist_is_named() -> None:
    with pytest.raises(ValueError, match="no submodule 'act9'.*did you mean"):
        OnceForAll("act9", threshold_db=INF).prepare(_student(), torch.rand(1, 4, 8, 8))


def test_joint_training_moves_the_trunk_by_both_losses_and_the_top_by_its_own() -> None:
    plain, joint = _student(), _student()
    spec = SPEC.model_copy(update={"steps": 1})
    train(plain, Pairs(), spec, seed=0)
    ofa = _ofa(INF)
    history = train(joint, Pairs(), spec, seed=0, ofa=ofa).history
    assert history[0]["ofa_super"] > 0 and "ofa_super_psnr" in history[0]
    assert history[0]["loss"] > history[0]["l1"]  # sub loss + super loss
    assert not torch.equal(plain.conv1.weight, joint.conv1.weight)  # the trunk also learns from the super-net
    assert torch.equal(plain.conv3.weight, joint.conv3.weight)  # the sub-net's own top sees only its loss
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ofa.parameters())


def test_never_passing_the_threshold_keeps_the_super_net_attached() -> None:
    ofa = _ofa(INF)
    calls = _count_forwards_after_prepare(ofa)
    history = train(_student(), Pairs(), SPEC, seed=0, ofa=ofa).history
    assert calls == [1] * SPEC.steps and not ofa.detached
    assert all("ofa_super_psnr" in h and "ofa_detached_step" not in h for h in history)
    assert ofa.summary()["ofa_detached_step"] == -1


def _count_forwards_after_prepare(ofa: OnceForAll) -> list[int]:
    """Forward calls of the head, counted from its first training step (the head is built in prepare)."""
    calls: list[int] = []
    prepare = ofa.prepare

    def hooked(student: nn.Module, x: torch.Tensor) -> None:
        prepare(student, x)
        ofa.head.register_forward_hook(lambda *_: calls.append(1))

    ofa.prepare = hooked  # type: ignore[method-assign]
    return calls


def test_passing_the_threshold_detaches_the_super_net_no_forward_no_gradient() -> None:
    ofa = _ofa(-INF)
    calls = _count_forwards_after_prepare(ofa)
    student = _student()
    history = train(student, Pairs(), SPEC, seed=0, ofa=ofa).history
    assert ofa.detached_step == 0 and history[0]["ofa_detached_step"] == 0
    assert calls == [1]  # only step 0 ran the head
    assert all("ofa_super" not in h for h in history[1:])
    assert all(p.grad is None for p in ofa.parameters())  # set_to_none each step, never filled again
    one_step = _ofa(-INF)
    train(_student(), Pairs(), SPEC.model_copy(update={"steps": 1}), seed=0, ofa=one_step)
    for a, b in zip(ofa.head.state_dict().values(), one_step.head.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # Adam left the head alone after step 0
    assert ofa.summary()["ofa_detached_step"] == 0


def test_off_leaves_the_step_module_and_training_as_before() -> None:
    a, b = _student(), _student()
    ra, rb = train(a, Pairs(), SPEC, seed=0), train(b, Pairs(), SPEC, seed=0, ofa=None)
    assert ra.history == rb.history
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    step = _TrainStep(a, None, DEFAULT_TASK, SPEC.criterion(), nullcontext)
    assert set(step.state_dict()) == {f"model.{k}" for k in a.state_dict()}  # no head for DDP to sync


class Crash(Exception):
    pass


@pytest.mark.parametrize("threshold", [INF, -INF])
def test_resume_keeps_the_head_and_the_detach(tmp_path: Path, threshold: float) -> None:
    straight, full_ofa = _student(), _ofa(threshold)
    full = train(straight, Pairs(), SPEC, seed=0, ofa=full_ofa)

    def crash_at_3(metrics: dict, step: int) -> None:
        if step == 3:
            raise Crash

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Crash):
        train(_student(), Pairs(), SPEC, seed=0, ofa=_ofa(threshold), log=crash_at_3, checkpoint_path=ckpt)
    assert load_checkpoint(ckpt)["step"] == 2
    resumed, ofa = _student(), _ofa(threshold)
    result = train(resumed, Pairs(), SPEC, seed=0, ofa=ofa, checkpoint_path=ckpt)
    assert result.final_loss == full.final_loss and ofa.detached_step == full_ofa.detached_step
    assert ofa.psnr_ema == full_ofa.psnr_ema
    for a, b in [*zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True),
                 *zip(full_ofa.head.state_dict().values(), ofa.head.state_dict().values(), strict=True)]:
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="written with once-for-all training"):
        train(_student(), Pairs(), SPEC, seed=0, checkpoint_path=ckpt)


def _unpaired() -> UnpairedRaw:
    """Packed 8x8 RAW patches re-rendered from two random sRGB images (what a phone would add unaligned)."""
    rng = np.random.default_rng(0)
    return UnpairedRaw([rng.random((32, 32, 3), dtype=np.float32) for _ in range(2)], patch_size=8, seed=0)


def _detached(ofa: OnceForAll) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """A student with a prepared, already detached head: (student, x, target)."""
    student = _student().train()
    x, target = Pairs()[:4]
    ofa.prepare(student, x)
    ofa.detached_step = 0
    return student, x, target


def test_the_detached_super_network_teaches_the_fine_tune_once_it_is_ahead() -> None:
    ofa = _ofa(-INF, distill=0.5)
    student, x, target = _detached(ofa)
    frozen_conv1 = student.conv1.weight.detach().clone()
    pred = student(x)
    ofa.sub_psnr_ema, ofa.psnr_ema = 0.0, 99.0
    loss, parts = ofa.distill_loss(student, x, pred, target, step=0)
    assert ofa.frozen is not None
    with torch.no_grad():
        label = ofa.frozen(x)
    expected = 0.5 * nn.functional.l1_loss(pred, label)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6) and "ofa_unpaired" not in parts
    loss.backward()
    assert all(p.grad is None for p in ofa.parameters())  # the label takes no gradient
    assert all(p.grad is None for p in ofa.frozen.trunk.parameters())
    with torch.no_grad():
        student.conv1.weight.add_(1.0)  # the student moves on; the frozen trunk keeps the detach-time weights
    assert torch.equal(ofa.frozen.trunk.get_parameter("conv1.weight"), frozen_conv1)
    ofa.sub_psnr_ema, ofa.psnr_ema = 99.0, 0.0  # a super-network behind the student teaches nothing
    ofa.ema = 1.0 - 1e-12  # keep the averages where they are set
    off, parts = ofa.distill_loss(student, x, pred.detach(), target, step=1)
    assert float(off) == 0 and "ofa_distill" not in parts


def test_nothing_is_distilled_while_attached() -> None:
    ofa = _ofa(INF, distill=1.0)
    student = _student().train()
    x, target = Pairs()[:4]
    ofa.prepare(student, x)
    loss, parts = ofa.distill_loss(student, x, student(x), target, step=0)
    assert float(loss) == 0 and ofa.frozen is None and set(parts) == {"ofa_sub_psnr"}


def test_the_detached_super_network_labels_unpaired_raw() -> None:
    unpaired = _unpaired()
    ofa = _ofa(-INF, distill=1.0, unpaired=unpaired, unpaired_batch=3)
    student, x, target = _detached(ofa)
    ofa.sub_psnr_ema, ofa.psnr_ema, ofa.ema = 0.0, 99.0, 1.0 - 1e-12
    loss, parts = ofa.distill_loss(student, x, student(x), target, step=5)
    raw = torch.from_numpy(unpaired.batch(5, 3))
    assert ofa.frozen is not None
    with torch.no_grad():
        expected = nn.functional.l1_loss(student(raw), ofa.frozen(raw))
    assert parts["ofa_unpaired"] == pytest.approx(float(expected), rel=1e-5)
    assert float(loss) == pytest.approx(parts["ofa_distill"] + parts["ofa_unpaired"], rel=1e-5)


def test_distillation_after_the_detach_trains_the_student_and_resumes_with_the_frozen_trunk(tmp_path: Path) -> None:
    spec = SPEC.model_copy(update={"steps": 4})

    def ahead(ofa: OnceForAll) -> OnceForAll:
        """The super-network counts as far ahead of the student (tiny data: real averages are noise)."""
        distill_loss = ofa.distill_loss

        def distill_ahead(*args: Any) -> tuple[torch.Tensor, dict[str, float]]:
            ofa.psnr_ema = 99.0
            return distill_loss(*args)

        ofa.distill_loss = distill_ahead  # type: ignore[method-assign, assignment]
        return ofa

    plain, taught = _student(), _student()
    train(plain, Pairs(), spec, seed=0, ofa=_ofa(-INF))
    full_ofa = ahead(_ofa(-INF, distill=1.0, unpaired=_unpaired()))
    history = train(taught, Pairs(), spec, seed=0, ofa=full_ofa).history
    assert "ofa_distill" not in history[0] and history[1]["ofa_distill"] > 0 and history[1]["ofa_unpaired"] > 0
    assert not torch.equal(plain.conv3.weight, taught.conv3.weight)

    def crash_at_3(metrics: dict, step: int) -> None:
        if step == 3:
            raise Crash

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Crash):
        train(_student(), Pairs(), spec, seed=0, ofa=ahead(_ofa(-INF, distill=1.0, unpaired=_unpaired())),
              log=crash_at_3, checkpoint_path=ckpt)
    resumed, ofa = _student(), ahead(_ofa(-INF, distill=1.0, unpaired=_unpaired()))
    train(resumed, Pairs(), spec, seed=0, ofa=ofa, checkpoint_path=ckpt)
    assert full_ofa.frozen is not None and ofa.frozen is not None
    for a, b in [*zip(full_ofa.frozen.trunk.state_dict().values(), ofa.frozen.trunk.state_dict().values(), strict=True),
                 *zip(taught.state_dict().values(), resumed.state_dict().values(), strict=True)]:
        assert torch.equal(a, b)


def test_unpaired_raw_without_distillation_is_refused() -> None:
    with pytest.raises(ValueError, match="set distill > 0"):
        _ofa(INF, unpaired=_unpaired())
    with pytest.raises(ValueError, match="distill weight must be >= 0"):
        _ofa(INF, distill=-1.0)
