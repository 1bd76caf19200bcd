"""Does distillation pay?  The same student trained alone and with each distillation method.

    .venv/bin/python -m benchmarks.distill_gain [--seeds 5] [--scale 1.0] [--groups smallnet lwisp]
        [--cache DIR] [--out result.json]

**Teachers that are better than their students.**  Each teacher is trained once (seed 0, its own steps,
cached in ``--cache`` under a hash of everything that defines it; the first run's training time is
reported) and scored on the held-out set like the students.  A RAW teacher whose held-out PSNR is not
at least ``TEACHER_MARGIN_DB`` above the student baseline's mean cannot be expected to help: its rows
are listed, but carry ``gain_db_mean: null`` and a ``refused`` reason instead of a
gain.  (The clean-image teacher of heterogeneous KD sees the target J, so its score is its J -> J
reconstruction and the rule compares that.)  The baseline runs first; a refused teacher's variants
are not trained at all.

**Students.**  For every seed each variant starts from the same initial weights, sees the same paired
batches and trains the same number of steps as the group's baseline (``train()`` seeds the data stream
and the global RNG; a distiller's adapters and the once-for-all head draw from their own generators).

**Evaluation that can resolve 0.1 dB.**  PSNR per image on the fixed held-out scene set
(``distill.data.scenes``: 5 photos, none a training photo, x 3 renderings with the training data's
sensor and their own white balance, exposure and noise, whole images), averaged per run.  A gain is
paired by seed (variant minus baseline, same seed), reported as the mean over seeds with its 95 %
confidence interval (Student's t).

Groups and variants:

* ``smallnet`` (Smallnet width 16, 4.6 K parameters; teacher PUNET width 8, 3000 steps at lr 3e-4):
  output KD; output KD + unpaired RAW (the teacher labels extra RAW renderings of the training
  scenes, ``distill.data.unpaired``); once-for-all (ENERZAI, no teacher);
* ``smallnet_ofa``: once-for-all with later detach thresholds (25.5 and 27 dB: the head stays longer);
* ``smallnet_ofa_long``: the same student for 2000 steps alone, with once-for-all (detach at 26 dB), and with
  once-for-all whose detached super-network then teaches the fine-tune on the paired crops and on unpaired
  RAW (``OnceForAll(distill=...)``: no separate teacher);
* ``smallnet_hetero``: the LW-ISP paper's heterogeneous clean-image KD on Smallnet: the teacher is
  Smallnet's body on J -> J (``smallnet_clean``, the paper's Eq. 7 loss), its hidden layers ``act1``,
  ``act2`` (at 2H) matched by the student's (at H, through adapters), the same beta sweep;
* ``smallnet_wide``: the same student and KD variants taught by ``smallnet_wide`` (Smallnet at width 64,
  46 K parameters), 3000 steps at lr 1e-3: more capacity with the same local receptive field;
* ``lwisp`` (LW-ISP width 0.25; teacher the clean-image LW-ISP body on J): heterogeneous KD (up2/up3/
  up4 <- up1/up2/up3, the paper's setting) at several beta (the paper's Fig. 6 sweep), with the
  paper's L2 and with normalised L2 (``nmse``: each feature map scaled to unit RMS first);
* ``aaunet`` (AA-UNet student width 8; teacher AA-UNet width 8): level-wise soft labels (L1).

``--scale`` multiplies every step count (teachers and students).  Writes
``benchmarks/results/distill_gain.json``, a table in ``docs/benchmarks.md`` and the beta sweep plot
``docs/images/hetero_kd_beta.svg``; ``--out PATH`` writes the JSON to PATH and leaves those alone.
"""
from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import ALL_THREADS, ROOT, cli, mean_ci95, measured_on, paragraph, publish, setup, stamp, table
from benchmarks.scoring import per_image_psnr
from distill.adapters import FeaturePair
from distill.data.datasets import PairedPatchDataset
from distill.data.embedded import load_embedded
from distill.data.scenes import load_held_out_scenes
from distill.data.unpaired import UnpairedRaw, embedded_sensor
from distill.distiller import Distiller
from distill.evaluation import Task
from distill.metrics import centre_crop_to_multiple
from distill.once_for_all import OnceForAll
from distill.trainer import TrainSpec, train
from students import create_student
from teachers.registry import STUDENTS, TEACHERS

