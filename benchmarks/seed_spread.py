"""Does every zoo student train reliably?  Each one trained from several seeds, scored on held-out scenes.

    .venv/bin/python -m benchmarks.seed_spread [--seeds 5] [--steps 600] [--students smallnet lwisp ...] [--merge]
        [--grad-clip 1.0]

A student that collapses in one seed of three (a dead ReLU, a saturated tanh) makes every paired gain measured
on it noise, and a user's single training run a lottery. Per registered student (default configuration):
``--seeds`` runs of ``--steps`` steps (Adam + cosine decay, lr 1e-3, batch 4, 64-px packed crops of the 7
embedded training photos, L1 + 0.2 SSIM; the seed sets the initial weights and the batch order), each scored
by per-image PSNR on the held-out scene set (15 whole images, the training data's sensor), averaged, and on
the 7 training photos whole (``train_photos_psnr``: a seed low on both is under-fitted, one low on the held-out
scenes only over-fitted). Reported: median, min, max and the worst seed's distance below the median; the
target is at most ``TARGET_DB`` below it for every seed. A row is one (student, steps, ``--grad-clip``):
``--merge`` keeps the saved rows of other students and other settings, so a student that needs a longer
schedule (or clipping) shows both.

Writes ``benchmarks/results/seed_spread.json`` and a table in ``docs/benchmarks.md`` (``--out PATH``: the
JSON to PATH only).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import ALL_THREADS, ROOT, cli, measured_on, paragraph, publish, setup, stamp, table
from benchmarks.scoring import per_image_psnr
from distill.data.datasets import PairedPatchDataset
from distill.data.embedded import load_embedded
from distill.data.scenes import load_held_out_scenes
from distill.data.unpaired import embedded_sensor
from distill.trainer import TrainSpec, train
from students import create_student, list_students
from teachers.registry import STUDENTS

TARGET_DB = 0.5
TRAIN: dict[str, Any] = {"lr": 1e-3, "batch_size": 4, "losses": {"l1": 1.0, "ssim": 0.2}}
PATCH, PATCHES_PER_IMAGE = 64, 32


def spread(name: str, seeds: list[int], steps: int, train_pairs: list[Any], held_out: list[Any],
           grad_clip: float | None = None) -> dict[str, Any]:
    runs = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = create_student(name)
        data = PairedPatchDataset(train_pairs, patch_size=PATCH, patches_per_image=PATCHES_PER_IMAGE, seed=seed)
        start = time.perf_counter()
        spec = TrainSpec(steps=steps, **TRAIN, grad_clip=grad_clip, log_every=10_000)
        train(model, data, spec, seed=seed, desc=f"{name} seed {seed}")
        train_s = time.perf_counter() - start
        multiple = STUDENTS.info(name).input_multiple
        # the training photos whole, too: a seed low on both is under-fitted (or dead), low held out only over-fitted
        runs.append({"seed": seed, "psnr": statistics.mean(per_image_psnr(model, held_out, multiple=multiple)),
                     "train_photos_psnr": statistics.mean(per_image_psnr(model, train_pairs, multiple=multiple)),
                     "train_s": train_s})
        print(f"{name:24s} seed {seed}: {runs[-1]['psnr']:.2f} dB held out, "
              f"{runs[-1]['train_photos_psnr']:.2f} dB on the training photos", flush=True)
    psnr = [r["psnr"] for r in runs]
    median = statistics.median(psnr)
    worst = median - min(psnr)
    return {"student": name, "steps": steps, "grad_clip": grad_clip, "runs": runs, "psnr_median": median,
            "psnr_min": min(psnr), "psnr_max": max(psnr), "worst_below_median_db": worst,
            "within_target": worst <= TARGET_DB}


def publish_result(result: dict[str, Any]) -> None:
    def schedule(row: dict[str, Any]) -> str:
        return f"{row['steps']}" + (f", grad clip {row['grad_clip']:g}" if row.get("grad_clip") else "")

    def on_training_photos(runs: list[dict[str, Any]]) -> str:
        if not all("train_photos_psnr" in x for x in runs):
            return "-"  # rows measured before the column existed
        return " / ".join(f"{x['train_photos_psnr']:.2f}" for x in runs)

    header = ["student", "steps", "PSNR dB per seed", "median", "worst seed below median dB", f"within {TARGET_DB} dB",
              "training photos dB per seed"]
    rows = table(header, ([r["student"], schedule(r), " / ".join(f"{x['psnr']:.2f}" for x in r["runs"]),
                           f"{r['psnr_median']:.2f}", f"{r['worst_below_median_db']:.2f}",
                           "yes" if r["within_target"] else "**no**", on_training_photos(r["runs"])]
                          for r in result["rows"]))
    intro = paragraph("""
        {measured}: every zoo student (default configuration) trained from seeds {seeds} for the steps shown
        (Adam, cosine decay from lr 1e-3, batch 4, 64-px packed crops of the 7 embedded training photos, L1 + 0.2
        SSIM), PSNR per image on the held-out scene set ({images} whole images), averaged.  Target: no seed more
        than {target} dB below the student's median.""", measured=measured_on(result), images=len(result["held_out"]),
                      target=TARGET_DB, **result)
    publish("seed_spread", "Seed spread: does every student train reliably?", intro, rows, result)


def main() -> None:
    parser = cli(__doc__)
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0 .. N-1)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--students", nargs="+", default=None, help="default: every registered student")
    parser.add_argument("--grad-clip", type=float, default=None,
                        help="clip the gradients' global norm (TrainSpec.grad_clip); recorded per row")
    parser.add_argument("--merge", action="store_true", help="keep the saved rows of students not run now")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here; docs and results untouched")
    args = parser.parse_args()
    setup(ALL_THREADS)
    seeds, names = list(range(args.seeds)), args.students or list_students()
    train_pairs = load_embedded("train", seed=0)
    held_out = load_held_out_scenes(seed=0, sensor=embedded_sensor(0))
    started = time.perf_counter()
    rows = []
    saved = ROOT / "benchmarks" / "results" / "seed_spread.json"
    if args.merge and saved.is_file():
        old = json.loads(saved.read_text())
        if old["seeds"] == seeds:
            rows = [r for r in old["rows"] if r["student"] not in names
                    or (r["steps"], r.get("grad_clip")) != (args.steps, args.grad_clip)]
    for name in names:
        rows.append(spread(name, seeds, args.steps, train_pairs, held_out, args.grad_clip))
        result = stamp(seeds=seeds, steps=sorted({r["steps"] for r in rows}), train=TRAIN, target_db=TARGET_DB,
                       device="cpu", held_out=[p.name for p in held_out], wall_s=time.perf_counter() - started,
                       rows=sorted(rows, key=lambda r: (r["student"], r["steps"], r.get("grad_clip") or 0)))
        if args.out is not None:
            args.out.write_text(json.dumps(result, indent=2))
        else:
            publish_result(result)  # after every student: a long run keeps what it measured
    print(json.dumps([{k: r[k] for k in ("student", "psnr_median", "worst_below_median_db")} for r in rows], indent=2))


if __name__ == "__main__":
    main()
