"""Re-parameterizable blocks (RepVGG, ECB, eReopConv): the fold is exact and students use them via ``block``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compress.checkpoint import ModelSpec, build_model, load_model, save_model
from compress.fold import fold_model
from compress.pruning.prune import PruneTarget, prune_model
from students import create_student
from students.reparam import BLOCKS, ECB, EReopConv, MaskBranch, RepBlock, RepVGGBlock, make_conv

REP_BLOCKS = tuple(b for b in BLOCKS if b != "conv")
TOL = 1e-5
# (in, out, kernel): in == out (identity branches) and in != out, 1x1 .. 5x5 shipped kernels
SHAPES = [(4, 4, 3), (4, 6, 3), (6, 3, 3), (3, 3, 5), (5, 2, 5), (3, 3, 1)]
CASES = [(kind, *shape) for kind in REP_BLOCKS for shape in SHAPES if kind != "ecb" or shape[2] == 3]


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters and ECB edge scales, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)
            elif isinstance(m, MaskBranch):
                m.affine.weight.copy_(torch.randn(m.affine.weight.shape, generator=g) * 0.3)
                m.affine.bias.copy_(torch.randn(m.affine.bias.shape, generator=g) * 0.3)
                m.conv1x1.bias.copy_(torch.randn(m.conv1x1.bias.shape, generator=g))
            elif isinstance(m, ECB):
                m.expand.bias.copy_(torch.randn(m.expand.bias.shape, generator=g))  # exercises the bias padding
    return model


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind,cin,cout,k", CASES)
@pytest.mark.parametrize("norm", [False, True])
def test_reparameterize_is_exact_and_leaves_one_conv(kind: str, cin: int, cout: int, k: int, norm: bool) -> None:
    torch.manual_seed(0)
    block = _randomise(make_conv(kind, cin, cout, k, norm=norm)).eval()
    xs = [torch.rand(2, cin, 7, 9), torch.randn(1, cin, 5, 3), torch.rand(1, cin, 1, 1)]
    with torch.no_grad():
        before = [block(x) for x in xs]
        block.reparameterize()
        after = [block(x) for x in xs]
    for b, a, x in zip(before, after, xs):
        assert a.shape == (x.shape[0], cout, *x.shape[2:])
        assert (a - b).abs().max() < TOL, (kind, (a - b).abs().max())
    assert isinstance(block.reparam, nn.Conv2d) and type(block.reparam) is nn.Conv2d
    assert list(block.children()) == [block.reparam]
    assert _params(block) == cout * cin * k * k + cout
    assert set(block.state_dict()) == {"reparam.weight", "reparam.bias"}


@pytest.mark.parametrize("kind", REP_BLOCKS)
def test_reparameterize_is_idempotent_and_keeps_device_dtype(kind: str) -> None:
    block = _randomise(make_conv(kind, 4, 4, 3).double()).eval()
    x = torch.rand(1, 4, 6, 6, dtype=torch.float64)
    expected = block(x)
    block.reparameterize()
    conv = block.reparam
    block.reparameterize()
    assert block.reparam is conv and conv.weight.dtype == torch.float64
    assert (block(x) - expected).abs().max() < 1e-12  # float64: the fold is exact up to rounding


@pytest.mark.parametrize("kind", REP_BLOCKS)
def test_blocks_train_with_batch_statistics_and_every_parameter_gets_a_gradient(kind: str) -> None:
    block = make_conv(kind, 4, 4, 3, norm=True).train()
    out = block(torch.rand(3, 4, 8, 8))
    out.square().mean().backward()
    assert all(p.grad is not None for p in block.parameters())
    bns = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(int(m.num_batches_tracked) == 1 for m in bns)  # batch statistics were used


def test_branch_layouts() -> None:
    rep = RepVGGBlock(4, 4)
    assert rep.identity is not None and RepVGGBlock(4, 5).identity is None
    ecb = ECB(4, 4, depth_multiplier=2.0)
    assert ecb.with_idt and not ECB(4, 5).with_idt and ecb.expand.out_channels == 8
    ereop = EReopConv(3, 3, kernel_size=5)  # the report's "ten convolution layers ... 1x1 to 5x5"
    sizes = sorted(m.kernel_size[0] for m in ereop.modules() if isinstance(m, nn.Conv2d))
    assert sizes == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_ecb_pads_the_1x1_outputs_with_their_bias() -> None:
    """A zero input gives the same value everywhere, as one conv would (its bias); zero-padding the 1x1
    outputs instead would leak their biases into the border pixels only."""
    ecb = _randomise(ECB(2, 3)).eval()
    zeros = torch.zeros(1, 2, 5, 5)
    with torch.no_grad():
        out = ecb(zeros)
        naive = ecb.expand_3x3(nn.functional.pad(ecb.expand(zeros), (1, 1, 1, 1)))
    assert torch.allclose(out, out[..., 2:3, 2:3].expand_as(out), atol=1e-6)
    assert not torch.allclose(naive, naive[..., 2:3, 2:3].expand_as(naive), atol=1e-3)


def test_make_conv_plain_and_errors() -> None:
    conv = make_conv("conv", 4, 8, 5)
    assert type(conv) is nn.Conv2d and conv.padding == (2, 2)
    assert not hasattr(conv, "reparameterize")
    with pytest.raises(ValueError, match="choose from conv, repvgg, ecb, ereop"):
        make_conv("acnet", 4, 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="3x3"):
        make_conv("ecb", 4, 8, 5)
    with pytest.raises(ValueError, match="odd"):
        RepVGGBlock(4, 4, 4)
    with pytest.raises(ValueError, match="unknown block 'repvg'"):
        create_student("lwisp", width=0.25, block="repvg")


def _assert_folded(folded: nn.Module) -> None:
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is nn.Conv2d for m in convs)  # no branch convs (SameConv) left
    assert all(isinstance(m.reparam, nn.Conv2d) for m in folded.modules() if isinstance(m, RepBlock))


@pytest.mark.parametrize("kind", REP_BLOCKS)
@pytest.mark.parametrize("batch_norm", [False, True])
def test_fold_smallnet_with_blocks_is_exact_and_ships_the_4652_parameter_net(kind: str, batch_norm: bool) -> None:
    torch.manual_seed(0)
    model = _randomise(create_student("smallnet", block=kind, batch_norm=batch_norm)).eval()
    x = torch.rand(2, 4, 7, 9)
    folded, report = fold_model(model)
    assert report == {"reparameterized_blocks": 3, "conv_bn_folded": 0, "batchnorm_left": 0}
    _assert_folded(folded)
    assert _params(folded) == 4652
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max() < TOL


@pytest.mark.parametrize("name", ["lwisp", "lwisp_nofgam"])
@pytest.mark.parametrize("kind", REP_BLOCKS)
def test_fold_lwisp_with_blocks_is_exact(name: str, kind: str) -> None:
    torch.manual_seed(0)
    model = _randomise(create_student(name, width=0.25, block=kind)).eval()
    plain = create_student(name, width=0.25)
    x = torch.rand(1, 4, 16, 32)
    folded, report = fold_model(model)
    assert report["reparameterized_blocks"] == 19 and report["batchnorm_left"] == 0
    _assert_folded(folded)
    assert _params(folded) == _params(plain)
    assert [k.replace(".reparam", "") for k in folded.state_dict()] == list(plain.state_dict())
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max() < TOL


def test_default_block_keeps_the_plain_students() -> None:
    for name, config in [("smallnet", {"batch_norm": True}), ("lwisp", {"width": 0.25})]:
        plain, conv = create_student(name, **config), create_student(name, block="conv", **config)
        assert list(conv.state_dict()) == list(plain.state_dict())
        assert not any(isinstance(m, RepBlock) for m in conv.modules())


class Pairs(torch.utils.data.Dataset):
    """RAW whose RGB target is a fixed function of it (as in tests/distill/test_trainer.py)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.raw = torch.rand(16, 4, 8, 8, generator=g)
        self.rgb = nn.functional.pixel_shuffle(self.raw[:, [0, 1, 2, 3] * 3] * 0.5, 2)[:, :3]

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.raw[i], self.rgb[i]


