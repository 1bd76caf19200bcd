"""Does once-for-all training help?  The same sub-net trained alone and with a detachable super-net head.

    .venv/bin/python -m benchmarks.once_for_all [--student smallnet] [--steps 1000] [--seeds 5]
        [--threshold-db 23] [--head-width 16] [--blocks 2] [--weight 1.0] [--out result.json]

ENERZAI Research's scheme (MAI 2021 report, seed 001, Sec. 4.4; ``distill.once_for_all``): the student's
trunk also feeds a super-net head of residual dense blocks; both train jointly on the student's loss
until the super-net's training PSNR (moving average) reaches ``--threshold-db``, then the head is
dropped and the sub-net fine-tunes alone.  Per seed, both arms start from the same initial weights and
see the same batches for the same total number of steps (``train()`` seeds the data stream and the
global RNG; the head draws its init from its own generator), so the difference is the scheme alone.

Held-out quality is per-image PSNR on the fixed held-out scene set (``distill.data.scenes``: 5 photos
none of which is a training photo, x 3 camera renderings, whole images).  The gain is paired by seed
(once-for-all minus alone, mean over the images), reported with its 95 % confidence interval over
seeds (Student's t).  The issue's done-when: the interval lies above zero.

Writes ``benchmarks/results/once_for_all.json`` and a table in ``docs/benchmarks.md``; ``--out PATH``
writes the result JSON to PATH instead and leaves both alone (smoke runs).
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import ALL_THREADS, cli, mean_ci95, measured_on, paragraph, publish, setup, stamp, table
from distill.data.datasets import PairedPatchDataset
from distill.data.embedded import load_embedded
from distill.data.scenes import load_held_out_scenes
from distill.evaluation import evaluate
from distill.once_for_all import OnceForAll
from distill.trainer import TrainSpec, resolve_device, train
from students import create_student
from teachers.registry import STUDENTS

LOSSES = {"l1": 1.0, "ssim": 0.2}  # the quickstart student's loss
PATCH, PATCHES_PER_IMAGE = 64, 32  # packed-RAW crops, as benchmarks.distill_gain


def per_image_psnr(model: torch.nn.Module, pairs: list[Any]) -> list[float]:
    """Held-out PSNR of every image on its own (whole images; the scene set is cut to a multiple of 16)."""
    return [evaluate(model, [(torch.from_numpy(p.raw), torch.from_numpy(p.rgb))])["psnr"] for p in pairs]


def run_seed(args: Any, seed: int, train_pairs: list[Any], held_out: list[Any]) -> dict[str, Any]:
    torch.manual_seed(seed)
    alone = create_student(args.student, **args.config)
    joint = copy.deepcopy(alone)  # the same initial weights in both arms
    spec = TrainSpec(steps=args.steps, lr=args.lr, batch_size=args.batch_size, losses=LOSSES, log_every=10_000)
    data = lambda: PairedPatchDataset(train_pairs, patch_size=PATCH, patches_per_image=PATCHES_PER_IMAGE,  # noqa: E731
                                      seed=seed)
    start = time.perf_counter()
    train(alone, data(), spec, seed=seed, desc=f"{args.student} alone seed {seed}")
    alone_s = time.perf_counter() - start
    ofa = OnceForAll(args.trunk_tap, threshold_db=args.threshold_db, head_width=args.head_width,
                     blocks=args.blocks, weight=args.weight, seed=seed)
    start = time.perf_counter()
    train(joint, data(), spec, seed=seed, ofa=ofa, desc=f"{args.student} once-for-all seed {seed}")
    joint_s = time.perf_counter() - start
    psnr_alone, psnr_joint = per_image_psnr(alone, held_out), per_image_psnr(joint, held_out)
    gain = sum(b - a for a, b in zip(psnr_alone, psnr_joint, strict=True)) / len(held_out)
    summary = ofa.summary()
    row = {"seed": seed, "psnr_alone": sum(psnr_alone) / len(held_out), "psnr_ofa": sum(psnr_joint) / len(held_out),
           "gain_db": gain, "detached_step": int(summary["ofa_detached_step"]),
           "super_psnr_train": summary["ofa_super_psnr"], "head_params": int(summary["ofa_head_params"]),
           "train_s_alone": alone_s, "train_s_ofa": joint_s,
           "per_image": {p.name: [a, b] for p, a, b in zip(held_out, psnr_alone, psnr_joint, strict=True)}}
    print(f"seed {seed}: alone {row['psnr_alone']:.2f} dB, once-for-all {row['psnr_ofa']:.2f} dB "
          f"(gain {gain:+.2f}, detached at step {row['detached_step']})", flush=True)
    return row


def publish_result(result: dict[str, Any]) -> None:
    gain = result["gain_db"]
    rows = table(["seed", "sub-net alone PSNR dB", "once-for-all PSNR dB", "gain dB", "super-net detached at step"],
                 ([r["seed"], f"{r['psnr_alone']:.2f}", f"{r['psnr_ofa']:.2f}", f"{r['gain_db']:+.2f}",
                   r["detached_step"] if r["detached_step"] >= 0 else "never"] for r in result["runs"]))
    rows += ["", f"Paired gain over {gain['n']} seeds: {gain['mean']:+.2f} dB, 95 % CI "
                 f"[{gain['ci95_low']:+.2f}, {gain['ci95_high']:+.2f}] dB."]
    intro = paragraph("""
        {measured}: {student} {config} trained alone and once-for-all (ENERZAI, seed 001 Sec. 4.4) for the same
        {steps} steps per seed (batch {batch_size}, lr {lr}, 64-px packed crops of the 7 embedded training
        photos, L1 + 0.2 SSIM).  Super-net head: {blocks} residual dense blocks of width {head_width} on the
        trunk tap {trunk_tap}, loss weight {weight}, detached when its training PSNR average reaches
        {threshold_db} dB.  PSNR per image on the held-out scene set (15 whole images), averaged; the gain is
        paired by seed, its 95 % interval from Student's t over seeds.""",
                      measured=measured_on(result), **result)
    publish("once_for_all", "Once-for-all training: the sub-net alone vs with a detachable super-net", intro,
            rows, result)


