"""Quantization runtimes: held-out quality, size and latency of every quantized variant (min/max calibration).

    .venv/bin/python -m benchmarks.quant_runtimes [--models lwisp smallnet lwisp_w1 lwisp_tied] [--scale 1.0]
        [--compile] [--reuse DIR]

Per student, in one process (seed 0, embedded data, 7 training photos, 2 held-out photos):

1. train the float model (``MODELS``: steps, lr, batch 4, 32-px packed crops);
2. export ONNX at the held-out size (packed 64x128, the two whole held-out photos) and convert with
   ``compress.export.tflite.convert_onnx_to_tflite`` to fp32, float16, dynamic range, int16x8 and int8
   (int8 I/O), calibrated on 16 seeded random RAW crops of the training photos; plus ``int8 +
   selective precision`` (``compress.quantization.selective``, budget 0.1 dB, at most 4 float layers) when present;
3. **QAT**: ``compress.quantization.qat.qat_finetune`` for a quarter of the training steps at a tenth of the
   learning rate with output KD (weight 0.5) from the float model, then TFLite int8 PTQ of the QAT
   weights on the same frames.  **Control**: the same fine-tune (same steps, lr, KD, data) without
   fake quantization, then the same int8 PTQ; so a QAT gain is not just "more training";
4. Intel Neural Compressor PT2E static INT8 (``compress.quantization.inc_quant.inc_autotune``, budget 0.1 dB on the
   held-out photos), and ONNX Runtime QDQ int8 (U8S8 and S8S8) and int16 (``compress.quantization.onnx_quant``).

Quality: PSNR/SSIM of each runtime's output against the ground truth on the held-out photos; ``drop``
is against the PyTorch float model the variant was made from (QAT and control: the original float
model, since that is what they replace).  Latency: median of 10 runs at the held-out input size, 1 and
2 threads: TFLite (XNNPACK) and onnxruntime for the files, PyTorch eager (or ``--compile``d) for
INC.  Writes ``benchmarks/results/quant_runtimes.json`` and a table in ``docs/benchmarks.md``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch

from benchmarks.distill_gain import held_out_pairs
from benchmarks.report import ALL_THREADS, cli, measured_on, paragraph, publish, setup, stamp, table
from compress.export.onnx_export import export_onnx
from compress.export.tflite import QUANT_MODES, convert_onnx_to_tflite
from compress.quantization.calibration import calibration_crops
from compress.quantization.inc_quant import inc_autotune
from compress.quantization.onnx_quant import OnnxQuantMode, quantize_onnx
from compress.quantization.qat import qat_finetune
from compress.quantization.selective import SelectivePrecision
from compress.runtime.latency import onnx_latency_ms, torch_latency_ms
from compress.runtime.parity import run_onnx, run_tflite
from compress.runtime.profile import size_kb
from distill.data.datasets import PairedPatchDataset
from distill.data.embedded import load_embedded
from distill.distiller import Distiller
from distill.metrics import centre_crop_pair, psnr, psnr_db, ssim
from distill.trainer import TrainSpec, train
from students import create_student

MODELS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "lwisp": ({"width": 0.25}, {"steps": 400, "lr": 2e-3, "batch_size": 4, "losses": {"l1": 1.0, "ssim": 0.2}}),
    "smallnet": ({"width": 16}, {"steps": 600, "lr": 3e-3, "batch_size": 4, "losses": {"l1": 1.0, "ssim": 0.2}}),
    "lwisp_tied": ({"width": 0.25}, {"steps": 400, "lr": 2e-3, "batch_size": 4, "losses": {"l1": 1.0, "ssim": 0.2}}),
    "lwisp_w1": ({"width": 1.0}, {"steps": 400, "lr": 2e-3, "batch_size": 4, "losses": {"l1": 1.0, "ssim": 0.2}}),
}
# A case where INT8 PTQ loses >= 0.2 dB, to see whether QAT beats PTQ there: LW-ISP converted *without*
# compress.export.graph_rewrites.untie_shared_reduce_extrema (``convert_onnx_to_tflite(untie_reduce_extrema=False)``),
# i.e. as plain onnx2tf + TFLite's INT8 quantizer leave it (three skip tensors clipped to [0, max];
# docs/quantization.md).  Not run by default.
TIED_CHANNEL_MAX = {"lwisp_tied": "lwisp"}
STUDENTS = {**TIED_CHANNEL_MAX, "lwisp_w1": "lwisp"}  # benchmark name -> registry name, where they differ
DEFAULT_MODELS = ["lwisp", "smallnet", "lwisp_w1"]


def student_name(name: str) -> str:
    return STUDENTS.get(name, name)


PATCH = 32
CALIBRATION_FRAMES = 16
KD_WEIGHT = 0.5
BUDGET_DB = 0.1
THREADS = (1, 2)
LATENCY_RUNS = 10


class Held:
    """The held-out photos as one batch (they share one packed size) and scorers for every runtime."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.pairs = held_out_pairs(load_embedded("eval", seed=0)) if pairs is None else pairs
        shapes = {tuple(raw.shape) for raw, _ in self.pairs}
        if len(shapes) != 1:
            raise RuntimeError(f"held-out photos differ in packed size {sorted(shapes)}; the benchmark needs one")
        self.raw = torch.stack([raw for raw, _ in self.pairs])
        self.rgb = torch.stack([rgb for _, rgb in self.pairs])
        self.shape = (1, *self.raw.shape[1:])

    def score(self, out: np.ndarray | torch.Tensor) -> dict[str, float]:
        out = torch.as_tensor(np.asarray(out, dtype=np.float32)).clamp(0, 1)
        return {"psnr": psnr(out, self.rgb), "ssim": ssim(out, self.rgb)}

    @classmethod
    def training_crops(cls, train_pairs: list[Any], shape: tuple[int, ...]) -> Held:
        """The centre of every training photo at the held-out size: selective precision searches on the
        held-out photos (as a recipe searches on its eval crops), and these show whether its choice
        also holds on photos it did not see."""
        return cls([centre_crop_pair(torch.from_numpy(p.raw), torch.from_numpy(p.rgb), shape[-2:])
                    for p in train_pairs])

    @torch.no_grad()
    def torch_out(self, model: torch.nn.Module) -> torch.Tensor:
        return torch.cat([model(self.raw[i : i + 1]) for i in range(len(self.raw))])


