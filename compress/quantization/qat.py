"""Quantization-aware fine-tuning that mirrors TFLite's INT8 scheme, returning a plain float model.

TFLite's INT8 converter quantizes weights per output channel, symmetric, narrow range [-127, 127],
and every activation tensor per tensor, asymmetric int8 [-128, 127], from min/max over the
calibration frames.  A conv followed by ReLU is one fused TFLite op (no quantization in between);
``LOGISTIC`` and ``TANH`` outputs have fixed parameters (1/256, -128 and 1/128, 0); max pooling and
depth-to-space keep their input's parameters.  :class:`TFLiteInt8Quantizer` annotates the exported
aten graph the same way, and torchao's PT2E QAT (``prepare_qat_pt2e``) inserts the fake-quant
modules: no hand-written fake quantization.  Layers that TFLite runs as several ops (instance norm:
``compress.quantization.tflite_mirror``) are written out as those ops for QAT, so each gets its own fake quant.

The fine-tuned weights are copied back into a copy of the original ``nn.Module`` (same class and
structure), because a QDQ graph fed to onnx2tf becomes Flex ops: the QAT model is exported in float
and quantized by TFLite's post-training INT8 (``compress.export.tflite``) on the same RAW calibration frames.

Schedule: observers are calibrated on the RAW calibration frames (one float pass: min/max, as
TFLite's calibrator), then training runs with fake quant on and EMA activation observers; at the
start of the last ``freeze_fraction`` of the steps the ranges are re-calibrated on the same frames
and frozen together with the BatchNorm statistics, so the weights settle under the ranges TFLite
will compute for them.  Weight observers track the current weights throughout, because TFLite
derives weight scales from the final weights.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torchao.quantization.pt2e import (
    FakeQuantize,
    FakeQuantizeBase,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    allow_exported_model_train_eval,
    disable_observer,
    enable_observer,
)
from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
)

from compress.quantization.learned_ranges import LearnedRange, learned_ranges, use_learned_ranges
from compress.quantization.tflite_mirror import mirror_tflite_ops
from distill.distiller import Distiller
from distill.metrics import psnr_db
from distill.trainer import LogFn, TrainSpec, train

if TYPE_CHECKING:
    from torch.fx import GraphModule, Node

    from distill.data.datasets import PairedPatchDataset

ACT_EMA = 0.01  # torch's default EMA constant for activation observers during QAT
SIGMOID_QPARAMS = (1.0 / 256.0, -128)  # TFLite LOGISTIC int8 output
TANH_QPARAMS = (1.0 / 128.0, 0)  # TFLite TANH int8 output


def _aten(*names: str) -> set[Any]:
    """aten overloads by name (``"conv2d.default"``); names missing in this torch build are skipped."""
    ops = set()
    for name in names:
        packet, _, overload = name.partition(".")
        op = getattr(getattr(torch.ops.aten, packet, None), overload or "default", None)
        if op is not None:
            ops.add(op)
    return ops


CONV_OPS = _aten("conv2d.default", "conv2d.padding", "conv_transpose2d.input")
FUSED_ACT_OPS = _aten("relu.default", "relu_.default", "relu6.default", "hardtanh.default", "hardtanh_.default")
BN_OPS = _aten("batch_norm.default", "_native_batch_norm_legit.default",
              "_native_batch_norm_legit_no_training.default")
# ops that move int8 values without changing them: TFLite gives their output the input's parameters
PASS_THROUGH_OPS = _aten("pixel_shuffle.default", "max_pool2d.default", "view.default", "reshape.default",
                         "permute.default", "slice.Tensor", "clone.default", "contiguous.default",
                         "expand.default", "flatten.using_ints", "squeeze.dim", "unsqueeze.default")
SIGMOID_OPS = _aten("sigmoid.default", "sigmoid_.default")
SQUARE_OPS = _aten("pow.Tensor_Scalar", "square.default")
SUB_OPS = _aten("sub.Tensor")
TANH_OPS = _aten("tanh.default", "tanh_.default")
# ops whose int8 output gets its own scale/zero point in TFLite (elementwise maths, reductions, concat)
REQUANT_OPS = FUSED_ACT_OPS | _aten(
    "leaky_relu.default", "leaky_relu_.default", "add.Tensor", "add_.Tensor", "sub.Tensor", "mul.Tensor",
    "cat.default", "mean.dim", "amax.default", "hardswish.default", "hardsigmoid.default", "gelu.default",
    "silu.default", "prelu.default", "linear.default", "adaptive_avg_pool2d.default", "avg_pool2d.default",
    "upsample_bilinear2d.vec", "upsample_nearest2d.vec", "div.Tensor", "clamp.default", "rsqrt.default",
) | SQUARE_OPS


def _act_spec() -> Any:
    return QuantizationSpec(
        dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=MovingAverageMinMaxObserver,
                                                          averaging_constant=ACT_EMA))


def _weight_spec() -> Any:
    # averaging_constant 1: the range is the current weights' range, as TFLite computes it at conversion
    return QuantizationSpec(
        dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric, ch_axis=0,
        observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver,
                                                          averaging_constant=1.0))


def _fixed_spec(scale: float, zero_point: int) -> Any:
    return FixedQParamsQuantizationSpec(dtype=torch.int8, scale=scale, zero_point=zero_point, quant_min=-128,
                                        quant_max=127, qscheme=torch.per_tensor_affine)


class TFLiteInt8Quantizer(Quantizer):
    """Annotates an exported aten graph like TFLite's INT8 converter quantizes the same network."""

    def annotate(self, model: GraphModule) -> GraphModule:
        act, weight = _act_spec(), _weight_spec()
        for node in model.graph.nodes:
            if node.op != "call_function" or not _is_float_tensor(node) or _is_annotated(node):
                continue
            if node.target in CONV_OPS:
                x, w = node.args[0], node.args[1]
                end = _fused_end(node)
                inputs = {x: _conv_input_spec(x, act, needs_entry=end is not node), w: weight}
                if end is node:
                    _annotate(node, inputs, act)
                else:  # conv (+ BatchNorm) (+ ReLU): one TFLite op, quantized once at its end
                    _annotate(node, inputs, None)
                    _annotate(end, {}, act)
            elif node.target in SIGMOID_OPS:
                _annotate(node, {}, _fixed_spec(*SIGMOID_QPARAMS))
            elif node.target in TANH_OPS:
                _annotate(node, {}, _fixed_spec(*TANH_QPARAMS))
            elif node.target in SUB_OPS and _feeds_only_square(node):
                continue  # sub + square is one SQUARED_DIFFERENCE op in TFLite: quantized once, at its end
            elif node.target in REQUANT_OPS:
                _annotate(node, {}, act)
        return model

    def validate(self, model: GraphModule) -> None:
        return None