def main() -> None:
    parser = cli(__doc__)
    parser.add_argument("--student", default="smallnet", help="a registered student that declares a trunk_tap")
    parser.add_argument("--config", type=json.loads, default=None, help='JSON, default {"width": 16} for smallnet')
    parser.add_argument("--trunk-tap", default=None, help="default: the student's ModelInfo.trunk_tap")
    parser.add_argument("--steps", type=int, default=1000, help="total steps of each arm")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0 .. N-1)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threshold-db", type=float, default=23.0)
    parser.add_argument("--head-width", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here; docs and results untouched")
    args = parser.parse_args()
    if args.config is None:
        args.config = {"width": 16} if args.student == "smallnet" else STUDENTS.info(args.student).tiny_config
    args.trunk_tap = args.trunk_tap or STUDENTS.info(args.student).trunk_tap
    if args.trunk_tap is None:
        parser.error(f"student {args.student!r} declares no trunk_tap; pass --trunk-tap")
    setup(ALL_THREADS)
    started = time.perf_counter()
    train_pairs, held_out = load_embedded("train", seed=0), load_held_out_scenes(seed=0)
    runs = [run_seed(args, seed, train_pairs, held_out) for seed in range(args.seeds)]
    result = stamp(student=args.student, config=args.config, trunk_tap=args.trunk_tap, steps=args.steps,
                   seeds=list(range(args.seeds)), lr=args.lr, batch_size=args.batch_size, losses=LOSSES,
                   threshold_db=args.threshold_db, head_width=args.head_width, blocks=args.blocks,
                   weight=args.weight, device=resolve_device("auto").type, held_out=[p.name for p in held_out],
                   gain_db=mean_ci95([r["gain_db"] for r in runs]), wall_s=time.perf_counter() - started, runs=runs)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    else:
        publish_result(result)
    print(json.dumps(result["gain_db"], indent=2))


if __name__ == "__main__":
    main()