PATCH, PATCHES_PER_IMAGE = 64, 32  # packed-RAW training crops
TEACHER_MARGIN_DB = 0.5
"""A teacher must beat the student baseline's held-out PSNR by this much before a KD gain is reported."""
DEFAULT_CACHE = Path.home() / ".cache" / "ispdc" / "distill_gain"
PLOT = ROOT / "docs" / "images" / "hetero_kd_beta.svg"


@dataclass
class TeacherSpec:
    model: str
    config: dict[str, Any]
    train: dict[str, Any]
    clean_image: bool = False  # trained and scored on J -> J (the LW-ISP clean-image teacher)


@dataclass
class Variant:
    name: str
    method: str  # the method's family, for the docs' "which method when" (baseline, output_kd, ...)
    kd: dict[str, Any] | None = None  # Distiller keyword arguments (pairs as (student, teacher, loss))
    unpaired: dict[str, Any] | None = None  # {"weight": w, "batch": n}: output KD on unpaired RAW too
    # (with ofa: the detached super-net labels it; its batch is ofa["unpaired_batch"])
    ofa: dict[str, Any] | None = None  # OnceForAll keyword arguments (trunk_tap from the student)
    beta: float | None = None  # the heterogeneous loss weight, for the sweep plot


@dataclass
class Group:
    student: str
    config: dict[str, Any]
    train: dict[str, Any]
    teacher: TeacherSpec | None
    variants: list[Variant] = field(default_factory=list)


HETERO_PAIRS = [("up2", "up1"), ("up3", "up2"), ("up4", "up3")]
HETERO_BETAS = {"mse": (0.1, 0.3, 1.0), "nmse": (0.3,)}  # nmse terms start near 1, L2 ones far lower


SMALLNET_HETERO_PAIRS = [("act1", "act1"), ("act2", "act2")]  # the hidden layers: student at H, teacher at 2H


def _hetero(beta: float, loss: str, pairs: list[tuple[str, str]] = HETERO_PAIRS) -> Variant:
    label = "L2" if loss == "mse" else "normalised L2"
    return Variant(f"heterogeneous KD ({label}, beta {beta:g})", f"hetero_{loss}",
                   {"pairs": [(s, t, loss) for s, t in pairs], "feature_weight": beta,
                    "teacher_input": "target"}, beta=beta)


