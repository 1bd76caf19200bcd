"""Recipe blocks for the compression stages: prune, fold, quantize, export and hand-off."""
from __future__ import annotations

import warnings
from typing import Literal

from pydantic import Field, field_validator, model_validator

from compress.pruning.prune import PruneTarget
from distill.trainer import TrainSpec
from recipes.schema.base import KeyPathError, Strict


class SensitivitySpec(Strict):
    """Prune each layer group alone by ``ratio`` and log the held-out PSNR drop (table + bar plot)."""

    ratio: float = Field(0.3, gt=0.0, lt=0.95)
    derive_ratios: bool = Field(False, description="prune the least sensitive layers hardest: rank-based "
                                "multipliers (1.5x .. 0.5x) of the ratio; explicit layer_ratios win")


class PruneStage(PruneTarget):
    steps: int = Field(1, ge=1, le=20, description="iterative pruning: this many prune + KD fine-tune rounds")
    finetune: TrainSpec = Field(default_factory=lambda: TrainSpec(steps=100),
                                description="fine-tune after pruning; its steps are split over the rounds")
    kd_weight: float = Field(0.5, ge=0, description="output KD from the unpruned model during fine-tune")
    sensitivity: SensitivitySpec | None = None

    @property
    def target(self) -> PruneTarget:
        return PruneTarget(**self.model_dump(include=set(PruneTarget.model_fields)))


class FoldStage(Strict):
    enabled: bool = True
    before_prune: bool = Field(False, description="fold first, then prune the folded model")


TFLiteVariant = Literal["int8", "int16x8", "float16", "dynamic", "fp32"]
# The x86 path, built next to the TFLite variants: ONNX Runtime QDQ models and Neural Compressor's
# PT2E static INT8 of the PyTorch model (compress.quantization.onnx_quant, compress.quantization.inc_quant).
X86Variant = Literal["onnx_int8", "onnx_int16", "inc_int8"]
GateVariant = Literal["int8", "int16x8", "float16", "dynamic", "fp32", "onnx_int8", "onnx_int16", "inc_int8"]
# Default budgets per variant (docs/quantization.md): PSNR drop vs the float model of the same runtime
# (fp32 TFLite, fp32 ONNX, PyTorch) on the held-out crops, and parity (PSNR) vs the PyTorch model.
# fp32's parity gate is export.parity_min_db.
DEFAULT_MAX_DROP_DB: dict[str, float] = {"int8": 1.0, "int16x8": 0.1, "float16": 0.05, "dynamic": 0.5, "fp32": 0.0,
                                         "onnx_int8": 1.0, "onnx_int16": 0.1, "inc_int8": 1.0}
DEFAULT_MIN_PARITY_DB: dict[str, float] = {"int8": 30.0, "int16x8": 45.0, "float16": 50.0, "dynamic": 30.0,
                                           "onnx_int8": 30.0, "onnx_int16": 45.0, "inc_int8": 30.0}


class QuantGateSpec(Strict):
    """Per-variant budgets; a variant over either fails the export stage and no bundle is written.

    Give only the variants to change: ``{max_drop_db: {int8: 0.1}}`` keeps the other defaults.
    """

    max_drop_db: dict[GateVariant, float] = Field(
        default_factory=dict, description="PSNR drop vs the float model of the same runtime, dB "
                                          "(defaults: DEFAULT_MAX_DROP_DB)")
    min_parity_db: dict[GateVariant, float] = Field(
        default_factory=dict, description="PSNR vs the PyTorch model, dB (defaults: DEFAULT_MIN_PARITY_DB; "
                                          "fp32 uses export.parity_min_db)")

    def drop_budget(self, variant: str) -> float:
        return self.max_drop_db.get(variant, DEFAULT_MAX_DROP_DB[variant])  # type: ignore[call-overload]

    def parity_budget(self, variant: str, fp32_min_db: float) -> float:
        default = DEFAULT_MIN_PARITY_DB.get(variant, fp32_min_db)
        return self.min_parity_db.get(variant, default)  # type: ignore[call-overload]


class SelectiveSpec(Strict):
    """Keep the most error-prone INT8 layers in float until the INT8 drop is within ``max_drop_db``."""

    max_drop_db: float = Field(ge=0, description="PSNR drop vs the fp32 TFLite model the INT8 model must reach")
    max_float_layers: int = Field(8, ge=1, description="give up (the stage fails) after this many float layers")
    probe: int = Field(8, ge=1, description="layers tried per greedy step, best measured-alone first "
                                            "(each costs one re-quantization and one evaluation)")


class QATSpec(Strict):
    """Quantization-aware fine-tune before export (``compress.quantization.qat``): TFLite-INT8 fake quantization,
    optional output KD from the float model; the fine-tuned float weights are what the export converts."""

    train: TrainSpec = Field(default_factory=lambda: TrainSpec(steps=100, lr=1e-4),
                             description="the fine-tune (a few percent of the student's steps, a low lr)")
    kd_weight: float = Field(0.5, ge=0, description="output L1 to the float model before QAT (0: off)")
    freeze_fraction: float = Field(0.25, ge=0, le=1,
                                   description="last fraction of the steps with activation ranges fixed")
    learn_ranges: bool = Field(True, description="activation ranges trained with the weights (LSQ+) and written "
                                                 "into the TFLite model; false: min/max ranges TFLite recomputes")