def _is_float_tensor(node: Any) -> bool:
    val = getattr(node, "meta", {}).get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def _is_annotated(node: Node) -> bool:
    return "quantization_annotation" in node.meta


def _only_user(node: Node) -> Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _feeds_only_square(node: Node) -> bool:
    user = _only_user(node)
    if user is None or user.target not in SQUARE_OPS or user.args[0] is not node:
        return False
    return user.target not in _aten("pow.Tensor_Scalar") or bool(user.args[1] == 2)


def _fused_end(conv: Node) -> Node:
    """The last node of ``conv [-> batch_norm] [-> relu/relu6]``: where TFLite's fused conv op ends."""
    end = conv
    user = _only_user(end)
    if user is not None and user.target in BN_OPS:
        end, user = user, _only_user(user)
    if user is not None and user.target in FUSED_ACT_OPS:
        end = user
    return end


def _carries_quantized(node: Any) -> bool:
    """True when ``node`` is (or passes through layout ops from) an annotated int8 output: TFLite
    feeds that tensor to the next op as it is, so a second fake quant would be an error it never makes."""
    while hasattr(node, "meta"):
        annotation = node.meta.get("quantization_annotation")
        if annotation is not None and annotation.output_qspec is not None:
            return True
        if node.op != "call_function" or node.target not in PASS_THROUGH_OPS:
            return False
        node = node.args[0]
    return False


