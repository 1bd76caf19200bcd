"""QAT mirrors TFLite INT8: weights change, the result is a plain float model that exports, and the
fake-quant graph predicts what TFLite's INT8 model computes."""
import numpy as np
import pytest
import torch
from torchao.quantization.pt2e import disable_observer

from compress.quantization.qat import QATResult, calibrate, fake_quant_output, prepare_qat, qat_finetune
from compress.quantization.tflite_mirror import TFLiteInstanceNorm, mirror_tflite_ops
from distill.data.datasets import PairedPatchDataset
from distill.data.embedded import load_embedded
from distill.trainer import TrainSpec
from students import create_student
from students.smallnet import Smallnet


@pytest.fixture(scope="module")
def data() -> tuple[PairedPatchDataset, torch.Tensor]:
    pairs = load_embedded("train", seed=0, max_side=96)
    dataset = PairedPatchDataset(pairs, patch_size=16, patches_per_image=2, seed=0)
    calibration = torch.from_numpy(np.stack([p.raw[:, :32, :32] for p in pairs]))
    return dataset, calibration


@pytest.fixture(scope="module")
def qat_smallnet(data) -> tuple[torch.nn.Module, QATResult]:
    dataset, calibration = data
    torch.manual_seed(0)
    model = create_student("smallnet", width=8).eval()
    spec = TrainSpec(steps=6, lr=1e-3, batch_size=4, log_every=1)
    return model, qat_finetune(model, dataset, spec, calibration=calibration, kd_weight=0.5, seed=0)


def test_qat_changes_weights_and_returns_the_same_float_class(qat_smallnet) -> None:
    model, result = qat_smallnet
    tuned = result.model
    assert type(tuned) is Smallnet and tuned is not model
    assert tuned.state_dict().keys() == model.state_dict().keys()
    assert not torch.equal(tuned.conv1.weight, model.conv1.weight)
    assert all(p.dtype == torch.float32 for p in tuned.parameters())
    assert result.freeze_step == 4 and len(result.history) == 6
    assert {"loss", "l1", "kd_output"} <= result.history[0].keys()
    assert 20.0 < result.fake_quant_psnr_start < 80.0  # quantization costs something, but not everything


def test_qat_with_batchnorm_keeps_and_freezes_bn_statistics(data) -> None:
    dataset, calibration = data
    torch.manual_seed(0)
    model = create_student("smallnet", width=8, batch_norm=True).eval()
    result = qat_finetune(model, dataset, TrainSpec(steps=4, batch_size=2, log_every=10), calibration=calibration,
                          freeze_fraction=0.5)
    assert not torch.equal(result.model.bn1.running_mean, model.bn1.running_mean)  # updated in the first half
    assert not torch.equal(result.model.conv2.weight, model.conv2.weight)


def test_fake_quant_is_tflite_like_per_channel_narrow_weights(data) -> None:
    _, calibration = data
    prepared = prepare_qat(create_student("smallnet", width=8).eval(), calibration[:1])
    fake_quants = [m for m in prepared.modules() if type(m).__name__ == "FakeQuantize"]
    weights = [m for m in fake_quants if m.qscheme == torch.per_channel_symmetric]
    acts = [m for m in fake_quants if m.qscheme == torch.per_tensor_affine]
    assert len(weights) == 3 and all((m.quant_min, m.quant_max) == (-127, 127) for m in weights)
    # input, conv1 (before tanh), conv2+relu, conv3+relu: conv-relu pairs are fused as in TFLite
    assert len(acts) == 4 and all((m.quant_min, m.quant_max) == (-128, 127) for m in acts)
    fixed = [m for m in prepared.modules() if type(m).__name__ == "FixedQParamsFakeQuantize"]
    assert [(float(m.scale), int(m.zero_point)) for m in fixed] == [(1 / 128, 0)]  # TFLite's TANH output


def test_qat_rejects_bad_calibration(data) -> None:
    dataset, _ = data
    with pytest.raises(ValueError, match="NCHW"):
        qat_finetune(create_student("smallnet", width=8), dataset, TrainSpec(steps=1), calibration=torch.rand(4, 8, 8))


@pytest.mark.slow
def test_fake_quant_output_is_close_to_tflite_int8_and_model_exports(tmp_path, data, qat_smallnet) -> None:
    from compress.export.onnx_export import export_onnx
    from compress.export.tflite import convert_onnx_to_tflite
    from compress.export.tflite_inspect import assert_builtin_only
    from compress.runtime.parity import run_tflite
    from distill.metrics import psnr_db

    _, calibration = data
    _, result = qat_smallnet
    onnx_path = export_onnx(result.model, tmp_path / "qat.onnx", (1, 4, 32, 32))
    tflite = convert_onnx_to_tflite(onnx_path, tmp_path, calibration.numpy(), int8_io=False, modes=["int8"])
    assert_builtin_only(tflite["int8"])
    x = calibration.numpy()
    int8 = run_tflite(tflite["int8"], x)
    fake = fake_quant_output(result.prepared, calibration).numpy()
    with torch.no_grad():
        float_out = result.model(calibration).numpy()
    # the fake-quant graph predicts TFLite's INT8 output better than the float model does
    assert psnr_db(int8, fake) > psnr_db(int8, float_out) + 3.0
    assert psnr_db(int8, fake) > 40.0


@pytest.fixture(scope="module")
def conv_norm(instance_norm_net) -> torch.nn.Module:
    return instance_norm_net


