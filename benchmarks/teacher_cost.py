"""Teacher cost at their published widths: parameters, MACs, CPU forward time and one training step.

    .venv/bin/python -m benchmarks.teacher_cost [--size 224] [--threads 2] [--repeats 3]

Times are medians over ``--repeats`` runs in one process (after a warm-up), so the ratios between
teachers are what to read.  Writes ``benchmarks/results/teachers.json`` and the table between the
markers in ``docs/benchmarks.md``.  MACs use torch-pruning's counter (one multiply-add = 1 MAC).
"""
from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.report import cli, measured_on, paragraph, publish, stamp, table
from compress.runtime.profile import count_macs, count_params
from teachers import create_teacher

TEACHERS: dict[str, dict[str, Any]] = {"pynet": {"width": 1.0}, "punet": {"base_width": 16},
                                       "aaunet": {"base_width": 16}}

PAPER_FLOPS_G = {"pynet": 342.698}
"""LW-ISP paper (seed 004) Table 3, column (224,224).  It matches our MAC count at a 224x224 *packed*
input (448x448 output) to 0.01 %, so the paper's "FLOPs" are multiply-accumulates, not 2 x MACs."""


def _median_seconds(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, config: dict, size: int, repeats: int) -> dict:
    model = create_teacher(name, **config)
    x = torch.rand(1, 4, size, size)
    target = torch.rand(1, 3, 2 * size, 2 * size)
    model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step() -> None:
        model.train()
        loss = torch.nn.functional.mse_loss(model(x), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    return {
        "teacher": name, "config": config, "params": count_params(model),
        "macs_g": count_macs(model, tuple(x.shape)) / 1e9, "paper_flops_g": PAPER_FLOPS_G.get(name),
        "forward_s": _median_seconds(forward, repeats), "train_step_s": _median_seconds(train_step, repeats),
    }


def publish_result(result: dict) -> None:
    rows = table(["teacher", "config", "params", "GMACs", "paper \"GFLOPs\"", "forward s", "train step s"],
                 ([r["teacher"], r["config"], f"{r['params']:,}", f"{r['macs_g']:.3f}",
                   "-" if r["paper_flops_g"] is None else f"{r['paper_flops_g']:.3f}", f"{r['forward_s']:.2f}",
                   f"{r['train_step_s']:.2f}"] for r in result["teachers"]))
    intro = paragraph("""
        {measured}, {threads} threads, packed input {size}x{size} (batch 1, output twice the size).
        The paper column is LW-ISP Table 3's (224,224) figure: it equals our multiply-accumulate count at
        a 224x224 packed input, so that paper counts MACs as FLOPs.""", measured=measured_on(result), **result)
    publish("teachers", "Teachers: cost at published width", intro, rows, result)


def main() -> None:
    parser = cli(__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = stamp(threads=args.threads, size=args.size,
                   teachers=[measure(n, c, args.size, args.repeats) for n, c in TEACHERS.items()])
    publish_result(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