def _conv_input_spec(x: Any, act: Any, needs_entry: bool) -> Any:
    """A conv's input: the producer's own int8 output where it has one (shared, not re-quantized,
    as TFLite feeds it), else a fresh activation range.  torchao's conv+BN QAT rewrite needs an entry
    for the input, so behind layout-only ops it gets a fresh (near-identity) range then."""
    annotation = getattr(x, "meta", {}).get("quantization_annotation")
    if annotation is not None and annotation.output_qspec is not None:
        return SharedQuantizationSpec(x)
    if _carries_quantized(x) and not needs_entry:
        return None
    return act


def _annotate(node: Node, inputs: dict[Any, Any], output: Any) -> None:
    inputs = {n: spec for n, spec in inputs.items() if hasattr(n, "meta") and spec is not None}
    node.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=inputs, output_qspec=output,
                                                                  _annotated=True)


@dataclass
class QATResult:
    """The fine-tuned float model (same class as the input) and what happened on the way."""

    model: nn.Module
    steps: int
    freeze_step: int
    final_loss: float
    # fake-quant vs float output of the same weights on the calibration frames, before and after QAT
    fake_quant_psnr_start: float | None = None
    fake_quant_psnr_end: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    prepared: Any = None  # the torchao QAT graph (fake quant inside), for inspection and parity checks
    # with learn_ranges: every trained activation range and the fingerprint that finds its TFLite tensor
    learned_ranges: list[LearnedRange] = field(default_factory=list)