def groups(scale: float) -> dict[str, Group]:
    steps = lambda n: max(1, round(n * scale))  # noqa: E731
    smallnet_loss = {"l1": 1.0, "ssim": 0.2}
    return {
        "smallnet": Group(
            "smallnet", {"width": 16}, {"steps": steps(1000), "lr": 3e-3, "batch_size": 4, "losses": smallnet_loss},
            TeacherSpec("punet", {"base_width": 8}, {"steps": steps(3000), "lr": 3e-4, "batch_size": 4,
                                                     "losses": smallnet_loss}),
            [Variant("alone", "baseline"),
             Variant("output KD", "output_kd", {"output_weight": 0.5, "output_loss": "l1"}),
             Variant("output KD + unpaired RAW", "unpaired_kd", {"output_weight": 0.5, "output_loss": "l1"},
                     unpaired={"weight": 1.0, "batch": 8}),
             Variant("once-for-all", "once_for_all", ofa={"threshold_db": 24.0, "head_width": 16, "blocks": 2})]),
        "smallnet_ofa": Group(
            "smallnet", {"width": 16}, {"steps": steps(1000), "lr": 3e-3, "batch_size": 4, "losses": smallnet_loss},
            None,
            [Variant("alone", "baseline"),
             *(Variant(f"once-for-all (detach at {db:g} dB)", "once_for_all",
                       ofa={"threshold_db": db, "head_width": 16, "blocks": 2}) for db in (25.5, 27.0))]),
        "smallnet_ofa_long": Group(
            "smallnet", {"width": 16}, {"steps": steps(2000), "lr": 3e-3, "batch_size": 4, "losses": smallnet_loss},
            None,
            [Variant("alone", "baseline"),
             Variant("once-for-all (detach at 26 dB)", "once_for_all",
                     ofa={"threshold_db": 26.0, "head_width": 16, "blocks": 2}),
             Variant("once-for-all + detached super-net KD + unpaired RAW", "once_for_all_kd",
                     ofa={"threshold_db": 26.0, "head_width": 16, "blocks": 2, "distill": 1.0,
                          "unpaired_batch": 8}, unpaired={"weight": 1.0, "batch": 8})]),
        "smallnet_hetero": Group(
            "smallnet", {"width": 16}, {"steps": steps(1000), "lr": 3e-3, "batch_size": 4, "losses": smallnet_loss},
            TeacherSpec("smallnet_clean", {"width": 16}, {"steps": steps(1500), "lr": 1e-3, "batch_size": 4,
                                                          "losses": {"mse": 1.0, "ms_ssim": 0.4}}, clean_image=True),
            [Variant("alone", "baseline"),
             *(_hetero(beta, loss, SMALLNET_HETERO_PAIRS) for loss, betas in HETERO_BETAS.items() for beta in betas)]),
        "smallnet_wide": Group(
            "smallnet", {"width": 16}, {"steps": steps(1000), "lr": 3e-3, "batch_size": 4, "losses": smallnet_loss},
            TeacherSpec("smallnet_wide", {"width": 64}, {"steps": steps(3000), "lr": 1e-3, "batch_size": 4,
                                                         "losses": smallnet_loss}),
            [Variant("alone", "baseline"),
             Variant("output KD", "output_kd", {"output_weight": 0.5, "output_loss": "l1"}),
             Variant("output KD + unpaired RAW", "unpaired_kd", {"output_weight": 0.5, "output_loss": "l1"},
                     unpaired={"weight": 1.0, "batch": 8})]),
        "lwisp": Group(
            "lwisp", {"width": 0.25}, {"steps": steps(800), "lr": 1e-3, "batch_size": 4,
                                       "losses": {"l1": 1.0, "ms_ssim": 0.4}},
            TeacherSpec("lwisp_clean", {"width": 0.25}, {"steps": steps(3000), "lr": 1e-3, "batch_size": 4,
                                                         "losses": {"mse": 1.0, "ms_ssim": 0.4}}, clean_image=True),
            [Variant("alone (L_r + 0.4 L_s)", "baseline"),
             *(_hetero(beta, loss) for loss, betas in HETERO_BETAS.items() for beta in betas)]),
        "aaunet": Group(
            "aaunet_student", {"base_width": 8}, {"steps": steps(800), "lr": 1e-3, "batch_size": 4,
                                                  "losses": {"mse": 1.0, "ssim": 0.4}},
            TeacherSpec("aaunet", {"base_width": 8}, {"steps": steps(3000), "lr": 1e-3, "batch_size": 4,
                                                      "losses": {"mse": 1.0, "ssim": 0.4}}),
            [Variant("alone", "baseline"),
             Variant("level-wise soft labels (L1)", "levelwise_kd",
                     {"pairs": None, "feature_loss": "l1", "feature_weight": 1.0})]),
    }