@pytest.mark.parametrize("kind", REP_BLOCKS)
def test_rep_block_smallnet_trains_and_folds_exactly_afterwards(kind: str) -> None:
    from distill.trainer import TrainSpec, train

    torch.manual_seed(0)
    model = create_student("smallnet", width=8, block=kind, batch_norm=True)
    spec = TrainSpec(steps=30, lr=1e-2, batch_size=4, losses={"mse": 1.0}, log_every=1)
    losses = [h["loss"] for h in train(model, Pairs(), spec, seed=1).history]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    x = Pairs().raw[:4]
    folded, _ = fold_model(model)
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max() < TOL


@pytest.mark.parametrize("kind", REP_BLOCKS)
def test_folded_rep_block_student_round_trips_through_checkpoint(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(family="student", name="smallnet", config={"width": 8, "batch_norm": True, "block": kind})
    model = _randomise(build_model(spec)).eval()
    folded, _ = fold_model(model)
    save_model(folded, spec.model_copy(update={"folded": True}), tmp_path)
    rebuilt, rebuilt_spec = load_model(tmp_path)  # registry name + config, folded by build_model
    assert rebuilt_spec.folded and list(rebuilt.state_dict()) == list(folded.state_dict())
    x = torch.rand(2, 4, 12, 10)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), folded(x))
        assert (rebuilt(x) - model(x)).abs().max() < TOL