@pytest.mark.parametrize("affine", [True, False])
def test_tflite_instance_norm_equals_instance_norm(affine: bool) -> None:
    torch.manual_seed(0)
    norm = torch.nn.InstanceNorm2d(6, affine=affine, eps=1e-3)
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 6, 9, 7) * 3 + 1
    mirrored = TFLiteInstanceNorm(norm)
    torch.testing.assert_close(mirrored(x), norm(x), atol=1e-5, rtol=1e-5)
    if affine:
        assert mirrored.weight is norm.weight and mirrored.bias is norm.bias  # same parameters, same names


def test_mirror_replaces_instance_norms_only_without_running_stats() -> None:
    model = torch.nn.Sequential(torch.nn.InstanceNorm2d(4, affine=True), torch.nn.BatchNorm2d(4),
                                torch.nn.Sequential(torch.nn.InstanceNorm2d(4)),
                                torch.nn.InstanceNorm2d(4, track_running_stats=True))
    assert mirror_tflite_ops(model) == 2
    assert [type(m).__name__ for m in model.modules()][1:] == [
        "TFLiteInstanceNorm", "BatchNorm2d", "Sequential", "TFLiteInstanceNorm", "InstanceNorm2d"]


def test_qat_graph_quantizes_each_tflite_op_of_instance_norm(conv_norm) -> None:
    prepared = prepare_qat(conv_norm, torch.rand(1, 4, 16, 16))
    quantized_after = {str(node.args[0].target) for node in prepared.graph.nodes
                       if node.op == "call_module" and "activation_post_process" in str(node.target)
                       and hasattr(node.args[0], "target")}
    # TFLite: MEAN, SQUARED_DIFFERENCE, MEAN, ADD, RSQRT, SUB, MUL, MUL, ADD, each re-quantized
    assert {"aten.mean.dim", "aten.rsqrt.default", "aten.mul.Tensor", "aten.add.Tensor", "aten.sub.Tensor"} <= (
        quantized_after)
    assert any("pow" in t or "square" in t for t in quantized_after)
    subs = [n for n in prepared.graph.nodes if str(n.target) == "aten.sub.Tensor"]
    assert len(subs) == 2  # x - mean twice, as TFLite computes it in SQUARED_DIFFERENCE and in SUB
    # the one inside SQUARED_DIFFERENCE is not quantized on its own
    assert sum(all("activation_post_process" not in str(u.target) for u in n.users) for n in subs) == 1


def test_instance_norm_qat_gradients_stay_finite_where_the_variance_rounds_to_zero(conv_norm) -> None:
    prepared = prepare_qat(conv_norm, torch.rand(1, 4, 16, 16))
    calibrate(prepared, torch.rand(4, 4, 16, 16) * 50)  # large variances: the ADD (variance + eps) step >> eps
    flat = torch.full((2, 4, 16, 16), 0.3)  # zero variance in every channel: variance + eps rounds to 0
    prepared.apply(disable_observer)
    prepared.train()
    prepared(flat).sum().backward()  # rsqrt(0) = inf would make the gradient NaN (0 * inf), then every weight
    grads = [p.grad for p in prepared.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_qat_on_instance_norm_copies_back_into_instance_norm(data, conv_norm) -> None:
    dataset, calibration = data
    result = qat_finetune(conv_norm, dataset, TrainSpec(steps=3, lr=1e-2, batch_size=2, log_every=10),
                          calibration=calibration)
    assert type(result.model.norm) is torch.nn.InstanceNorm2d
    assert not torch.equal(result.model.norm.weight, conv_norm.norm.weight)
    assert type(conv_norm.norm) is torch.nn.InstanceNorm2d  # the input model is untouched


@pytest.mark.slow
def test_fake_quant_of_instance_norm_predicts_tflite_int8(tmp_path, data, conv_norm, monkeypatch) -> None:
    """Written op by op, the norm's fake quantization predicts TFLite's INT8 output; as one node it does not."""
    import compress.quantization.qat as qat
    from compress.export.onnx_export import export_onnx
    from compress.export.tflite import convert_onnx_to_tflite
    from compress.quantization.ranges import RangeSetting
    from compress.runtime.parity import run_tflite
    from distill.metrics import psnr_db

    _, calibration = data
    onnx_path = export_onnx(conv_norm, tmp_path / "norm.onnx", (1, 4, 32, 32))
    built = convert_onnx_to_tflite(onnx_path, tmp_path, calibration.numpy(), modes=[],
                                   extra=RangeSetting("minmax"))  # the int8 model a recipe ships
    int8 = run_tflite(built["int8"], calibration.numpy())

    def fake_quant(mirror: bool) -> np.ndarray:
        if not mirror:  # the norm as one aten node, quantized once at its output
            monkeypatch.setattr(qat, "mirror_tflite_ops", lambda model: 0)
        prepared = qat.prepare_qat(conv_norm, calibration[:1])
        qat.calibrate(prepared, calibration)
        return fake_quant_output(prepared, calibration).numpy()

    mirrored, single_node = fake_quant(True), fake_quant(False)
    with torch.no_grad():
        reference = conv_norm(calibration).numpy()
    # the error QAT trains against has the size of TFLite's (parity to float) and is closer to it, value by value
    int8_parity = psnr_db(int8, reference)
    assert abs(psnr_db(mirrored, reference) - int8_parity) < 1.0
    assert psnr_db(single_node, reference) > int8_parity + 2.0  # one fake quant after the norm: too optimistic
    assert psnr_db(int8, mirrored) > psnr_db(int8, single_node) + 1.0
