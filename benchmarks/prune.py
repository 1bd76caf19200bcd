"""Pruning trade-off: held-out PSNR, params, MACs and TFLite latency at 0/30/50/70 % MACs reduction.

    .venv/bin/python -m benchmarks.prune [--models lwisp smallnet] [--scale 1.0]

Per student: train it once through the ``quickstart`` recipe's data and losses (``run_until: student``, no
teacher), then for each MACs reduction prune a copy to that budget (``macs_reduction``, L2 magnitude,
the PixelShuffle rule on) and fine-tune it twice for the same steps: once on the student's own losses
and once with output KD from the unpruned model added (weight 0.5).  Reported per point: held-out
PSNR/SSIM (the two embedded held-out photos, whole), params, MACs at Full HD (packed 544x960) and the
fp32 TFLite latency (XNNPACK, 2 threads, median of 5) at a quarter-Full-HD packed input of 272x480.
Writes ``benchmarks/results/prune.json``, ``docs/img/prune.png`` and a table in ``docs/benchmarks.md``.
"""
from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.distill_gain import held_out_pairs
from benchmarks.report import ALL_THREADS, ROOT, cli, measured_on, paragraph, publish, setup, stamp, table
from compress.checkpoint import load_model
from compress.export.onnx_export import export_onnx
from compress.export.tflite import convert_onnx_to_tflite
from compress.fold import fold_model
from compress.pruning.prune import PruneTarget, prune_model
from compress.runtime.latency import tflite_latency_ms
from compress.runtime.profile import count_macs, count_params
from distill.data.datasets import PairedPatchDataset
from distill.data.embedded import load_embedded
from distill.distiller import Distiller
from distill.evaluation import evaluate
from distill.trainer import TrainSpec, train
from recipes.loader import load_recipe
from recipes.results import ModelResult
from recipes.runner import run_recipe

LEVELS = (0.0, 0.3, 0.5, 0.7)
FHD_PACKED = (1, 4, 544, 960)
LATENCY_PACKED = (1, 4, 272, 480)
MODELS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "lwisp": ({"width": 0.5}, {"steps": 1200, "lr": 1e-3, "batch_size": 4, "losses": {"l1": 1.0, "ms_ssim": 0.4}}),
    "smallnet": ({"width": 16}, {"steps": 1500, "lr": 3e-3, "batch_size": 4, "losses": {"l1": 1.0, "ssim": 0.2}}),
}


def _train_student(name: str, config: dict[str, Any], train_cfg: dict[str, Any], work: Path) -> torch.nn.Module:
    overrides = [f"student.model={name}", f"student.config={yaml.safe_dump(config, default_flow_style=True).strip()}",
                 f"student.train={yaml.safe_dump(train_cfg, default_flow_style=True).strip()}",
                 "student.distill.output_kd=0", "run_until=student", "seed=0"]
    spec, path = load_recipe("quickstart", overrides)
    spec = spec.model_copy(update={"teacher": None})
    _, outcomes = run_recipe(spec, path, work / name)
    model, _ = load_model(outcomes[-1].typed(ModelResult).model)
    return model


def _latency_ms(model: torch.nn.Module, work: Path) -> float:
    folded, _ = fold_model(model)
    onnx_path = export_onnx(folded, work / "model.onnx", LATENCY_PACKED)
    tflite = convert_onnx_to_tflite(onnx_path, work / "tflite", None, modes=())
    return tflite_latency_ms(tflite["fp32"], num_threads=2, runs=5)["median_ms"]