@pytest.mark.parametrize("kind", REP_BLOCKS)
def test_pruned_rep_block_student_rebuilds_from_its_plan_and_folds(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(family="student", name="smallnet", config={"width": 8, "batch_norm": True, "block": kind})
    model = _randomise(build_model(spec)).eval()
    x = torch.rand(1, 4, 16, 16)
    plan = prune_model(model, x, PruneTarget(ratio=0.5))
    assert model.conv1.kernel_bias()[0].shape[0] == 4 and model(x).shape == (1, 3, 32, 32)
    save_model(model, spec.model_copy(update={"widths": plan}), tmp_path)
    rebuilt, _ = load_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    folded, report = fold_model(rebuilt)
    assert report["batchnorm_left"] == 0 and _params(folded) == 4 * 4 * 9 + 4 + 4 * 4 * 9 + 4 + 12 * 4 * 9 + 12
    with torch.no_grad():
        assert (folded(x) - rebuilt(x)).abs().max() < TOL


@pytest.mark.slow
def test_folded_ecb_smallnet_exports_to_onnx_and_fp32_tflite(tmp_path: Path) -> None:
    import onnx

    from compress.export.onnx_export import export_onnx
    from compress.export.tflite import convert_onnx_to_tflite
    from compress.export.tflite_inspect import assert_builtin_only, tflite_ops
    from compress.runtime.parity import parity_psnr

    torch.manual_seed(0)
    model = _randomise(create_student("smallnet", width=8, block="ecb", batch_norm=True)).eval()
    folded, _ = fold_model(model)
    onnx_path = export_onnx(folded, tmp_path / "ecb.onnx", (1, 4, 32, 32))
    assert [n.op_type for n in onnx.load(str(onnx_path)).graph.node].count("Conv") == 3
    tflite = convert_onnx_to_tflite(onnx_path, tmp_path / "tflite", None)["fp32"]
    assert_builtin_only(tflite)
    assert "DEPTH_TO_SPACE" in tflite_ops(tflite)
    x = np.random.default_rng(0).random((1, 4, 32, 32), dtype=np.float32)
    assert parity_psnr(model, onnx_path, x) >= 60.0  # against the unfolded, multi-branch model
    assert parity_psnr(model, tflite, x) >= 60.0
