"""Does distillation help?  The same student trained with and without each distillation kind.

    .venv/bin/python -m benchmarks.distill_gain [--seeds 0 1 2] [--scale 1.0] [--groups smallnet lwisp aaunet]

Each group trains its teacher once, through the built-in recipe that defines it (``run_until: teacher``,
seed 0), then trains the student from scratch for every seed with and without the distillation terms:
same steps, learning rate, batch, crops (the dataset is seeded by the run's seed) and initial weights.
Held-out quality is PSNR / SSIM on the two embedded held-out photos (whole images, centre-cropped to a
multiple of 32 packed pixels).  Reported per variant: mean and sample standard deviation over seeds,
and the gain over the group's baseline, paired by seed (mean +- std of the per-seed differences).

Groups and variants:

* ``smallnet``: Smallnet (width 16) from PUNET (output KD, the quickstart's) and from PyNET (output KD,
  feature KD act2 <- conv_l1_d14 through a 1x1 adapter, both);
* ``lwisp``: LW-ISP with L1 + 0.4 MS-SSIM, and + beta * L_d from the clean-image teacher run on J
  (heterogeneous KD, pairs up2/up3/up4 <- up1/up2/up3, the LW-ISP paper's setting);
* ``aaunet``: the AA-UNet student, and + level-wise soft labels (L1 on every U-Net level, CASIA).

``--scale`` multiplies every step count (teachers and students).  Writes
``benchmarks/results/distill_gain.json`` and a table in ``docs/benchmarks.md``.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import ALL_THREADS, cli, measured_on, paragraph, publish, setup, stamp, table
from compress.checkpoint import load_model
from distill.adapters import FeaturePair
from distill.data.datasets import PairedPatchDataset
from distill.data.embedded import load_embedded
from distill.distiller import Distiller
from distill.evaluation import evaluate
from distill.metrics import centre_crop_to_multiple
from distill.trainer import TrainSpec, train
from recipes.loader import load_recipe
from recipes.results import ModelResult
from recipes.runner import run_recipe
from students import create_student


@dataclass
class Variant:
    name: str
    kd: dict[str, Any] | None = None  # Distiller keyword arguments (pairs as (student, teacher, loss))
    teacher: str | None = None  # key into the group's teachers


@dataclass
class Group:
    student: str
    config: dict[str, Any]
    train: dict[str, Any]
    teachers: dict[str, tuple[str, list[str]]]  # key -> (recipe, overrides) trained with run_until=teacher
    variants: list[Variant] = field(default_factory=list)


def _groups(scale: float) -> dict[str, Group]:
    steps = lambda n: max(1, round(n * scale))  # noqa: E731
    levels = "[" + ",".join(f"{{level: {k}, train: {{steps: {steps(80)}, lr: 1.0e-3, batch_size: 4, "
                            f"losses: {{mse: 1.0}}}}}}" for k in range(5, 0, -1))
    levels += (f",{{level: 0, train: {{steps: {steps(200)}, lr: 5.0e-4, batch_size: 4, "
               f"losses: {{mse: 1.0, ms_ssim: 0.4}}}}}}]")
    feature = [("act2", "conv_l1_d14", "mse")]
    return {
        "smallnet": Group(
            "smallnet", {"width": 16},
            {"steps": steps(1000), "lr": 3e-3, "batch_size": 4, "losses": {"l1": 1.0, "ssim": 0.2}},
            {"punet": ("quickstart", [f"teacher.train.steps={steps(1500)}"]),
             "pynet": ("smallnet_from_pynet", [f"teacher.levels={levels}"])},
            [Variant("baseline"),
             Variant("output KD (PUNET)", {"output_weight": 0.5, "output_loss": "l1"}, "punet"),
             Variant("output KD (PyNET)", {"output_weight": 0.5, "output_loss": "l1"}, "pynet"),
             Variant("feature KD (PyNET)", {"pairs": feature, "feature_weight": 0.1}, "pynet"),
             Variant("output + feature KD (PyNET)", {"output_weight": 0.5, "pairs": feature, "feature_weight": 0.1},
                     "pynet")]),
        "lwisp": Group(
            "lwisp", {"width": 0.25}, {"steps": steps(800), "lr": 1e-3, "batch_size": 4,
                                       "losses": {"l1": 1.0, "ms_ssim": 0.4}},
            {"clean": ("lwisp_hetero_kd", [f"teacher.train.steps={steps(600)}", "teacher.config.width=0.25"])},
            [Variant("baseline (L_r + 0.4 L_s)"),
             Variant("heterogeneous KD (+ L_d, beta 1)", {
                 "pairs": [("up2", "up1", "mse"), ("up3", "up2", "mse"), ("up4", "up3", "mse")],
                 "feature_weight": 1.0, "teacher_input": "target"}, "clean")]),
        "aaunet": Group(
            "aaunet_student", {"base_width": 8}, {"steps": steps(800), "lr": 1e-3, "batch_size": 4,
                                                  "losses": {"mse": 1.0, "ssim": 0.4}},
            {"aaunet": ("aaunet_teacher", [f"teacher.train.steps={steps(1000)}"])},
            [Variant("baseline"),
             Variant("level-wise soft labels (L1)", {"pairs": None, "feature_loss": "l1", "feature_weight": 1.0},
                     "aaunet")]),
    }


def _train_teacher(recipe: str, overrides: list[str], work: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    spec, path = load_recipe(recipe, ["run_until=teacher", "seed=0", *overrides])
    _, outcomes = run_recipe(spec, path, work / recipe)
    teacher = outcomes[0]
    model, model_spec = load_model(teacher.typed(ModelResult).model)
    summary = {"recipe": recipe, "model": model_spec.name, "config": model_spec.config, "seconds": teacher.seconds,
               "psnr_initial": teacher.metrics["psnr_initial"], "psnr": teacher.metrics["psnr"],
               "ssim": teacher.metrics["ssim"]}
    return model.eval(), summary


def held_out_pairs(pairs: list[Any], multiple: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Whole held-out images centre-cropped to a multiple of 32 packed pixels (every model accepts that)."""
    return [centre_crop_to_multiple(torch.from_numpy(p.raw), torch.from_numpy(p.rgb), multiple) for p in pairs]