class QuantizeStage(Strict):
    mode: TFLiteVariant = Field("int8", description="the TFLite variant shipped in the hand-off bundle")
    variants: list[TFLiteVariant] = Field(default_factory=list,
                                          description="more variants built, gated and logged (not shipped)")
    int8_io: bool = Field(True, description="int8 model input/output (else float I/O around an int8 body)")
    calibration_frames: int = Field(32, ge=1, description="RAW crops from the training data")
    calibration_selection: Literal["random", "spread"] = Field(
        "random", description="random crops, or crops from every image spread over its brightness range")
    ranges: Literal["minmax", "calibrator", "percentile", "mse"] = Field(
        "minmax", description="int8 activation ranges: each tensor's min/max over the calibration frames, TFLite's "
                              "stock calibrator (min/max as it logs them: too wide after in-place ops), or each "
                              "tensor clipped to a percentile or to its least-squared-error range "
                              "(compress.quantization.ranges; written into TFLite's own quantizer)")
    range_percentile: float = Field(99.99, gt=50, le=100, description="the percentile kept by ranges: percentile")
    float_ops: list[str] = Field(default_factory=list,
                                 description="TFLite op types the int8 variant keeps in float, e.g. [MEAN, "
                                             "SQUARED_DIFFERENCE, RSQRT]: instance norm's statistics")
    weight_rounding: Literal["none", "bias_correction", "adaround"] = Field(
        "none", description="int8 weights: TFLite's round to nearest, or with each conv's bias corrected for the "
                            "mean shift rounding causes, or rounded by AdaRound onto TFLite's grid "
                            "(compress.quantization.weight_rounding, on the calibration frames; int8 variant only)")
    selective: SelectiveSpec | None = Field(None, description="selective precision for the int8 variant")
    qat: QATSpec | None = Field(None, description="quantization-aware fine-tune before export")
    x86: list[X86Variant] = Field(default_factory=list,
                                  description="x86 models scored next to the TFLite ones: onnx_int8, "
                                              "onnx_int16 (ONNX Runtime QDQ), inc_int8 (Neural Compressor)")
    inc_max_trials: int = Field(4, ge=1, description="Neural Compressor autotune trials for inc_int8")
    xnnpack_rewrite: bool = Field(True, description="convert int8 from an ONNX copy with PReLU/HardSwish/"
                                                    "Clip/Max/Min written in ops XNNPACK runs in INT8")
    gate: QuantGateSpec = Field(default_factory=QuantGateSpec)

    @model_validator(mode="after")
    def _selective_needs_int8(self) -> QuantizeStage:
        if self.selective is not None and "int8" not in self.built_variants():
            raise KeyPathError("selective", "selective precision works on the int8 variant: set "
                               "mode: int8 or add int8 to variants")
        return self

    def built_variants(self) -> list[str]:
        """fp32 first (always built: the reference), then the shipped mode, then the extra variants."""
        return list(dict.fromkeys(["fp32", self.mode, *self.variants]))


DeployRuntime = Literal["gpu", "xnnpack", "builtin"]
"""``export.require``: gpu = the GPU delegate's op rules take every op of the shipped variant; xnnpack =
XNNPACK takes the whole shipped graph (one partition, no op left out); builtin = on TFLite's builtin
kernels (the stand-in for NPU integer paths) the shipped variant stays within its quantize.gate drop."""


class ExportStage(Strict):
    input_size: tuple[int, int] = Field((64, 64), description="packed RAW height, width of the shipped model")
    parity_min_db: float = Field(60.0, description="fp32 TFLite and ONNX must match PyTorch this closely")
    latency_threads: int = Field(2, ge=1)
    gpu_rewrite: bool = Field(True, description="convert the float variants from an ONNX copy with broadcast "
                              "Expand written as Add of zeros (the GPU delegate rejects onnx2tf's MUL form; "
                              "outputs bit-identical); int8 too when require has gpu (else it keeps its graph: XNNPACK "
                              "splits the rewritten int8 graph in two)")
    require: list[DeployRuntime] = Field(default_factory=list,
                                         description="runtimes that must take the shipped variant, else the "
                                                     "export stage fails and no bundle is written: gpu, xnnpack, "
                                                     "builtin")
    frame_size: tuple[int, int] | None = Field(None, description="output RGB height, width the app feeds (e.g. "
                                               "[1088, 1920], Full HD); every variant is also built, scored and "
                                               "timed at this size and the bundle ships model_frame.tflite")

    @field_validator("frame_size")
    @classmethod
    def _frame_even(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and (min(value) < 16 or any(v % 2 for v in value)):
            raise ValueError(f"frame_size {list(value)} must be even output RGB pixels, >= 16 per side "
                             "(the packed input is half of it)")
        return value

    @field_validator("require")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @field_validator("input_size")
    @classmethod
    def _even(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 8:
            raise ValueError(f"input_size {list(value)} is too small (>= 8 packed pixels per side)")
        return value


class RegisterSpec(Strict):
    """Register the finished bundle as an MLflow model version (needs a database store or a server)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="registered model name")
    alias: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$",
                              description="alias to point at the new version, e.g. candidate")


with warnings.catch_warnings():  # the recipe key is ``register``; pydantic warns it hides ABCMeta.register
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class HandoffStage(Strict):
        name: str | None = Field(None, description="bundle folder name; defaults to the recipe name")
        register: RegisterSpec | None = Field(None, description="register the bundle in the MLflow model registry")

__all__ = [
    "SensitivitySpec", "PruneStage", "FoldStage", "TFLiteVariant", "X86Variant", "GateVariant",
    "DEFAULT_MAX_DROP_DB", "DEFAULT_MIN_PARITY_DB", "QuantGateSpec", "SelectiveSpec", "QATSpec",
    "QuantizeStage", "DeployRuntime", "ExportStage", "RegisterSpec", "HandoffStage",
]