def held_out_pairs(pairs: list[Any], multiple: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Whole held-out images centre-cropped to a multiple of 32 packed pixels (every model accepts that)."""
    return [centre_crop_to_multiple(torch.from_numpy(p.raw), torch.from_numpy(p.rgb), multiple) for p in pairs]


def _teacher(spec: TeacherSpec, cache: Path, train_pairs: list[Any], held_out: list[Any]
             ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The teacher trained once (seed 0) or loaded from ``cache``, and its summary (held-out PSNR, cost)."""
    key = json.dumps([spec.model, spec.config, spec.train, spec.clean_image, PATCH, PATCHES_PER_IMAGE], sort_keys=True)
    stem = cache / f"{spec.model}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    torch.manual_seed(0)
    model = TEACHERS.create(spec.model, **spec.config)
    task = Task(clean_image=spec.clean_image)
    weights, info = stem.with_suffix(".pt"), stem.with_suffix(".json")
    if weights.is_file() and info.is_file():
        model.load_state_dict(torch.load(weights))
        train_s, cached = json.loads(info.read_text())["train_s"], True
    else:
        data = PairedPatchDataset(train_pairs, patch_size=PATCH, patches_per_image=PATCHES_PER_IMAGE, seed=0)
        start = time.perf_counter()
        train(model, data, TrainSpec(**spec.train, log_every=10_000), seed=0, task=task, desc=f"teacher {spec.model}")
        train_s, cached = time.perf_counter() - start, False
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), weights)
        info.write_text(json.dumps({"train_s": train_s, "key": key}))
    scores = per_image_psnr(model, held_out, task)
    summary = {"model": spec.model, "config": spec.config, "steps": spec.train["steps"], "input": "J" if
               spec.clean_image else "RAW", "train_s": train_s, "cached": cached,
               "psnr": statistics.mean(scores), "per_image": scores}
    print(f"teacher {spec.model} {spec.config}: {summary['psnr']:.2f} dB held-out ({train_s:.0f} s to train)",
          flush=True)
    return model.eval(), summary


def _run(group: Group, variant: Variant, seed: int, teacher: torch.nn.Module | None, train_pairs: list[Any],
         held_out: list[Any]) -> dict[str, Any]:
    torch.manual_seed(seed)
    student = create_student(group.student, **group.config)
    kd = ofa = None
    if variant.kd is not None:
        assert teacher is not None, f"{variant.name} needs the group's teacher"
        options = dict(variant.kd)
        if options.get("pairs") is not None:
            options["pairs"] = [FeaturePair(*p) for p in options["pairs"]]
        if variant.unpaired is not None:
            options.update(unpaired=UnpairedRaw(train_pairs, PATCH, seed=seed, sensor=embedded_sensor(0)),
                           unpaired_weight=variant.unpaired["weight"], unpaired_batch=variant.unpaired["batch"])
        kd = Distiller(teacher, **options)
    if variant.ofa is not None:
        tap = STUDENTS.info(group.student).trunk_tap
        assert tap is not None, f"{group.student} declares no trunk_tap"
        unpaired = UnpairedRaw(train_pairs, PATCH, seed=seed, sensor=embedded_sensor(0)) if variant.unpaired else None
        ofa = OnceForAll(tap, **variant.ofa, seed=seed, unpaired=unpaired)
    data = PairedPatchDataset(train_pairs, patch_size=PATCH, patches_per_image=PATCHES_PER_IMAGE, seed=seed)
    start = time.perf_counter()
    train(student, data, TrainSpec(**group.train, log_every=10_000), seed=seed, kd=kd, ofa=ofa,
          desc=f"{group.student} {variant.name} seed {seed}")
    train_s = time.perf_counter() - start
    scores = per_image_psnr(student, held_out)
    run = {"seed": seed, "psnr": statistics.mean(scores), "per_image": scores, "train_s": train_s}
    if ofa is not None:
        run["ofa_detached_step"] = int(ofa.summary()["ofa_detached_step"])
    print(f"{group.student:16s} {variant.name:40s} seed {seed}: {run['psnr']:.2f} dB", flush=True)
    return run


