"""The metric keys every run logs under the same name, so MLflow's compare view lines runs up.

Units are in the key (``size_kb``, ``latency_ms_<format>_<threads>t``); the stage is a tag, never part
of a key.  Every stage that holds a model logs ``STAGE_METRICS``; the run that holds the stages (a
recipe run or a sweep point) gets ``summary_metrics``: the final model's figures, its latencies and the
Mobile AI challenge scores, which is what ``ispdc compare`` tabulates.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from distill.challenge_scores import mai2021_score, mai2022_score
from recipes.results import ExportResult

STAGE_METRICS = ("psnr", "ssim", "params", "macs", "size_kb")
"""Logged by every stage that holds a model (teacher, student, prune, fold, quantize, export, handoff)."""

SCORE_METRICS = ("mai2021_score", "mai2022_score")
"""Challenge scores on the summary run, from ``psnr`` and the headline latency."""

LATENCY_PATTERN = re.compile(r"^latency_ms_(?P<fmt>[a-z0-9_]+)_(?P<threads>\d+)t$")
HEADLINE_LATENCY_FORMATS = ("frame_tflite_int8", "tflite_int8", "tflite_fp32")
"""Which latency a trade-off is judged on, best first: the shipped variant (INT8 unless ``quantize.mode``
says otherwise) timed at the deployment frame size (``frame_<fmt>``, ``export.frame_size``), else the
same variant at the export input size (a tile), else fp32; of several thread counts, the most threads.
Only a frame-size latency gives challenge scores (``score_latency_key``): the MAI formulas are defined
on the runtime of a whole Full-HD frame, and a tile's runtime is mostly fixed costs."""


def tflite_format(variant: str) -> str:
    """``tflite_<variant>``: the format name of a TFLite variant in every per-format key."""
    return f"tflite_{variant}"


def frame_format(fmt: str) -> str:
    """``frame_<fmt>``: a format measured at the recipe's deployment frame size (``export.frame_size``),
    e.g. ``latency_ms_frame_tflite_int8_2t``, ``psnr_frame_tflite_int8``."""
    return f"frame_{fmt}"


def builtin_format(fmt: str) -> str:
    """``<fmt>_builtin``: a TFLite format run on TFLite's builtin (reference) kernels instead of XNNPACK."""
    return f"{fmt}_builtin"


def gpu_compatible_key(fmt: str) -> str:
    """1.0 when the GPU delegate's op rules (``compress.export.delegates``) take every op of ``fmt``."""
    return f"gpu_compatible_{fmt}"


def xnnpack_partitions_key(fmt: str) -> str:
    """How many partitions XNNPACK splits ``fmt`` into (1: the whole graph, if nothing is left out)."""
    return f"xnnpack_partitions_{fmt}"


def xnnpack_undelegated_key(fmt: str) -> str:
    """How many ops of ``fmt`` XNNPACK leaves to TFLite's builtin kernels."""
    return f"xnnpack_undelegated_{fmt}"


def latency_key(fmt: str, threads: int) -> str:
    """``latency_ms_<fmt>_<threads>t``: the one spelling of a latency metric."""
    return f"latency_ms_{fmt}_{threads}t"


def psnr_key(fmt: str) -> str:
    """PSNR (dB) against the ground truth of a model run on one runtime/format."""
    return f"psnr_{fmt}"


def ssim_key(fmt: str) -> str:
    return f"ssim_{fmt}"


def parity_key(fmt: str) -> str:
    """PSNR (dB) of a format's output against the PyTorch model it was exported from."""
    return f"parity_psnr_db_{fmt}"


def size_key(fmt: str) -> str:
    return f"size_kb_{fmt}"


def drop_key(fmt: str) -> str:
    """PSNR lost (dB) against the float model of the same runtime."""
    return f"psnr_drop_db_{fmt}"


def rmse_key(fmt: str, channel: str) -> str:
    """RMSE of one output channel (r, g, b) against the PyTorch output."""
    return f"rmse_{fmt}_{channel}"


def round_key(round_index: int, name: str) -> str:
    """A metric of one pruning round (``round2_psnr``)."""
    return f"round{round_index}_{name}"


def level_prefix(level: int) -> str:
    """The prefix of a level-wise teacher's per-level metrics (``level3_psnr``)."""
    return f"level{level}_"


def headline_latency_key(keys: Iterable[str], shipped: str = "int8") -> str | None:
    """The latency metric a trade-off is judged on, among ``keys`` (see ``HEADLINE_LATENCY_FORMATS``);
    ``shipped`` is the TFLite variant in the bundle (``quantize.mode``)."""
    found = [(k, match) for k in keys if (match := LATENCY_PATTERN.match(k))]
    wanted = {"tflite_int8": tflite_format(shipped), "frame_tflite_int8": frame_format(tflite_format(shipped))}
    for fmt in (wanted.get(f, f) for f in HEADLINE_LATENCY_FORMATS):
        matches = [(k, m) for k, m in found if m["fmt"] == fmt]
        if matches:  # the most threads measured: the recipe's latency_threads (1 thread is the extra figure)
            return max(matches, key=lambda km: (int(km[1]["threads"]), km[0]))[0]
    return None


def is_frame_latency(key: str) -> bool:
    """Whether ``key`` is a latency measured at the deployment frame size (``latency_ms_frame_..._<n>t``)."""
    match = LATENCY_PATTERN.match(key)
    return match is not None and match["fmt"].startswith(frame_format(""))


def score_latency_key(keys: Iterable[str], shipped: str = "int8") -> str | None:
    """The latency the MAI scores are computed from: the headline latency if it is a frame-size one,
    else None (no score rather than one from a tile)."""
    key = headline_latency_key(keys, shipped)
    return key if key is not None and is_frame_latency(key) else None


def challenge_scores(psnr: float, latency_ms: float) -> dict[str, float]:
    """MAI 2021 / 2022 scores (our CPU latency stands in for the challenges' phone runtimes)."""
    if latency_ms <= 0:
        return {}
    return {"mai2021_score": mai2021_score(psnr, latency_ms), "mai2022_score": mai2022_score(psnr, latency_ms)}


def summary_metrics(outcomes: Iterable[Any]) -> dict[str, float]:
    """The final model's ``STAGE_METRICS`` (from the last stage that reports them), every latency and
    per-format size the stages logged, and the challenge scores when a frame-size latency is known."""
    outcomes = list(outcomes)
    summary: dict[str, float] = {}
    for outcome in outcomes:
        summary.update({k: float(v) for k, v in outcome.metrics.items()
                        if LATENCY_PATTERN.match(k) or k.startswith("size_kb_")})
    last = next((o for o in reversed(outcomes) if all(k in o.metrics for k in STAGE_METRICS)), None)
    if last is not None:
        summary.update({k: float(last.metrics[k]) for k in STAGE_METRICS})
        shipped = next((o.result.shipped_variant for o in outcomes if isinstance(o.result, ExportResult)), None)
        headline = score_latency_key(summary, shipped or "int8")
        if headline is not None:  # a frame-size latency, or no score at all
            summary.update(challenge_scores(summary["psnr"], summary[headline]))
    return summary
