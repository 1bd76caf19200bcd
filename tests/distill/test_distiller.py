"""The distillation engine: loss composition, adapters trained beside (never inside) the student, caching."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from compress.checkpoint import ModelSpec, load_model, save_model
from distill.adapters import AdapterError, FeaturePair
from distill.data.datasets import PairedPatchDataset
from distill.data.embedded import RawRgbPair
from distill.distiller import Distiller
from distill.losses import WeightedLoss, ms_ssim_loss
from distill.taps import FeatureTaps
from distill.teacher_cache import TeacherCache
from distill.trainer import TrainSpec, train
from students import create_student
from teachers import create_teacher

HETERO_PAIRS = [FeaturePair("up2", "up1"), FeaturePair("up3", "up2"), FeaturePair("up4", "up3")]


def _pairs(n: int = 3, side: int = 32) -> list[RawRgbPair]:
    g = torch.Generator().manual_seed(0)
    return [RawRgbPair(name=f"img{i}", raw=torch.rand(4, side, side, generator=g).numpy(),
                       rgb=torch.rand(3, 2 * side, 2 * side, generator=g).numpy()) for i in range(n)]


def _hetero(beta: float = 0.5) -> tuple[nn.Module, Distiller]:
    torch.manual_seed(0)
    student = create_student("lwisp", width=0.25)
    teacher = create_teacher("lwisp_clean", width=0.25)
    return student, Distiller(teacher, pairs=HETERO_PAIRS, feature_weight=beta, teacher_input="target")


def test_hetero_kd_loss_is_l2_between_adapted_student_and_clean_image_teacher_features() -> None:
    student, kd = _hetero(beta=0.5)
    x, j = torch.rand(2, 4, 16, 16), torch.rand(2, 3, 32, 32)
    kd.prepare(student, x, j)
    with kd.student_taps:
        pred = student(x)
    total, parts = kd.loss(pred, x, j)

    # by hand: the teacher runs on J (not RAW), each student feature goes through its adapter, MSE, sum * beta
    s_taps, t_taps = FeatureTaps(student, ["up2", "up3", "up4"]), FeatureTaps(kd.teacher, ["up1", "up2", "up3"])
    with torch.no_grad(), s_taps:
        student(x)
    with torch.no_grad(), t_taps:
        kd.teacher(j)
    s, t = s_taps.collect(), t_taps.collect()
    expected = sum(nn.functional.mse_loss(kd.adapters[p.key](s[p.student], t[p.teacher].shape[-2:]), t[p.teacher])
                   for p in HETERO_PAIRS)
    assert float(total.detach()) == pytest.approx(0.5 * float(expected.detach()), rel=1e-5)
    assert parts["kd_features"] == pytest.approx(float(expected), rel=1e-5)
    assert {"kd_feat_up2__up1", "kd_feat_up3__up2", "kd_feat_up4__up3"} <= set(parts)


def test_trainer_composes_the_lwisp_objective_l1_plus_alpha_ms_ssim_plus_beta_kd() -> None:
    data = PairedPatchDataset(_pairs(), patch_size=16, patches_per_image=2, seed=0)
    student, kd = _hetero(beta=0.5)
    spec = TrainSpec(steps=1, batch_size=2, lr=1e-3, losses={"l1": 1.0, "ms_ssim": 0.4})
    reference = create_student("lwisp", width=0.25)
    reference.load_state_dict(student.state_dict())
    result = train(student, data, spec, seed=0, kd=kd)

    # the same first batch, by hand, with the untrained weights (and the adapters' initial weights)
    data.set_epoch(0)
    x, j = next(iter(torch.utils.data.DataLoader(data, batch_size=2, shuffle=True,
                                                  generator=torch.Generator().manual_seed(0))))
    fresh = Distiller(create_teacher("lwisp_clean", width=0.25), pairs=HETERO_PAIRS, feature_weight=0.5,
                      teacher_input="target")
    fresh.teacher.load_state_dict(kd.teacher.state_dict())
    torch.manual_seed(0)  # train() seeds before it builds the adapters: the same initial adapter weights
    fresh.prepare(reference, x, j)
    with fresh.student_taps:
        pred = reference.train()(x)
    l_r = nn.functional.l1_loss(pred, j)
    l_s = ms_ssim_loss(pred, j)
    l_d, _ = fresh.loss(pred, x, j)
    first = result.history[0]
    assert first["l1"] == pytest.approx(float(l_r), rel=1e-4)
    assert first["ms_ssim"] == pytest.approx(float(l_s), rel=1e-4)
    assert first["loss"] == pytest.approx(float(l_r + 0.4 * l_s + l_d), rel=1e-4)


def test_adapters_train_with_the_student_and_are_not_part_of_it(tmp_path: Path) -> None:
    data = PairedPatchDataset(_pairs(), patch_size=16, patches_per_image=2, seed=0)
    student, kd = _hetero()
    keys_before = set(student.state_dict())
    train(student, data, TrainSpec(steps=3, batch_size=2, lr=1e-2, losses={"l1": 1.0}), kd=kd)
    proj = kd.adapters["up2__up1"].proj
    assert isinstance(proj, nn.Conv2d) and (proj.in_channels, proj.out_channels) == (8, 16)
    assert proj.weight.grad is not None and float(proj.weight.grad.abs().sum()) > 0  # it was trained
    assert set(student.state_dict()) == keys_before  # nothing of the adapters inside the student
    saved = save_model(student, ModelSpec(family="student", name="lwisp", config={"width": 0.25}), tmp_path / "m")
    reloaded, _ = load_model(saved)
    assert not any("adapter" in k for k in reloaded.state_dict())


def test_a_pair_that_cannot_match_fails_before_the_first_step() -> None:
    data = PairedPatchDataset(_pairs(), patch_size=16, patches_per_image=2, seed=0)
    student = create_student("smallnet", width=8)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.AvgPool2d((1, 2)))  # halves only the width
    kd = Distiller(teacher, pairs=[FeaturePair("act2", "1")])
    with pytest.raises(AdapterError, match=r"student 'act2' \(2, 8, 16, 16\) vs teacher '1' \(2, 4, 16, 8\)"):
        train(student, data, TrainSpec(steps=5, batch_size=2, losses={"l1": 1.0}), kd=kd)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_feature_kd_pulls_student_features_towards_the_teacher() -> None:
    data = PairedPatchDataset(_pairs(), patch_size=16, patches_per_image=4, seed=0, crop_sets=1)
    torch.manual_seed(1)
    student, teacher = create_student("smallnet", width=8), create_student("smallnet", width=8)
    kd = Distiller(teacher, pairs=[FeaturePair("act2", "act2", "mse")], feature_weight=1.0)
    result = train(student, data, TrainSpec(steps=60, batch_size=4, lr=1e-2, losses={"l1": 1e-3}, log_every=1),
                   kd=kd)
    start = sum(h["kd_features"] for h in result.history[:5])
    end = sum(h["kd_features"] for h in result.history[-5:])
    assert end < 0.5 * start, (start, end)


def test_teacher_cache_serves_repeated_crops_with_identical_losses(tmp_path: Path) -> None:
    data = PairedPatchDataset(_pairs(2), patch_size=16, patches_per_image=2, seed=0, crop_sets=1)  # 4 fixed crops
    spec = TrainSpec(steps=6, batch_size=2, lr=1e-3, losses={"l1": 1.0}, log_every=1)

    def run(cache: bool) -> tuple[list[float], Distiller]:
        student, kd = _hetero()
        if cache:
            kd.cache = TeacherCache(tmp_path / "cache", kd.teacher, tags=("target", "up1", "up2", "up3"))
        return [h["kd_features"] for h in train(student, data, spec, seed=0, kd=kd).history], kd

    plain, _ = run(cache=False)
    cached, kd = run(cache=True)
    assert cached == pytest.approx(plain, rel=1e-5)
    assert (kd.cache.misses, kd.cache.hits) == (4, 8)  # 6 steps x 2 crops: each of the 4 crops computed once
    _, again = run(cache=True)  # a later run with the same teacher and data computes nothing
    assert (again.cache.misses, again.cache.hits) == (0, 12)


def test_output_only_distiller_uses_no_taps_and_weighted_loss_adds_up() -> None:
    teacher = create_student("smallnet", width=8)
    kd = Distiller(teacher, output_weight=2.0, output_loss="mse")
    x = torch.rand(2, 4, 8, 8)
    kd.prepare(teacher, x, torch.rand(2, 3, 16, 16))
    assert kd.student_taps is None and not kd.parameters()
    pred = torch.zeros(2, 3, 16, 16)
    total, parts = kd.loss(pred, x, torch.zeros_like(pred))
    assert float(total) == pytest.approx(2.0 * float(teacher(x).pow(2).mean()), rel=1e-5)
    assert set(parts) == {"kd_output"}
    assert WeightedLoss({"l1": 1.0})(pred, pred)[0] == 0
