"""Two processes (torchrun, gloo, CPU) train the same model as one process with the same global batch
and seed.  Tolerance: float sums of the gradient all-reduce differ in order from one process's batch
mean, so weights agree within 1e-4 and held-out PSNR within 0.01 dB, not bit for bit."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill import distributed
from distill.batches import StreamBatches

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _worker_module():
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rank_shards_concatenate_to_the_global_batches() -> None:
    whole = iter(StreamBatches(12, 4, seed=3))
    shards = [iter(StreamBatches(12, 4, seed=3, rank=r, world_size=2)) for r in range(2)]
    for _ in range(7):  # across epoch boundaries
        assert next(whole) == next(shards[0]) + next(shards[1])
    resumed = iter(StreamBatches(12, 4, seed=3, start_step=5))
    replay = iter(StreamBatches(12, 4, seed=3))
    for _ in range(5):
        next(replay)
    assert next(resumed) == next(replay)


def test_uneven_splits_are_refused() -> None:
    with pytest.raises(ValueError, match="not divisible by the 3 training processes"):
        distributed.per_rank_batch(8, 3)
    with pytest.raises(ValueError, match="does not split over 2 processes"):
        distributed.shard([1, 2, 3], 0, 2)


def test_torchrun_command_drops_nothing_but_adds_the_launcher() -> None:
    cmd = distributed.torchrun_command(2, ["run", "quickstart", "--set", "seed=1"])
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in cmd
    assert cmd[-6:] == ["-m", "recipes.cli", "run", "quickstart", "--set", "seed=1"]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
         str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["world_size"] == 2
    ddp_weights = torch.load(tmp_path / "weights.pt", weights_only=True)

    worker = _worker_module()
    model, single, seen = worker.run()
    shards = [json.loads((tmp_path / f"seen{r}.json").read_text()) for r in range(2)]
    steps = worker.SPEC.steps
    assert len(seen) == steps * 4 and all(len(s) == steps * 2 for s in shards)  # each rank: half a batch
    assert sorted(map(tuple, shards[0] + shards[1])) == sorted(seen)  # together: the one-process stream
    torch.manual_seed(0)
    worker.Net(16)
    untrained = worker.Net(6)
    assert (untrained.conv1.weight - model.conv1.weight).abs().max() > 1e-2  # it did train
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ddp_weights[name], value, atol=1e-4, rtol=0, msg=name)
    assert scores["psnr"] == pytest.approx(single["psnr"], abs=0.01)
    assert scores["ssim"] == pytest.approx(single["ssim"], abs=1e-4)
