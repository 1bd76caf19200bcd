"""Shared by the benchmark scripts: their command line, the result header, and writing a result JSON plus
one table in docs/benchmarks.md.

Every benchmark starts and ends the same way (a command line described by its docstring; a JSON under
``benchmarks/results`` and its table between markers in the docs page), so that lives here once:
``cli``/``setup`` at the start of ``main``, ``stamp`` for the result, ``mean_ci95`` for paired gains,
``table`` and ``measured_on`` for the docs, ``publish`` at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
ALL_THREADS = min(os.cpu_count() or 1, 16)
"""torch threads for the training benchmarks: every CPU, at most 16."""


def machine() -> str:
    """CPU model name and core count, e.g. ``AMD EPYC, 2 CPUs`` (``platform`` only says ``x86_64``)."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs"


# instruction-set extensions that decide which INT8 / fp16 kernels a CPU runs (XNNPACK, oneDNN, ONNX Runtime):
# x86 VNNI turns an int8 dot product into one instruction (without it int8 GEMMs widen to int16 and are often no
# faster than fp32 FMA); ARM dotprod / i8mm do the same on phones.  /proc/cpuinfo flag -> name in the results.
ISA_FLAGS = {"avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
             "amx_int8": "AMX-INT8", "asimddp": "ARM dotprod", "i8mm": "ARM i8mm", "fphp": "ARM fp16"}


def cpu_isa(cpuinfo: str | None = None) -> dict[str, bool]:
    """Which of ``ISA_FLAGS`` this CPU has (from /proc/cpuinfo; all False where it cannot be read)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.split(":", 1)[0].strip() in ("flags", "Features"):
            flags |= set(line.split(":", 1)[1].split())
    return {name: flag in flags for flag, name in ISA_FLAGS.items()}


def isa_summary(isa: dict[str, bool]) -> str:
    """``AVX2+FMA, no AVX-512/VNNI`` style: what the CPU has, and the int8 extensions it lacks."""
    has = [name for name, present in isa.items() if present]
    x86 = isa.get("AVX2") or isa.get("AVX-512")
    missing = [n for n in (("AVX-512", "AVX512-VNNI", "AVX-VNNI") if x86 else ("ARM dotprod", "ARM i8mm"))
               if not isa.get(n)]
    text = "+".join(has) if has else "no SIMD flags read"
    return text + (f", no {'/'.join(missing)}" if missing else "")


def cli(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's argument parser, described by the first paragraph of its module docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


def setup(threads: int | None = None) -> None:
    """Quiet TensorFlow's C++ log (converters print pages) and set torch's threads (None: leave them)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if threads is not None:
        torch.set_num_threads(threads)


def stamp(**fields: Any) -> dict[str, Any]:
    """A result headed by today's date and this machine, as every result JSON starts."""
    return {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "cpu_isa": cpu_isa(), **fields}


def measured_on(result: dict[str, Any]) -> str:
    """The start of every table's introduction: when and where the result was measured."""
    isa = f" ({isa_summary(result['cpu_isa'])})" if result.get("cpu_isa") else ""
    return f"Measured {result['date']} on {result['machine']}{isa}"


def paragraph(text: str, **fields: Any) -> str:
    """A table's introduction written as an indented triple-quoted block, as the one markdown line the
    docs page keeps it on: a line break is a space (two after a full stop), then ``str.format(**fields)``."""
    joined = re.sub(r"\.\n\s*", ".  ", text.strip())
    return re.sub(r"\s*\n\s*", " ", joined).format(**fields)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> list[str]:
    """A markdown table's lines from the header cells and one sequence of (formatted) cells per row."""
    line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"  # noqa: E731
    return [line(header), "|" + "|".join(align or ["---"] * len(header)) + "|", *(line(r) for r in rows)]


# two-sided 95 % critical values of Student's t by degrees of freedom (an untabulated df takes the next smaller one)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def mean_ci95(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation and the 95 % confidence interval of the mean (Student's t; NaN
    bounds for fewer than two values), e.g. of paired per-seed differences."""
    n, mean = len(values), float(statistics.mean(values))
    if n < 2:
        return {"n": n, "mean": mean, "std": 0.0, "ci95_low": math.nan, "ci95_high": math.nan}
    std = statistics.stdev(values)
    t = T_975[max(df for df in T_975 if df <= n - 1)] if n - 1 <= 120 else 1.960
    half = t * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def publish(name: str, heading: str, intro: str, rows: list[str], result: dict, doc: Path = DOC) -> None:
    """``benchmarks/results/<name>.json`` + the ``<!-- name:begin/end -->`` section of the docs page ``doc``
    (``docs/benchmarks.md`` unless a benchmark's table belongs on another page)."""
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = "\n".join([begin, intro, "", *rows, end])
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    doc.write_text(text)