def prepare_qat(model: nn.Module, example: torch.Tensor) -> GraphModule:
    """torchao PT2E QAT graph of ``model`` (deep-copied) with TFLite-like fake quantization inserted."""
    float_copy = copy.deepcopy(model).train()
    mirror_tflite_ops(float_copy)
    if example.ndim != 4:
        raise ValueError(f"the QAT example input must be NCHW; got shape {tuple(example.shape)}")
    example = example[:1].expand(2, -1, -1, -1).contiguous()  # batch 1 would be specialised to 1
    dims = {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    exported = torch.export.export(float_copy, (example,), dynamic_shapes=(dims,), strict=False).module()
    prepared = prepare_qat_pt2e(exported, TFLiteInt8Quantizer())
    allow_exported_model_train_eval(prepared)
    return prepared


def calibrate(prepared: GraphModule, frames: torch.Tensor) -> None:
    """Set every range as TFLite's converter will: min/max of the float graph over ``frames``.

    One pass in eval mode with fake quant off and the activation observers reset, so the first (and
    only) observation sets min/max outright; weight observers see the current weights.  Leaves the
    graph in eval mode with fake quant on and observers as they were before the call.
    """
    prepared.eval()
    fake_quants = [m for m in prepared.modules() if isinstance(m, FakeQuantizeBase)]
    observing = [bool(m.observer_enabled[0]) for m in fake_quants]
    for module in fake_quants:
        module.disable_fake_quant()
        module.enable_observer()
        reset = getattr(module.activation_post_process, "reset_min_max_vals", None)
        if reset is not None and _is_activation(module):
            reset()
    with torch.no_grad():
        prepared(frames)
    for module, was_observing in zip(fake_quants, observing):
        module.enable_fake_quant()
        if not was_observing:
            module.disable_observer()


def _is_activation(module: Any) -> bool:
    return getattr(module, "qscheme", None) in (torch.per_tensor_affine, torch.per_tensor_symmetric)


def freeze_activation_ranges(prepared: GraphModule) -> int:
    """Stop every per-tensor (activation) observer; weight observers keep following the weights."""
    frozen = 0
    for module in prepared.modules():
        if isinstance(module, FakeQuantizeBase) and _is_activation(module):
            module.disable_observer()
            frozen += 1
    return frozen


def copy_weights_back(prepared: GraphModule, model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` holding the QAT graph's parameters and buffers (matched by name)."""
    result = copy.deepcopy(model)
    target = result.state_dict()
    source = {k: v for k, v in prepared.state_dict().items() if k in target}
    missing = [k for k, v in target.items() if k not in source and v.is_floating_point()]
    if missing:
        raise RuntimeError(f"QAT graph lost the float tensors {missing[:5]}; cannot copy the weights back")
    result.load_state_dict({**target, **source})
    return result.eval()


def fake_quant_output(prepared: GraphModule, x: torch.Tensor) -> torch.Tensor:
    """The QAT graph's output in eval mode (fake quant on, observers untouched)."""
    prepared.eval()
    prepared.apply(disable_observer)
    with torch.no_grad():
        return prepared(x)


def qat_finetune(
    model: nn.Module,
    dataset: PairedPatchDataset,
    spec: TrainSpec,
    *,
    calibration: torch.Tensor,
    teacher: nn.Module | None = None,
    kd_weight: float = 0.0,
    freeze_fraction: float = 0.25,
    seed: int = 0,
    log: LogFn | None = None,
    desc: str = "qat",
    checkpoint_path: Path | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    learn_ranges: bool = False,
) -> QATResult:
    """Fine-tune ``model`` under TFLite-INT8 fake quantization; returns a float copy with the new weights.

    ``calibration``: packed RAW frames (NCHW, the model's input scaling), e.g. the recipe's quantize
    frames.  ``teacher`` (default: a frozen copy of ``model`` itself when ``kd_weight > 0``) adds
    ``kd_weight`` times the output L1 to the float model.  ``spec`` is the usual training block
    (steps, lr, batch, losses, device); ``model`` itself is not modified.  The loop is
    ``distill.trainer.train`` on the fake-quant graph, so QAT runs under torchrun (DDP) and resumes
    from ``checkpoint_path`` like any training stage.

    ``learn_ranges``: every activation range becomes a trained parameter from its min/max start
    (``compress.quantization.learned_ranges``); they are returned in ``learned_ranges`` for the export to
    write into the TFLite model (``compress.quantization.ranges.RangeSetting(given=...)``).  Without it the
    ranges follow the data (EMA min/max) and TFLite recomputes them at conversion.
    """
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(f"calibration must be a non-empty NCHW batch of RAW frames; got {tuple(calibration.shape)}")
    if not 0.0 <= freeze_fraction <= 1.0:
        raise ValueError(f"freeze_fraction must be in [0, 1]; got {freeze_fraction}")
    if kd_weight < 0:
        raise ValueError(f"kd_weight must be >= 0; got {kd_weight}")
    torch.manual_seed(seed)
    calibration = calibration.float()
    prepared = prepare_qat(model.eval(), calibration[:1])
    calibrate(prepared, calibration)
    if learn_ranges:
        use_learned_ranges(prepared, FakeQuantize, _is_activation)
    with torch.no_grad():
        reference = model.eval()(calibration)
    start_psnr = psnr_db(fake_quant_output(prepared, calibration), reference)
    prepared.apply(enable_observer)  # EMA observers follow the activations until the freeze step

    kd = None
    if kd_weight > 0:
        kd = Distiller(teacher if teacher is not None else copy.deepcopy(model), output_weight=kd_weight)
    freeze_step = int(round(spec.steps * (1.0 - freeze_fraction)))

    def freeze_at(step: int) -> None:
        if step == freeze_step:  # ranges as TFLite will compute them from the current weights, then fixed
            calibrate(prepared, calibration.to(next(prepared.parameters()).device))
            freeze_activation_ranges(prepared)
        if step >= freeze_step:
            prepared.eval()  # BatchNorm statistics frozen (also after a resume past the freeze step)

    prefixed = (lambda metrics, step: log({f"qat_{k}": v for k, v in metrics.items()}, step)) if log else None
    trained = train(prepared, dataset, spec, seed=seed, kd=kd, log=prefixed, desc=desc, on_step=freeze_at,
                    checkpoint_path=checkpoint_path, checkpoint_extra=checkpoint_extra)
    result = QATResult(model=model, steps=spec.steps, freeze_step=freeze_step, final_loss=trained.final_loss,
                       fake_quant_psnr_start=start_psnr, history=trained.history)
    calibrate(prepared, calibration)  # the final weights' ranges: what TFLite's conversion will use
    result.model = copy_weights_back(prepared, model)
    with torch.no_grad():
        tuned_float = result.model(calibration)
    result.fake_quant_psnr_end = psnr_db(fake_quant_output(prepared, calibration), tuned_float)
    result.prepared = prepared
    if learn_ranges:
        result.learned_ranges = learned_ranges(prepared, calibration)
    return result
