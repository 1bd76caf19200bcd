"""The Mobile AI challenges' final scores, which trade fidelity (PSNR) against on-device runtime.

Both come from the challenge reports and are checked in the tests against the reports' own tables:

* MAI 2021 (seed 001, Sec. 3): ``PSNR + a * (0.2 - clip(runtime_s))``, ``a = 20`` if the runtime is at
  most 0.2 s, else 0.5, and ``clip`` to [0.03, 5] s.  Runtime at Full-HD (1920x1088), MediaTek APU.
* MAI 2022 (seed 002, Sec. 2): ``2^(2 * PSNR) / (C * runtime)``.  The report leaves ``C`` out ("a
  constant normalization factor"); fitted to all 13 scored rows of its Table 1 with the runtime in
  milliseconds (Adreno GPU, Full-HD), ``C = 1.0995e12`` reproduces every printed score to the
  printed precision.

Our runtimes are CPU TFLite latencies, not the challenges' phones: the scores rank our own variants
against each other on one machine; they are not comparable to the reports' leaderboards.
"""
from __future__ import annotations

MAI2022_C = 1.0995e12
"""MAI 2022 normalisation constant, runtime in milliseconds (fitted to the report's Table 1)."""


def mai2021_score(psnr_db: float, runtime_ms: float) -> float:
    """MAI 2021 learned-ISP final score from PSNR (dB) and Full-HD runtime (ms)."""
    runtime_s = runtime_ms / 1000.0
    alpha = 20.0 if runtime_s <= 0.2 else 0.5
    return psnr_db + alpha * (0.2 - min(max(runtime_s, 0.03), 5.0))


def mai2022_score(psnr_db: float, runtime_ms: float) -> float:
    """MAI 2022 learned-ISP (track 1) final score from PSNR (dB) and Full-HD runtime (ms)."""
    if runtime_ms <= 0:
        raise ValueError(f"runtime must be positive; got {runtime_ms} ms")
    return 2.0 ** (2.0 * psnr_db) / (MAI2022_C * runtime_ms)