def _train_float(name: str, config: dict[str, Any], train_cfg: dict[str, Any], data: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_student(student_name(name), **config)
    train(model, data, TrainSpec(**train_cfg, log_every=10_000), seed=0, desc=f"{name} float")
    return model.eval()


def _tflite_latency(path: Path) -> dict[str, Any]:
    """XNNPACK latency per thread count, measured in a child process so a delegate crash is a result."""
    code = ("import json, sys; from compress.runtime.latency import tflite_latency_ms; "
            f"print(json.dumps({{n: tflite_latency_ms(sys.argv[1], num_threads=n, runs={LATENCY_RUNS})['median_ms'] "
            f"for n in {list(THREADS)}}}))")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"latency_error": f"XNNPACK run failed (exit {done.returncode}: {tail})"}
    times = json.loads(done.stdout.strip().splitlines()[-1])
    return {f"latency_ms_{n}t": times[str(n)] for n in THREADS}


def _onnx_latency(path: Path) -> dict[str, float]:
    return {f"latency_ms_{n}t": onnx_latency_ms(path, num_threads=n, runs=LATENCY_RUNS)["median_ms"] for n in THREADS}


def _selective(search_set: Held, fp32_holder: dict[str, float]) -> SelectivePrecision:
    """``SelectivePrecision`` hook for the int8 build (its drops measured on XNNPACK on ``search_set``)."""
    def drop_db(candidate: Path, fp32: Path) -> float:
        if "psnr" not in fp32_holder:
            fp32_holder["psnr"] = search_set.score(run_tflite(fp32, search_set.raw.numpy()))["psnr"]
        return fp32_holder["psnr"] - search_set.score(run_tflite(candidate, search_set.raw.numpy()))["psnr"]

    return SelectivePrecision(max_drop_db=BUDGET_DB, max_float_layers=4, drop_db=drop_db, key="int8_selective")


