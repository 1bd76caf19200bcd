"""benchmarks/latency.py helpers and compress.runtime.latency.torch_latency_ms (no conversions)."""
from __future__ import annotations

import pytest
import torch

from benchmarks.latency import Entry, packed_size, parse_student, time_interleaved
from compress.runtime.latency import torch_latency_ms


def test_parse_student_reads_typed_config() -> None:
    assert parse_student("lwisp:width=0.5,fgam=false") == ("lwisp", {"width": 0.5, "fgam": False})
    assert parse_student("smallnet") == ("smallnet", {})
    with pytest.raises(ValueError, match="name:key=value"):
        parse_student("smallnet:width")


def test_packed_size_rounds_up_to_the_input_multiple() -> None:
    assert packed_size("lwisp", (540, 960)) == (544, 960)  # four 2x2 poolings
    assert packed_size("smallnet", (540, 960)) == (540, 960)


def test_torch_latency_restores_threads_and_mode() -> None:
    model = torch.nn.Conv2d(4, 4, 3).train()
    before = torch.get_num_threads()
    out = torch_latency_ms(model, (1, 4, 16, 16), num_threads=1, warmup=0, runs=2)
    assert out["runs"] == 2 and out["min_ms"] <= out["median_ms"] and out["num_threads"] == 1
    assert torch.get_num_threads() == before and model.training


def test_interleaving_keeps_a_slow_entry_to_one_run() -> None:
    calls: dict[str, int] = {"fast": 0, "slow": 0}

    def runner(name: str, ms: float):
        def run(warmup: int, runs: int) -> dict[str, float]:
            calls[name] += 1
            return {"median_ms": ms}
        return run

    fast, slow = (Entry("s", "tflite", v, 1, runner(v, ms)) for v, ms in (("fast", 1.0), ("slow", 50.0)))
    time_interleaved([fast, slow], rounds=3, runs=2, max_ms=10.0)
    assert calls == {"fast": 4, "slow": 1} and slow.capped and slow.ms == 50.0 and fast.medians == [1.0] * 3
