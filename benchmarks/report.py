"""Shared by the benchmark scripts: write a result JSON and replace one table in docs/benchmarks.md."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


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


def publish(name: str, heading: str, intro: str, rows: list[str], result: dict) -> None:
    """``benchmarks/results/<name>.json`` + the ``<!-- name:begin/end -->`` section of the docs page."""
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = "\n".join([begin, intro, "", *rows, end])
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    DOC.write_text(text)