def measure(name: str, scale: float, work: Path) -> list[dict[str, Any]]:
    config, train_cfg = MODELS[name]
    train_cfg = {**train_cfg, "steps": max(1, round(train_cfg["steps"] * scale))}
    dense = _train_student(name, config, train_cfg, work).eval()
    held_out = held_out_pairs(load_embedded("eval", seed=0))
    data = PairedPatchDataset(load_embedded("train", seed=0), patch_size=64, patches_per_image=32, seed=0)
    finetune = TrainSpec(**{**train_cfg, "steps": max(1, train_cfg["steps"] // 3), "lr": train_cfg["lr"] / 3},
                         log_every=10_000)
    example = torch.zeros(1, 4, 64, 64)
    base_macs = count_macs(dense, FHD_PACKED)
    rows = []
    for level in LEVELS:
        pruned = copy.deepcopy(dense)
        if level:
            prune_model(pruned, example, PruneTarget(macs_reduction=level))
        quality_pruned = evaluate(pruned, held_out)
        row: dict[str, Any] = {"model": name, "config": config, "target_macs_reduction": level,
                               "params": count_params(pruned), "gmacs_fhd": count_macs(pruned, FHD_PACKED) / 1e9,
                               "macs_reduction": 1 - count_macs(pruned, FHD_PACKED) / base_macs,
                               "psnr_no_finetune": quality_pruned["psnr"], "finetune_steps": finetune.steps}
        for kd_name, weight in (("plain", 0.0), ("kd", 0.5)):
            tuned = copy.deepcopy(pruned)
            kd = Distiller(copy.deepcopy(dense), output_weight=weight) if weight else None  # it freezes its teacher
            train(tuned, data, finetune, seed=1, kd=kd, desc=f"{name} {level:.0%} {kd_name}")
            scores = evaluate(tuned, held_out)
            row[f"psnr_{kd_name}"], row[f"ssim_{kd_name}"] = scores["psnr"], scores["ssim"]
        row["latency_ms_fp32_2t"] = _latency_ms(pruned, work / f"{name}_{level}")
        print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
        rows.append(row)
    for row in rows:  # quality drops against the unpruned model fine-tuned the same way
        for kd_name in ("plain", "kd"):
            row[f"drop_db_{kd_name}"] = rows[0][f"psnr_{kd_name}"] - row[f"psnr_{kd_name}"]
        row["latency_ratio"] = row["latency_ms_fp32_2t"] / rows[0]["latency_ms_fp32_2t"]
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    for ax, name in zip(axes[0], models):
        own = [r for r in rows if r["model"] == name]
        macs = [r["gmacs_fhd"] for r in own]
        for key, label, style in (("psnr_kd", "KD fine-tune", "o-"), ("psnr_plain", "plain fine-tune", "s--"),
                                  ("psnr_no_finetune", "no fine-tune", "x:")):
            ax.plot(macs, [r[key] for r in own], style, label=label)
        for r in own:
            ax.annotate(f"{r['macs_reduction']:.0%}", (r["gmacs_fhd"], r["psnr_kd"]), textcoords="offset points",
                        xytext=(0, 6), fontsize=7, ha="center")
        ax.set_title(f"{name} {own[0]['config']}")
        ax.set_xlabel("GMACs at Full HD")
        ax.set_ylabel("held-out PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def publish_result(result: dict[str, Any]) -> None:
    rows = table(["model", "MACs removed", "params", "GMACs FHD", "PSNR no FT", "PSNR plain FT", "PSNR KD FT",
                  "drop dB KD FT", "fp32 ms (272x480, 2t)", "latency ratio"],
                 ([f"{r['model']} {r['config']}", f"{r['macs_reduction']:.0%}", f"{r['params']:,}",
                   f"{r['gmacs_fhd']:.2f}", f"{r['psnr_no_finetune']:.2f}", f"{r['psnr_plain']:.2f}",
                   f"{r['psnr_kd']:.2f}", f"{r['drop_db_kd']:+.2f}", f"{r['latency_ms_fp32_2t']:.1f}",
                   f"{r['latency_ratio']:.2f}"] for r in result["rows"]))
    intro = paragraph("""
        {measured}, step scale {scale}.  Each student trained once on the embedded data, pruned to each MACs
        budget (L2 magnitude, PixelShuffle rule), then fine-tuned for a third of its training steps at a third
        of the learning rate, with and without output KD from the unpruned model; PSNR on the two whole
        held-out photos.  'drop dB' is against the unpruned model fine-tuned the same way.  Latency: fp32
        TFLite, XNNPACK, 2 threads, median of 5, packed input 272x480.""", measured=measured_on(result), **result)
    intro += "\n\n![PSNR vs MACs](img/prune.png)"
    publish("prune", "Pruning: quality vs MACs and latency", intro, rows, result)


def main() -> None:
    parser = cli(__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every step count")
    args = parser.parse_args()
    setup(ALL_THREADS)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for name in args.models for row in measure(name, args.scale, Path(tmp))]
    result = stamp(scale=args.scale, wall_s=time.perf_counter() - started, rows=rows)
    plot(rows, ROOT / "docs" / "img" / "prune.png")
    publish_result(result)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