def _tflite_rows(model: torch.nn.Module, held: Held, frames: np.ndarray, work: Path,
                 modes: list[str], untie: bool) -> dict[str, Path]:
    onnx_path = export_onnx(model, work / "model.onnx", held.shape)
    modes = [m for m in modes if m in QUANT_MODES]  # modes added later (dynamic) only when present
    return {"onnx": onnx_path, **convert_onnx_to_tflite(onnx_path, work / "tflite", frames, int8_io=True, modes=modes,
                                                        untie_reduce_extrema=untie)}


def _selective_row(onnx_path: Path, search_set: Held, frames: np.ndarray, work: Path,
                   untie: bool) -> tuple[Path | None, Any, str | None]:
    """The selective-precision int8 build in its own conversion, so its failure loses no other row."""
    hook = _selective(search_set, {})
    try:
        files = convert_onnx_to_tflite(onnx_path, work / "selective", frames, int8_io=True, modes=[], extra=hook,
                                       untie_reduce_extrema=untie)
    except Exception as exc:  # recorded in the results: a failing search is a finding, not a crash
        return None, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return files.get("int8_selective"), hook.result, None


def _float_model(name: str, config: dict[str, Any], train_cfg: dict[str, Any], data: Any,
                 reuse: Path | None) -> tuple[torch.nn.Module, bool]:
    """Train, or load from ``reuse`` a model trained with the same name, config and schedule."""
    key = json.dumps([name, config, train_cfg, PATCH], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = reuse / f"{name}-{digest}.pt" if reuse is not None else None
    if path is not None and path.exists() and json.loads(path.with_suffix(".json").read_text()) == json.loads(key):
        model = create_student(student_name(name), **config)
        model.load_state_dict(torch.load(path))
        return model.eval(), True
    model = _train_float(name, config, train_cfg, data)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        path.with_suffix(".json").write_text(key)
    return model, False


def measure(name: str, scale: float, work: Path, compile_inc: bool, reuse: Path | None = None) -> dict[str, Any]:
    config, train_cfg = MODELS[name]
    untie = name not in TIED_CHANNEL_MAX  # the tied cases convert without the channel-max untie rewrite
    train_cfg = {**train_cfg, "steps": max(1, round(train_cfg["steps"] * scale))}
    train_pairs = load_embedded("train", seed=0)
    data = PairedPatchDataset(train_pairs, patch_size=PATCH, patches_per_image=32, seed=0)
    held = Held()
    frames = calibration_crops([p.raw for p in train_pairs], CALIBRATION_FRAMES, tuple(held.shape[2:]), "random",
                               seed=0)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    float_model, reused = _float_model(name, config, train_cfg, data, reuse)
    timings["train_s"] = time.perf_counter() - start
    float_scores = held.score(held.torch_out(float_model))
    rows: list[dict[str, Any]] = []

    def add(variant: str, runtime: str, scores: dict[str, float], reference: float, **extra: Any) -> None:
        row = {"model": name, "variant": variant, "runtime": runtime, **scores, "drop_db": reference - scores["psnr"],
               **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)

    add("fp32", "PyTorch", float_scores, float_scores["psnr"])
    start = time.perf_counter()
    files = _tflite_rows(float_model, held, frames, work / "float", ["float16", "dynamic", "int16x8", "int8"], untie)
    timings["tflite_convert_s"] = time.perf_counter() - start
    start = time.perf_counter()
    selective_path, selective, selective_error = _selective_row(files["onnx"], held, frames, work, untie)
    timings["selective_s"] = time.perf_counter() - start
    if selective_path is not None:
        files["int8_selective"] = selective_path
    crops = Held.training_crops(train_pairs, held.shape)
    fp32_out = {"held": run_tflite(files["fp32"], held.raw.numpy()),
                "crops": run_tflite(files["fp32"], crops.raw.numpy())}
    crops_drop: dict[str, float] = {}
    offsets: dict[str, list[float]] = {}
    for key in ("fp32", "float16", "dynamic", "int16x8", "int8", "int8_selective"):
        if key not in files:
            continue
        extra: dict[str, Any] = {"size_kb": size_kb(files[key])}
        if key in ("fp32", "int8"):
            extra.update(_tflite_latency(files[key]))
        if key == "int8_selective" and selective is not None:
            extra["float_layers"] = len(selective.float_layers)
        label = {"int8": "int8 PTQ", "int8_selective": "int8 PTQ + selective precision"}.get(key, key)
        for builtin in (False, True) if key == "int8" else (False,):
            out = run_tflite(files[key], held.raw.numpy(), builtin=builtin)
            tag = f"{key}_builtin" if builtin else key
            add(f"{label}, builtin kernels (no XNNPACK)" if builtin else label, "TFLite", held.score(out),
                float_scores["psnr"], parity_db=psnr_db(out, fp32_out["held"]), **({} if builtin else extra))
            if key.startswith("int8"):  # is the drop a property of the two held-out photos? the 7 training crops
                crops_out = run_tflite(files[key], crops.raw.numpy(), builtin=builtin)
                crops_drop[tag] = crops.score(fp32_out["crops"])["psnr"] - crops.score(crops_out)["psnr"]
                offsets[tag] = [float(v) for v in (out - fp32_out["held"]).mean(axis=(0, 2, 3))]

    # QAT and its control: same steps, lr, KD and data; only the fake quantization differs
    ft_spec = TrainSpec(**{**train_cfg, "steps": max(1, train_cfg["steps"] // 4), "lr": train_cfg["lr"] / 10},
                        log_every=10_000)
    start = time.perf_counter()
    qat = qat_finetune(float_model, data, ft_spec, calibration=torch.from_numpy(frames), kd_weight=KD_WEIGHT, seed=1,
                       desc=f"{name} qat")
    timings["qat_s"] = time.perf_counter() - start
    control = copy.deepcopy(float_model).train()
    train(control, data, ft_spec, seed=1, kd=Distiller(copy.deepcopy(float_model), output_weight=KD_WEIGHT),
          desc=f"{name} control")
    for label, tuned in (("QAT", qat.model), ("float fine-tune (control)", control.eval())):
        tag = "qat" if label == "QAT" else "control"
        add(f"{label} fp32", "PyTorch", held.score(held.torch_out(tuned)), float_scores["psnr"])
        tuned_files = _tflite_rows(tuned, held, frames, work / tag, ["int8"], untie)
        tuned_fp32 = run_tflite(tuned_files["fp32"], held.raw.numpy())  # parity: what QAT is meant to raise
        for builtin in (False, True):
            out = run_tflite(tuned_files["int8"], held.raw.numpy(), builtin=builtin)
            add(f"{label} -> int8 PTQ" + (", builtin kernels (no XNNPACK)" if builtin else ""), "TFLite",
                held.score(out), float_scores["psnr"], parity_db=psnr_db(out, tuned_fp32),
                **({} if builtin else {"size_kb": size_kb(tuned_files["int8"])}))

    # Intel Neural Compressor (PyTorch, x86)
    start = time.perf_counter()
    inc = inc_autotune(float_model, torch.from_numpy(frames), held.pairs, max_drop_db=BUDGET_DB, max_trials=4)
    timings["inc_s"] = time.perf_counter() - start
    fp32_lat, int8_lat = ({n: torch_latency_ms(m, held.shape, n, runs=LATENCY_RUNS, compile=compile_inc)["median_ms"]
                           for n in THREADS} for m in (float_model, inc.model))
    mode = "compiled" if compile_inc else "eager"
    rows[0].update({f"latency_ms_{n}t": v for n, v in fp32_lat.items()}, latency_mode=mode)
    add("INC int8 (autotune)", "PyTorch", held.score(held.torch_out(inc.model)), float_scores["psnr"],
        config=inc.config, trials=len(inc.trials), latency_mode=mode,
        **{f"latency_ms_{n}t": v for n, v in int8_lat.items()})

    # ONNX Runtime QDQ
    add("fp32", "ONNX Runtime", held.score(run_onnx(files["onnx"], held.raw.numpy())), float_scores["psnr"],
        size_kb=size_kb(files["onnx"]), **_onnx_latency(files["onnx"]))
    for label, mode_, act in (("int8 QDQ (U8S8)", "int8", "uint8"), ("int8 QDQ (S8S8)", "int8", "int8"),
                              ("int16 QDQ", "int16", "uint8")):
        path = quantize_onnx(files["onnx"], work / f"ort_{mode_}_{act}.onnx", frames, cast(OnnxQuantMode, mode_),
                             activation_type=cast(Literal["uint8", "int8"], act))
        add(label, "ONNX Runtime", held.score(run_onnx(path, held.raw.numpy())), float_scores["psnr"],
            size_kb=size_kb(path), **_onnx_latency(path))

    by = {(r["runtime"], r["variant"]): r for r in rows}
    ptq, qat_row = by[("TFLite", "int8 PTQ")], by[("TFLite", "QAT -> int8 PTQ")]
    control_row = by[("TFLite", "float fine-tune (control) -> int8 PTQ")]
    variants = (("ptq", "int8 PTQ"), ("qat", "QAT -> int8 PTQ"), ("control", "float fine-tune (control) -> int8 PTQ"))
    builtin_drop = {k: by[("TFLite", f"{v}, builtin kernels (no XNNPACK)")]["drop_db"] for k, v in variants}
    # int8 vs its own fp32 TFLite model: the quantization error alone, which QAT trains the weights against
    parity = {f"{k}{suffix}": by[("TFLite", v + suffix)]["parity_db"] for k, v in variants
              for suffix in ("", ", builtin kernels (no XNNPACK)")}
    parity = {k.replace(", builtin kernels (no XNNPACK)", "_builtin"): v for k, v in parity.items()}
    fp32_t, int8_t = by[("TFLite", "fp32")], ptq
    summary = {
        "model": name, "config": config, "train_steps": train_cfg["steps"], "finetune_steps": ft_spec.steps,
        "float_model_reused": reused,
        "ptq_drop_db": ptq["drop_db"], "qat_drop_db": qat_row["drop_db"], "control_drop_db": control_row["drop_db"],
        "qat_minus_ptq_db": qat_row["psnr"] - ptq["psnr"],
        "qat_minus_control_db": qat_row["psnr"] - control_row["psnr"],
        "qat_fake_quant_psnr_db": [qat.fake_quant_psnr_start, qat.fake_quant_psnr_end],
        "builtin_kernels_drop_db": builtin_drop,  # ptq / qat / control int8 on TFLite's own kernels
        "int8_parity_db": parity,  # ptq / qat / control int8 vs the fp32 TFLite model of the same weights
        "int8_over_fp32_latency": {f"{n}t": int8_t[f"latency_ms_{n}t"] / fp32_t[f"latency_ms_{n}t"] for n in THREADS}
        if f"latency_ms_{THREADS[0]}t" in int8_t and f"latency_ms_{THREADS[0]}t" in fp32_t else None,
        "tflite_latency_errors": {r["variant"]: r["latency_error"] for r in rows if "latency_error" in r},
        "selective_float_layers": selective.float_layers if selective is not None else None,
        "selective_error": selective_error,
        "int8_drop_on_training_crops_db": crops_drop,  # vs the fp32 TFLite model on the training photos' centres
        "int8_mean_offset_rgb": offsets,  # mean (int8 - fp32 TFLite) output per channel on the held-out photos
        "inc_config": inc.config, "timings_s": timings,
    }
    return {"summary": summary, "rows": rows}


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def publish_result(result: dict[str, Any]) -> None:
    summaries = result["summaries"]
    rows = table(["model", "runtime", "variant", "PSNR dB", "SSIM", "drop dB", "parity vs fp32 TFLite dB", "size KB",
                  "ms 1t", "ms 2t"],
                 ([r["model"], r["runtime"], r["variant"], f"{r['psnr']:.2f}", f"{r['ssim']:.4f}",
                   f"{r['drop_db']:+.3f}", _fmt(r.get("parity_db"), ".1f"), _fmt(r.get("size_kb"), ".0f"),
                   _fmt(r.get("latency_ms_1t"), ".1f"), _fmt(r.get("latency_ms_2t"), ".1f")] for r in result["rows"]))
    nan = {"1t": float("nan"), "2t": float("nan")}
    rows += ["", *table(["model", "train / fine-tune steps", "PTQ int8 drop dB", "QAT int8 drop dB",
                         "control int8 drop dB", "QAT - PTQ dB", "QAT - control dB", "TFLite int8/fp32 latency 1t, 2t"],
                        ([f"{s['model']} {s['config']}", f"{s['train_steps']} / {s['finetune_steps']}",
                          *(f"{s[k]:+.3f}" for k in ("ptq_drop_db", "qat_drop_db", "control_drop_db",
                                                     "qat_minus_ptq_db", "qat_minus_control_db")),
                          "{1t:.2f}, {2t:.2f}".format(**(s["int8_over_fp32_latency"] or nan))] for s in summaries))]
    rows += ["", "The same on TFLite's builtin kernels (no XNNPACK; their INT8 leaky ReLU floors negatives), and "
             "each int8 model's parity with the fp32 TFLite model of its own weights (the quantization error alone, "
             "what QAT trains against; XNNPACK / builtin):", "",
             *table(["model", "PTQ int8 drop dB", "QAT int8 drop dB", "control int8 drop dB", "parity PTQ dB",
                     "parity QAT dB", "parity control dB"],
                    ([s["model"], *(f"{s['builtin_kernels_drop_db'][k]:+.3f}" for k in ("ptq", "qat", "control")),
                      *(f"{s['int8_parity_db'][k]:.1f} / {s['int8_parity_db'][k + '_builtin']:.1f}"
                        for k in ("ptq", "qat", "control"))] for s in summaries))]
    rows += ["", "Is an int8 drop a property of the two held-out photos?  The same files on the centres of the 7 "
             "training photos (drop vs the fp32 TFLite model), and the mean int8 - fp32 output offset on the "
             "held-out photos (R, G, B, x1e-3):", "",
             *table(["model", "variant", "drop on training crops dB", "mean offset held-out x1e-3"],
                    ([s["model"], tag, f"{drop:+.3f}",
                      ", ".join(f"{1e3 * v:+.1f}" for v in s["int8_mean_offset_rgb"][tag])]
                     for s in summaries for tag, drop in s.get("int8_drop_on_training_crops_db", {}).items()))]
    rows += [f"\nTFLite {variant} on {s['model']}: {error}" for s in result["summaries"]
             for variant, error in s["tflite_latency_errors"].items()]
    rows += [f"\nSelective precision on {s['model']} failed: `{s['selective_error']}`" for s in result["summaries"]
             if s.get("selective_error")]
    intro = paragraph("""
        {measured} (shared with other jobs: latencies are noisy), step scale {scale}, wall {wall_min:.1f} min.
        Each student trained briefly on the embedded data (seed 0); PSNR/SSIM on the two whole held-out
        photos (packed 64x128).  'drop' is against the PyTorch float model (QAT and control rows: the
        original float model); 'parity' is PSNR against the fp32 TFLite model of the same weights.  TFLite
        models are scored as apps run them, with the default XNNPACK delegate (one int8 row also on TFLite's
        builtin kernels, whose INT8 leaky ReLU is biased); TFLite int8 has int8 I/O; calibration is 16
        random RAW training crops for every quantizer.  QAT: `compress.quantization.qat.qat_finetune`, a
        quarter of the training steps at a tenth of the lr with output KD (0.5); control: the same fine-tune
        without fake quantization.  INC: PT2E static int8 autotuned against a {budget} dB budget, timed in
        PyTorch ({latency_mode}).  Latency: median of {runs} at the held-out size (small: fixed costs weigh
        more than at Full HD).""", measured=measured_on(result), wall_min=result["wall_s"] / 60, budget=BUDGET_DB,
                      runs=LATENCY_RUNS, **result)
    publish("quant_runtimes", "Quantization runtimes: every variant, and QAT vs PTQ (min/max)", intro, rows, result)


def main() -> None:
    parser = cli(__doc__)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS),
                        help="lwisp_w1: LW-ISP at the paper's width; lwisp_tied: LW-ISP (width 0.25) without the "
                             "channel-max untie rewrite (PTQ loses ~1 dB)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every step count")
    parser.add_argument("--compile", action="store_true", help="time INC and fp32 PyTorch with torch.compile")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="folder to keep trained float models in and reuse them from (same config and steps)")
    args = parser.parse_args()
    setup(ALL_THREADS)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        measured = [measure(name, args.scale, Path(tmp) / name, args.compile, args.reuse) for name in args.models]
    result = stamp(scale=args.scale, latency_mode="compiled" if args.compile else "eager",
                   wall_s=time.perf_counter() - started, summaries=[m["summary"] for m in measured],
                   rows=[r for m in measured for r in m["rows"]])
    publish_result(result)
    print(json.dumps(result["summaries"], indent=2))


if __name__ == "__main__":
    main()
