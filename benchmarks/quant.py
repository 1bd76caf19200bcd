"""INT8 methods on every zoo student: how much of the float quality each one keeps, on XNNPACK and builtin kernels.

    .venv/bin/python -m benchmarks.quant [--students pynetv2_mobile smallnet ...] [--steps 300] [--reuse DIR]
        [--qat-seeds 3] [--skip-qat]

Per student (its default configuration), in one process:

1. train the float model (seed 0, embedded data, 64-px packed crops, L1 + 0.2 SSIM; cached in ``--reuse``) and
   fold it (``compress.fold.fold_model``), as the pipeline ships it;
2. export ONNX at the held-out size (the two whole held-out photos, packed 64x128) with the XNNPACK INT8
   rewrites the export stage applies (``quantize.xnnpack_rewrite``), calibrate on 16 seeded RAW crops of the
   training photos, and build INT8 TFLite models (int8 I/O) with each method:
   - ``TFLite calibrator``: TFLite's converter as it comes: min/max as its calibrator logs them, which is too
     wide for tensors an in-place op overwrote (``compress.quantization.ranges``, module docstring);
   - ``minmax``: each tensor's own min/max over the frames (``quantize.ranges: minmax``, what a recipe ships);
   - ``percentile`` / ``mse``: activation ranges set by ``compress.quantization.ranges`` (99.99th
     percentile; least squared error per tensor) and quantized by TFLite's own quantizer;
   - ``mse + float norm stats``: ``mse`` with instance norm's statistics ops (MEAN, SQUARED_DIFFERENCE,
     RSQRT; ``quantize.float_ops``) kept in float; only for models that have them;
   - ``mse + bias correction`` / ``mse + AdaRound``: the weight-side methods of
     ``compress.quantization.weight_rounding`` applied to the folded model before export;
   - ``mse + selective``: ``compress.quantization.selective`` on top of ``mse`` (budget 0.1 dB, at most 8
     float layers, the 24 lowest-SQNR layers tried), searched on the centres of the training photos and
     scored on the held-out ones;
   - ``AEQ min/max``: Google's AI Edge Quantizer on the fp32 ``.tflite`` (``compress.quantization.aeq``); the
     ops it cannot quantize (PReLU, depth to space, ...) stay float, counted in ``float_ops``; for models with
     instance norm also with 16-bit activations on its MEAN, RSQRT and MUL ops (int16x8 per op type; AEQ has no
     16-bit SQUARED_DIFFERENCE);
3. score every model on XNNPACK (what apps run) and on TFLite's builtin kernels (closer to NPU integer
   paths): ``psnr_drop_db`` against the fp32 TFLite model of the original weights, ``parity_db`` = PSNR of
   the INT8 output against that fp32 output;
4. QAT (``--qat-seeds``, for the students whose ``minmax`` model loses >= 0.2 dB on either runtime):
   ``compress.quantization.qat.qat_finetune`` with learned activation ranges carried into TFLite, against
   the same fine-tune without fake quantization (the control), each seed; see ``qat_rows``.

Writes ``benchmarks/results/quant.json`` (``rows``: ``model``, ``runtime``, ``method``, ``psnr_drop_db``,
``parity_db``, ...) and the tables in ``docs/benchmarks.md``.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.distill_gain import held_out_pairs
from benchmarks.quant_common import RUNTIMES, Builds, Photos, int8_source, trained
from benchmarks.quant_qat import qat_rows
from benchmarks.report import cli, measured_on, paragraph, publish, setup, stamp, table
from compress.export.tflite import convert_onnx_to_tflite
from compress.export.tflite_inspect import tflite_ops
from compress.quantization.aeq import AEQAborted, aeq_int8, float_ops
from compress.quantization.calibration import calibration_crops
from compress.quantization.ranges import NORM_STATS_OPS, RangeSetting
from compress.quantization.selective import SelectivePrecision
from compress.quantization.weight_rounding import adaround, bias_correct
from distill.data.embedded import load_embedded
from distill.metrics import centre_crop_pair, psnr_db
from students import list_students

CALIBRATION_FRAMES = 16
CALIBRATOR = "calibrator"  # the converter's own int8 build (= quantize.ranges: calibrator)
AEQ_INT16_NORM_OPS = ("MEAN", "RSQRT", "MUL")  # instance norm's ops AEQ can give 16-bit activations (per op type)
SELECTIVE_BUDGET_DB = 0.1
SELECTIVE_MAX_LAYERS = 8
SELECTIVE_CANDIDATES = 24  # layers measured alone (lowest SQNR first): keeps PyNET-V2's ~300 ops affordable
QAT_THRESHOLD_DB = 0.2
TARGET_DB = {"xnnpack": 0.1, "builtin": 0.2}  # issue 21's bar for the best method per student
RESULT = Path(__file__).resolve().parent / "results" / "quant.json"
EXAMPLE_PLUGIN = "acme_tiny"  # examples/plugin's model: not part of the zoo


def measure(name: str, steps: int, reuse: Path | None, work: Path, held: Photos, crops: Photos,
            frames: np.ndarray) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every method's INT8 model of one student, scored on both runtimes."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    model = trained(name, steps, reuse)
    timings["train_s"] = time.perf_counter() - start
    shape = held.shape
    onnx_path = int8_source(model, shape, work / "float")

    def selective_drop(candidate: Path, fp32: Path) -> float:  # searched on the training crops
        return crops.psnr(crops.run(fp32, "xnnpack")) - crops.psnr(crops.run(candidate, "xnnpack"))

    selective = SelectivePrecision(SELECTIVE_BUDGET_DB, SELECTIVE_MAX_LAYERS, selective_drop, key="int8_selective",
                                   prepare=RangeSetting("mse").prepare, max_candidates=SELECTIVE_CANDIDATES)
    hooks: dict[str, Any] = {m: RangeSetting(m, key=f"int8_{m}") for m in ("minmax", "percentile", "mse")}
    hooks["mse + float norm stats"] = RangeSetting("mse", key="int8_norm", float_ops=NORM_STATS_OPS)
    hooks["mse + selective"] = selective
    start = time.perf_counter()
    files = convert_onnx_to_tflite(onnx_path, work / "tflite", frames, int8_io=True, modes=["int8"],
                                   extra=Builds(hooks))
    timings["convert_s"] = time.perf_counter() - start
    files = {"fp32": files.pop("fp32"), CALIBRATOR: files.pop("int8"), **files}
    instance_norm = {"SQUARED_DIFFERENCE", "RSQRT"} <= set(tflite_ops(files["fp32"]))
    if not instance_norm:
        files.pop("mse + float norm stats")  # no instance norm: the row is for the models that have one
    weight_methods: dict[str, Any] = {"mse + bias correction": bias_correct, "mse + AdaRound": adaround}
    for label, weight_method in weight_methods.items():
        start = time.perf_counter()
        adjusted = weight_method(model, torch.from_numpy(frames))
        source = int8_source(adjusted, shape, work / label.replace(" ", "_"))
        built = convert_onnx_to_tflite(source, work / f"tflite_{label.replace(' ', '_')}", frames, int8_io=True,
                                       modes=[], extra=Builds({label: RangeSetting("mse", key="int8_w")}))
        files[label] = built[label]
        timings[f"{label}_s"] = time.perf_counter() - start

    start = time.perf_counter()
    nhwc = frames.transpose(0, 2, 3, 1)
    aeq_builds: dict[str, tuple[str, tuple[str, ...]]] = {"AEQ min/max": ("int8", ())}
    if instance_norm:  # 16-bit activations where instance norm needs the range
        aeq_builds["AEQ min/max + int16 norm stats"] = ("int16_norm", AEQ_INT16_NORM_OPS)
    aeq_errors: dict[str, str] = {}
    for label, (stem, int16_ops) in aeq_builds.items():
        try:
            files[label] = aeq_int8(files["fp32"], nhwc, work / "aeq" / f"{stem}.tflite", int16_ops=int16_ops)
        except AEQAborted as exc:
            aeq_errors[label] = str(exc)
            print(f"{name}: {exc}", flush=True)
    timings["aeq_s"] = time.perf_counter() - start
    aeq_float_ops = {m: float_ops(p) for m, p in files.items() if m.startswith("AEQ")}

    reference = {rt: held.run(files["fp32"], rt) for rt in RUNTIMES}
    fp32_psnr = {rt: held.psnr(out) for rt, out in reference.items()}
    rows = []
    for method, path in files.items():
        if method == "fp32":
            continue
        for rt in RUNTIMES:
            # AEQ's models run in a child process: LiteRT crashed natively on one (Smallnet-JMU)
            out = held.run_isolated(path, rt) if method.startswith("AEQ") else held.run(path, rt)
            if out is None:
                aeq_errors[f"{method}, {rt}"] = f"LiteRT aborted running {path.name} on {rt} kernels"
                print(f"{name}: {aeq_errors[f'{method}, {rt}']}", flush=True)
                continue
            row = {"model": name, "runtime": rt, "method": method, "psnr_db": held.psnr(out),
                   "psnr_drop_db": fp32_psnr[rt] - held.psnr(out), "parity_db": psnr_db(out, reference[rt])}
            if method == "mse + selective" and selective.result is not None:
                row["float_layers"] = len(selective.result.float_layers)
            if method in aeq_float_ops:
                row["float_ops"] = aeq_float_ops[method]
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {"model": name, "steps": steps, "fp32_psnr_db": fp32_psnr["xnnpack"], "timings_s": timings,
               "calibrator_overstated": len(hooks["minmax"].calibrator_overstated),
               "calibrated_tensors": len(hooks["minmax"].ranges),
               "ops": sorted(set(tflite_ops(files["fp32"]))),
               "selective_float_layers": selective.result.float_layers if selective.result else None,
               "aeq_errors": aeq_errors}
    return rows, summary


def best_methods(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per student and runtime: min/max, the best all-INT8 method and the best method a recipe can ask for
    (AEQ rows are a library reference with float ops: not a recipe option, so not a candidate)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for rt in RUNTIMES:
            mine = [r for r in rows if r["model"] == model and r["runtime"] == rt
                    and not r["method"].startswith(("QAT", "control", "AEQ"))]
            minmax = next(r for r in mine if r["method"] == "minmax")
            all_int8 = [r for r in mine if "selective" not in r["method"] and "float" not in r["method"]
                        and not r.get("float_ops")]
            best_int8 = min(all_int8, key=lambda r: r["psnr_drop_db"])
            best = min(mine, key=lambda r: r["psnr_drop_db"])
            out.append({"model": model, "runtime": rt, "minmax_drop_db": minmax["psnr_drop_db"],
                        "best_int8_method": best_int8["method"], "best_int8_drop_db": best_int8["psnr_drop_db"],
                        "best_method": best["method"], "best_drop_db": best["psnr_drop_db"],
                        "meets_target": best["psnr_drop_db"] <= TARGET_DB[rt]})
    return out


def _cell(by: dict[tuple[str, str, str], dict[str, Any]], model: str, method: str) -> str:
    """'drop / parity' on XNNPACK; on builtin kernels ('-' for a runtime without a row, e.g. a LiteRT abort)."""
    values = [f"{by[(model, rt, method)]['psnr_drop_db']:+.3f} / {by[(model, rt, method)]['parity_db']:.1f}"
              if (model, rt, method) in by else "-" for rt in RUNTIMES]
    return "-" if values == ["-"] * len(RUNTIMES) else "; ".join(values)


def publish_result(result: dict[str, Any]) -> None:
    best = result["best"]
    rows = table(["student", "runtime", "min/max drop dB", "best all-INT8 method", "drop dB", "best recipe method",
                  "drop dB", f"target (XNNPACK {TARGET_DB['xnnpack']}, builtin {TARGET_DB['builtin']})"],
                 ([b["model"], b["runtime"], f"{b['minmax_drop_db']:+.3f}", b["best_int8_method"],
                   f"{b['best_int8_drop_db']:+.3f}", b["best_method"], f"{b['best_drop_db']:+.3f}",
                   "met" if b["meets_target"] else "missed"] for b in best))
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    by = {(r["model"], r["runtime"], r["method"]): r for r in result["rows"]}
    rows += ["", "Every method: PSNR drop vs the fp32 TFLite model (dB) / parity with it (dB), XNNPACK then "
             "builtin kernels:", "",
             *table(["student", *methods],
                    ([m, *(_cell(by, m, meth) for meth in methods)]
                     for m in dict.fromkeys(r["model"] for r in result["rows"])))]
    if result.get("qat"):
        rows += ["", "QAT with learned ranges vs the same fine-tune without fake quantization (control), "
                 "mean over seeds with the spread (min..max); 'QAT - control' > 0 means QAT is closer to float:", "",
                 *table(["student", "runtime", "seeds", "PTQ drop dB", "control drop dB", "QAT drop dB",
                         "QAT - control PSNR dB", "QAT - control parity dB"],
                        ([q["model"], q["runtime"], str(q["seeds"]), f"{q['ptq_drop_db']:+.3f}",
                          f"{q['control_drop_db_mean']:+.3f}", f"{q['qat_drop_db_mean']:+.3f}",
                          f"{q['qat_minus_control_psnr_db_mean']:+.3f} ({q['qat_minus_control_psnr_db_min']:+.3f}.."
                          f"{q['qat_minus_control_psnr_db_max']:+.3f})",
                          f"{q['qat_minus_control_parity_db_mean']:+.2f} ({q['qat_minus_control_parity_db_min']:+.2f}.."
                          f"{q['qat_minus_control_parity_db_max']:+.2f})"] for q in result["qat"]))]
    intro = paragraph("""
        {measured}, wall {wall_min:.1f} min.  Each zoo student in its default configuration, trained {steps}
        steps (seed 0, batch 4, 64-px packed crops, L1 + 0.2 SSIM) and folded; PSNR on the two whole held-out
        photos (packed 64x128); every INT8 model has int8 I/O, is calibrated on the same 16 RAW training crops
        and is converted from the ONNX graph the export stage ships (XNNPACK INT8 rewrites on).  Drops are
        against the fp32 TFLite model of the original weights on the same runtime.  'selective' searches its
        float layers on the training photos' centres (budget {budget} dB), never on the held-out photos.
        Methods: `benchmarks/quant.py`; recipe keys in `docs/quantization.md`.""",
                      measured=measured_on(result), wall_min=result["wall_s"] / 60, budget=SELECTIVE_BUDGET_DB,
                      **result)
    publish("quant", "Quantization: INT8 methods on every zoo student", intro, rows, result)


def zoo() -> list[str]:
    return [s for s in list_students() if s != EXAMPLE_PLUGIN]


def held_and_frames() -> tuple[Photos, np.ndarray]:
    """The two held-out photos every row is scored on, and the 16 RAW training crops every model calibrates on."""
    held = Photos(held_out_pairs(load_embedded("eval", seed=0)))
    train_pairs = load_embedded("train", seed=0)
    frames = calibration_crops([p.raw for p in train_pairs], CALIBRATION_FRAMES, tuple(held.raw.shape[2:]), "random",
                               seed=0)
    return held, frames


def qat_only(args: argparse.Namespace) -> None:
    """Add (replace) the QAT comparison of ``args.students`` in quant.json, from the PTQ rows already there."""
    started = time.perf_counter()
    result = json.loads(RESULT.read_text())
    held, frames = held_and_frames()
    qat = [q for q in result.get("qat", []) if q["model"] not in args.students]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.students:
            ptq = [r for r in result["rows"] if r["model"] == name]
            if not ptq:
                raise SystemExit(f"quant.json has no PTQ rows for {name}: run it without --qat-only first")
            qat += qat_rows(name, result["steps"], args.reuse, Path(tmp) / name, held, frames, args.qat_seeds, ptq)
    result.update(qat=qat, wall_s=result["wall_s"] + time.perf_counter() - started)
    publish_result(result)


def minmax_only(args: argparse.Namespace) -> None:
    """Re-measure the ``calibrator`` and ``minmax`` rows of ``args.students`` (the cached float models of
    ``--reuse``), keeping every other method's rows: the range searches already read the tensors' own values."""
    setup()
    started = time.perf_counter()
    result = json.loads(RESULT.read_text())
    held, frames = held_and_frames()
    redo = {CALIBRATOR, "minmax"}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.students:
            model = trained(name, result["steps"], args.reuse)
            onnx_path = int8_source(model, held.shape, Path(tmp) / name)
            minmax = RangeSetting("minmax", key="int8_minmax")
            built = convert_onnx_to_tflite(onnx_path, Path(tmp) / name / "tflite", frames, int8_io=True,
                                           modes=["int8"], extra=Builds({"minmax": minmax}))
            reference = {rt: held.run(built["fp32"], rt) for rt in RUNTIMES}
            rows = []
            for method, path in ((CALIBRATOR, built["int8"]), ("minmax", built["minmax"])):
                for rt in RUNTIMES:
                    out = held.run(path, rt)
                    rows.append({"model": name, "runtime": rt, "method": method, "psnr_db": held.psnr(out),
                                 "psnr_drop_db": held.psnr(reference[rt]) - held.psnr(out),
                                 "parity_db": psnr_db(out, reference[rt])})
                    print(json.dumps(rows[-1]), flush=True)
            keep = [r for r in result["rows"] if not (r["model"] == name and r["method"] in redo)]
            first = next(i for i, r in enumerate(keep) if r["model"] == name)
            result["rows"] = keep[:first] + rows + keep[first:]
            for summary in result["summaries"]:
                if summary["model"] == name:
                    summary.update(calibrator_overstated=len(minmax.calibrator_overstated),
                                   calibrated_tensors=len(minmax.ranges))
            result.update(best=best_methods(result["rows"]), wall_s=result["wall_s"] + time.perf_counter() - started)
            publish_result(result)  # after every student


def main() -> None:
    parser = cli(__doc__)
    parser.add_argument("--students", nargs="+", default=None, help="default: every registered student")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reuse", type=Path, default=None, help="folder to keep trained float models in")
    parser.add_argument("--qat-seeds", type=int, default=3)
    parser.add_argument("--skip-qat", action="store_true")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other students' rows of benchmarks/results/quant.json (replace these ones)")
    parser.add_argument("--qat-only", action="store_true",
                        help="run only the QAT comparison for --students, on their PTQ rows in quant.json")
    parser.add_argument("--minmax-only", action="store_true",
                        help="re-measure only the calibrator and min/max rows of --students in quant.json")
    args = parser.parse_args()
    if args.qat_only:
        return qat_only(args)
    if args.minmax_only:
        return minmax_only(args)
    setup()
    started = time.perf_counter()
    held, frames = held_and_frames()
    shape = held.raw.shape[2:]
    crops = Photos([centre_crop_pair(torch.from_numpy(p.raw), torch.from_numpy(p.rgb), shape)
                    for p in load_embedded("train", seed=0)])
    rows: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    qat: list[dict[str, Any]] = []
    previous = json.loads(RESULT.read_text()) if args.merge and RESULT.exists() else None
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.students or zoo():
            student_rows, summary = measure(name, args.steps, args.reuse, Path(tmp) / name, held, crops, frames)
            rows += student_rows
            summaries.append(summary)
            worst = max(r["psnr_drop_db"] for r in student_rows if r["method"] == "minmax")
            if not args.skip_qat and worst >= QAT_THRESHOLD_DB:
                qat += qat_rows(name, args.steps, args.reuse, Path(tmp) / f"{name}_qat", held, frames,
                                args.qat_seeds, copy.deepcopy(student_rows))
            # after every student: a crash later (a runtime abort) keeps what is measured
            save(args.steps, time.perf_counter() - started, rows, summaries, qat, previous)


def save(steps: int, wall: float, rows: list[dict[str, Any]], summaries: list[dict[str, Any]],
         qat: list[dict[str, Any]], previous: dict[str, Any] | None) -> None:
    """Write quant.json and the docs table: these students' rows plus, with ``--merge``, the other students'."""
    if previous is not None:
        done = {s["model"] for s in summaries}
        keep = [s["model"] for s in previous["summaries"] if s["model"] not in done]
        rows = [r for r in previous["rows"] if r["model"] in keep] + rows
        summaries = [s for s in previous["summaries"] if s["model"] in keep] + summaries
        qat = [q for q in previous.get("qat", []) if q["model"] in keep] + qat
        wall += previous["wall_s"]
    order = {name: i for i, name in enumerate(zoo())}
    rows = sorted(rows, key=lambda r: order.get(r["model"], len(order)))
    summaries = sorted(summaries, key=lambda s: order.get(s["model"], len(order)))
    result = stamp(steps=steps, wall_s=wall, rows=rows, summaries=summaries, best=best_methods(rows), qat=qat)
    publish_result(result)


if __name__ == "__main__":
    main()