def run_group(group: Group, seeds: list[int], work: Path, teacher_log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    teachers = {}
    for key, (recipe, overrides) in group.teachers.items():
        teachers[key], summary = _train_teacher(recipe, overrides, work)
        teacher_log.append(summary)
    train_pairs, held_out = load_embedded("train", seed=0), held_out_pairs(load_embedded("eval", seed=0))
    spec = TrainSpec(**group.train, log_every=10_000)
    rows: list[dict[str, Any]] = []
    for variant in group.variants:
        scores = []
        for seed in seeds:
            torch.manual_seed(seed)
            student = create_student(group.student, **group.config)
            kd = None
            if variant.kd is not None:
                options = dict(variant.kd)
                if options.get("pairs") is not None:
                    options["pairs"] = [FeaturePair(*p) for p in options["pairs"]]
                assert variant.teacher is not None  # every KD variant above names its teacher
                kd = Distiller(teachers[variant.teacher], **options)
            data = PairedPatchDataset(train_pairs, patch_size=64, patches_per_image=32, seed=seed)
            start = time.perf_counter()
            train(student, data, spec, seed=seed, kd=kd, desc=f"{group.student} {variant.name} seed {seed}")
            scores.append({"seed": seed, **evaluate(student, held_out), "train_s": time.perf_counter() - start})
            print(f"{group.student:16s} {variant.name:32s} seed {seed}: {scores[-1]['psnr']:.2f} dB", flush=True)
        rows.append({"student": group.student, "config": group.config, "variant": variant.name,
                     "teacher": variant.teacher, "steps": spec.steps, "runs": scores})
    base = {r["seed"]: r for r in rows[0]["runs"]}
    for row in rows:
        psnr = [r["psnr"] for r in row["runs"]]
        ssim = [r["ssim"] for r in row["runs"]]
        gain = [r["psnr"] - base[r["seed"]]["psnr"] for r in row["runs"]]
        row.update(psnr_mean=statistics.mean(psnr), psnr_std=_std(psnr), ssim_mean=statistics.mean(ssim),
                   ssim_std=_std(ssim), gain_db_mean=statistics.mean(gain), gain_db_std=_std(gain))
    return rows


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def publish_result(result: dict[str, Any]) -> None:
    rows = table(["teacher (recipe)", "config", "train s", "held-out PSNR before -> after training"],
                 ([f"{t['model']} ({t['recipe']})", t["config"], f"{t['seconds']:.0f}",
                   f"{t['psnr_initial']:.2f} -> {t['psnr']:.2f}"] for t in result["teachers"]))
    rows += ["", *table(["student", "variant", "teacher", "steps", "PSNR dB (mean +- std)", "SSIM",
                         "gain dB vs baseline (paired)"],
                        ([f"{r['student']} {r['config']}", r["variant"], r["teacher"] or "-", r["steps"],
                          f"{r['psnr_mean']:.2f} +- {r['psnr_std']:.2f}",
                          f"{r['ssim_mean']:.4f} +- {r['ssim_std']:.4f}",
                          f"{r['gain_db_mean']:+.2f} +- {r['gain_db_std']:.2f}"] for r in result["rows"]))]
    intro = paragraph("""
        {measured}, seeds {seeds}, step scale {scale}.  Each teacher trained once by its built-in recipe
        (seed 0); each student from scratch per seed with identical data, steps and initial weights, with
        and without the distillation terms (batch 4, 64-px packed crops, Adam + cosine decay).  PSNR/SSIM on
        the two embedded held-out photos.  CPU-sized models and step counts: these are short runs on 7
        training photos, so read the gains with their spread; the LW-ISP paper's +0.12 dB (21.28 -> 21.40
        dB, Zurich, full width, converged) is not what a run of this size can show.""",
                      measured=measured_on(result), **result)
    publish("distill_gain", "Distillation gain: the same student with and without each kind", intro, rows, result)


def main() -> None:
    parser = cli(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every step count")
    parser.add_argument("--groups", nargs="+", default=None, choices=["smallnet", "lwisp", "aaunet"])
    args = parser.parse_args()
    setup(ALL_THREADS)
    groups = _groups(args.scale)
    names = args.groups or list(groups)
    started = time.perf_counter()
    teachers: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for name in names for row in run_group(groups[name], args.seeds, Path(tmp), teachers)]
    result = stamp(seeds=args.seeds, scale=args.scale, device="cpu", wall_s=time.perf_counter() - started,
                   teachers=teachers, rows=rows)
    publish_result(result)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()