def run_group(name: str, group: Group, seeds: list[int], scale: float, cache: Path, train_pairs: list[Any],
              held_out: list[Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    teacher, summary = _teacher(group.teacher, cache, train_pairs, held_out) if group.teacher else (None, None)
    if summary is not None:
        summary.update(group=name, scale=scale)
    rows: list[dict[str, Any]] = []
    baseline_psnr: float | None = None
    base: dict[int, float] = {}
    for variant in group.variants:  # the first variant is the baseline: it decides whether the teacher may teach
        uses_teacher = variant.kd is not None
        row = {"group": name, "student": group.student, "config": group.config, "variant": variant.name,
               "method": variant.method, "beta": variant.beta,
               "teacher": f"{summary['model']} {summary['config']}" if uses_teacher and summary else None,
               "teacher_psnr": summary["psnr"] if uses_teacher and summary else None, "baseline_psnr": baseline_psnr,
               "steps": group.train["steps"], "scale": scale, "seeds": seeds, "refused": None}
        weak = summary is not None and baseline_psnr is not None and summary["psnr"] < baseline_psnr + TEACHER_MARGIN_DB
        if uses_teacher and summary and weak:
            # not trained: a gain from a teacher worse than the student alone would be noise or a loss
            row.update(refused=f"teacher {summary['psnr']:.2f} dB does not beat the student alone "
                               f"({baseline_psnr:.2f} dB) by {TEACHER_MARGIN_DB} dB", runs=[], gain_db_mean=None,
                       gain_db_ci95=None)
            print(f"{group.student:16s} {variant.name:40s} refused: {row['refused']}", flush=True)
            rows.append(row)
            continue
        row["runs"] = [_run(group, variant, seed, teacher if uses_teacher else None, train_pairs, held_out)
                       for seed in seeds]
        if baseline_psnr is None:
            baseline_psnr = row["baseline_psnr"] = statistics.mean(r["psnr"] for r in row["runs"])
            base = {r["seed"]: r["psnr"] for r in row["runs"]}
        psnr = [r["psnr"] for r in row["runs"]]
        gain = mean_ci95([r["psnr"] - base[r["seed"]] for r in row["runs"]])
        row.update(psnr_mean=statistics.mean(psnr), psnr_min=min(psnr), psnr_max=max(psnr),
                   psnr_median=statistics.median(psnr), gain_db_mean=gain["mean"],
                   gain_db_ci95=[gain["ci95_low"], gain["ci95_high"]], gain_db_std=gain["std"])
        rows.append(row)
    return summary, rows


def rows_of(rows: list[dict[str, Any]], group: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["group"] == group]


def plot_beta_sweep(rows: list[dict[str, Any]], path: Path) -> None:
    """Gain vs beta with its 95 % interval, one line per feature loss (the LW-ISP paper's Fig. 6)."""
    import matplotlib  # noqa: PLC0415  (only the publishing run needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    lines = sorted({(r["group"], r["method"]) for r in rows if r["method"].startswith("hetero")})
    for group, method in lines:
        label = f"{rows_of(rows, group)[0]['student']}, {'L2 (paper)' if method == 'hetero_mse' else 'normalised L2'}"
        points = sorted((r["beta"], r["gain_db_mean"], r["gain_db_ci95"]) for r in rows_of(rows, group)
                        if r["method"] == method and r["gain_db_mean"] is not None)
        if not points:
            continue
        betas, means = [p[0] for p in points], [p[1] for p in points]
        errors = [[m - p[2][0] for m, p in zip(means, points, strict=True)],
                  [p[2][1] - m for m, p in zip(means, points, strict=True)]]
        ax.errorbar(betas, means, yerr=errors, marker="o", capsize=3, label=label)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set(xscale="log", xlabel="beta (weight of L_d)", ylabel="gain over the student alone (dB)",
           title="Heterogeneous KD: beta sweep (95 % CI over seeds)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)


def _gain(row: dict[str, Any]) -> str:
    if row["method"] == "baseline":
        return "-"
    if row["gain_db_mean"] is None:
        return f"not reported: {row['refused']}"
    low, high = row["gain_db_ci95"]
    return f"{row['gain_db_mean']:+.2f} [{low:+.2f}, {high:+.2f}]"


def publish_result(result: dict[str, Any]) -> None:
    rows = table(["teacher", "input", "steps", "train s", "held-out PSNR dB"],
                 ([f"{t['model']} {t['config']}", t["input"], t["steps"], f"{t['train_s']:.0f}", f"{t['psnr']:.2f}"]
                  for t in result["teachers"]))
    rows += ["", *table(["student", "variant", "teacher", "steps", "PSNR dB mean (min - max)",
                         "gain dB vs alone, mean [95 % CI]"],
                        ([f"{r['student']} {r['config']}", r["variant"], r["teacher"] or "-", r["steps"],
                          f"{r['psnr_mean']:.2f} ({r['psnr_min']:.2f} - {r['psnr_max']:.2f})" if r["runs"] else
                          "not trained", _gain(r)]
                         for r in result["rows"]))]
    if any(r["method"].startswith("hetero") for r in result["rows"]):
        rows += ["", f"![heterogeneous KD beta sweep](images/{PLOT.name})"]
    intro = paragraph("""
        {measured}, seeds {seeds}.  Each teacher trained once (seed 0, cached); each student
        from scratch per seed with the same initial weights, batches and steps in every variant (batch 4,
        64-px packed crops of the 7 embedded training photos, Adam + cosine decay).  PSNR per image on the
        held-out scene set ({images} whole images: 5 photos none of which is a training photo x 3 renderings),
        averaged; the gain is paired by seed, with its 95 % interval from Student's t over seeds.  A KD row
        whose teacher does not beat the student alone by {margin} dB reports no gain.""",
                      measured=measured_on(result), images=len(result["held_out"]), margin=TEACHER_MARGIN_DB,
                      **result)
    publish("distill_gain", "Distillation gain: the same student alone and with each method", intro, rows, result)
    plot_beta_sweep(result["rows"], PLOT)


def main() -> None:
    parser = cli(__doc__)
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0 .. N-1); 5 or more for a CI")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every step count")
    parser.add_argument("--groups", nargs="+", default=["smallnet", "lwisp"], choices=list(groups(1.0)))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder the trained teachers are kept in")
    parser.add_argument("--merge", action="store_true", help="keep the saved rows of groups not run now")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here; docs and results untouched")
    args = parser.parse_args()
    setup(ALL_THREADS)
    seeds = list(range(args.seeds))
    all_groups = groups(args.scale)
    train_pairs = load_embedded("train", seed=0)
    held_out = load_held_out_scenes(seed=0, sensor=embedded_sensor(0))
    started = time.perf_counter()
    teachers, rows = [], []
    for name in args.groups:
        summary, group_rows = run_group(name, all_groups[name], seeds, args.scale, args.cache, train_pairs, held_out)
        teachers += [summary] if summary else []
        rows += group_rows
    saved = ROOT / "benchmarks" / "results" / "distill_gain.json"
    if args.merge and saved.is_file():
        old = json.loads(saved.read_text())
        if old.get("seeds") == seeds and old.get("held_out") == [p.name for p in held_out]:  # step scale: per row
            keep = {r["group"] for r in old["rows"] if r.get("group") not in args.groups}
            rows = [r for r in old["rows"] if r.get("group") in keep] + rows
            teachers = [t for t in old["teachers"] if t.get("group") in keep] + teachers
    result = stamp(seeds=seeds, scale=args.scale, device="cpu", wall_s=time.perf_counter() - started,
                   teacher_margin_db=TEACHER_MARGIN_DB, held_out=[p.name for p in held_out],
                   teachers=teachers, rows=rows)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    else:
        publish_result(result)
    print(json.dumps([{k: r.get(k) for k in ("student", "variant", "psnr_mean", "gain_db_mean", "gain_db_ci95")}
                      for r in rows], indent=2))


if __name__ == "__main__":
    main()
