"""Compare runs from any MLflow tracking URI: a trade-off table with the Pareto-optimal rows marked,
and Pareto plots (PSNR vs latency, PSNR vs size) as PNG and self-contained interactive HTML.

Rows are the runs that hold the stages (a recipe run, or each point of a sweep): they carry the summary
metrics of ``recipes.metric_keys``.  A row is Pareto-optimal when no other row is at least as good on
every objective (higher PSNR, lower latency, smaller size) and better on one.

The MAI 2021 / 2022 scores are computed here from the table's latency, and only when that latency was
measured at the deployment frame size (``latency_ms_frame_<fmt>_<n>t``): the challenges define them on
a Full-HD frame's runtime.  A run timed only on the export tile gets "n/a", never a tile-based score
(scores an older ispdc logged from tile timings are not shown either).
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipes.metric_keys import (
    LATENCY_PATTERN,
    SCORE_METRICS,
    challenge_scores,
    frame_format,
    headline_latency_key,
    is_frame_latency,
)

SUMMARY_KINDS = ("recipe", "point")
TABLE_COLUMNS = ("psnr", "ssim", "size_kb", "macs", "latency_ms", "mai2021_score", "mai2022_score")
SIZE_PARAMS = {True: "export.frame_size", False: "export.input_size"}
"""The recipe param that says at what size a frame (True) or a tile (False) latency was measured."""
LOG_SPAN = 20.0
"""A plot's x axis is logarithmic when its values span more than this factor."""
SHIPPED_PARAM = "quantize.mode"
"""The recipe param naming a run's shipped TFLite variant: rows that ship different ones (a sweep over
it) are each timed on their own (``latency_ms_frame_tflite_<quantize.mode>_<n>t``)."""


class CompareError(ValueError):
    """Nothing to compare (no such experiment, no matching runs): the message says what was asked."""


@dataclass
class Row:
    run_id: str
    name: str
    experiment: str
    metrics: dict[str, float]
    pareto: bool = False
    params: dict[str, str] = field(default_factory=dict)

    def get(self, key: str) -> float:
        return self.metrics.get(key, math.nan)


@dataclass
class Comparison:
    rows: list[Row]
    latency_key: str | None
    files: list[Path] = field(default_factory=list)
    shipped: list[str] = field(default_factory=list)
    """When rows ship different variants: those variants; each row's latency is then its own variant's."""

    @property
    def latency_label(self) -> str:
        """What the latency column measured: runtime, threads and size (``latency_label``)."""
        label = latency_label(self.latency_key, self.rows)
        if len(self.shipped) > 1:
            runtime, _, rest = label.partition(", ")
            label = f"{runtime.split()[0]} shipped {'/'.join(self.shipped)}, {rest}"
        return label

    @property
    def latency_key_name(self) -> str:
        """The latency metric, with ``<quantize.mode>`` for its variant when rows ship different ones."""
        key = self.latency_key or ""
        if len(self.shipped) > 1:
            for variant in self.shipped:
                key = key.replace(f"_{variant}_", f"_<{SHIPPED_PARAM}>_")
        return key

    @property
    def scored(self) -> bool:
        """Whether the MAI scores were computed (the latency is a frame-size one)."""
        return self.latency_key is not None and is_frame_latency(self.latency_key)


def _size(text: str | None) -> str:
    """``[1088, 1920]`` (a logged param) as ``1088x1920``; '' when absent or None."""
    digits = "".join(c if c.isdigit() else " " for c in text or "").split()
    return "x".join(digits)


def latency_label(key: str | None, rows: Sequence[Row] = ()) -> str:
    """``TFLite int8, 2 threads, 1088x1920 frame`` for ``latency_ms_frame_tflite_int8_2t`` (the size from
    the rows' ``export.frame_size`` / ``export.input_size`` params when they agree)."""
    match = LATENCY_PATTERN.match(key or "")
    if match is None:
        return key or "no latency logged"
    frame = is_frame_latency(key or "")
    fmt = match["fmt"].removeprefix(frame_format("")) if frame else match["fmt"]
    runtime, _, variant = fmt.partition("_")
    runtime = {"tflite": "TFLite", "onnx": "ONNX Runtime"}.get(runtime, runtime)
    sizes = {_size(r.params.get(SIZE_PARAMS[frame])) for r in rows} - {""}
    size = sizes.pop() if len(sizes) == 1 else ""
    where = f"{size} frame" if frame else f"{size + ' ' if size else ''}tile (export input)"
    threads = int(match["threads"])
    return f"{runtime} {variant.replace('_', ' ')}".strip() + f", {threads} thread{'s' * (threads != 1)}, {where}"


def pareto_mask(points: Sequence[Sequence[float]], maximise: Sequence[bool]) -> list[bool]:
    """True for each point no other point dominates.  ``maximise[i]`` says the direction of objective
    ``i``; a point with a missing (NaN) objective is never optimal and dominates nothing."""
    signed = [[v if up else -v for v, up in zip(p, maximise)] for p in points]
    valid = [not any(math.isnan(v) for v in p) for p in signed]
    mask = []
    for i, p in enumerate(signed):
        dominated = any(
            valid[j] and j != i and all(a >= b for a, b in zip(q, p)) and any(a > b for a, b in zip(q, p))
            for j, q in enumerate(signed))
        mask.append(valid[i] and not dominated)
    return mask


def _filter_string(recipe: str | None, tags: dict[str, str], parent: str | None) -> str:
    def quote(value: str) -> str:
        return "'" + value.replace("'", "\\'") + "'"

    clauses = [f"tags.`{k}` = {quote(v)}" for k, v in tags.items()]
    if recipe:
        clauses.append(f"tags.recipe = {quote(recipe)}")
    if parent:
        clauses.append(f"tags.`mlflow.parentRunId` = {quote(parent)}")
    return " and ".join(clauses)


def fetch_rows(tracking_uri: str, experiments: Sequence[str] | None = None, recipe: str | None = None,
               tags: dict[str, str] | None = None, parent: str | None = None) -> list[Row]:
    """Recipe runs and sweep points (not stage runs) matching every filter, oldest first."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    if experiments:
        found = {name: client.get_experiment_by_name(name) for name in experiments}
        missing = [name for name, exp in found.items() if exp is None]
        if missing:
            known = sorted(e.name for e in client.search_experiments())
            raise CompareError(f"no experiment {', '.join(map(repr, missing))} at {tracking_uri} "
                               f"(known: {', '.join(known) or 'none'})")
        exps = [exp for exp in found.values() if exp is not None]
    else:
        exps = list(client.search_experiments())
    if not exps:
        raise CompareError(f"no experiments at {tracking_uri}")
    names = {e.experiment_id: e.name for e in exps}
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_ids=list(names), filter_string=_filter_string(recipe, tags or {}, parent),
                              output_format="list", order_by=["attributes.start_time ASC"])
    rows = []
    for run in runs:
        kind = run.data.tags.get("run_kind")
        is_summary = kind in SUMMARY_KINDS if kind else "stage" not in run.data.tags
        if is_summary and "psnr" in run.data.metrics:
            params = {k: v for k, v in run.data.params.items() if k in (*SIZE_PARAMS.values(), SHIPPED_PARAM)}
            rows.append(Row(run.info.run_id, run.info.run_name or run.info.run_id[:8],
                            names[run.info.experiment_id], dict(run.data.metrics), params=params))
    return rows


def _own_latency_keys(rows: list[Row]) -> dict[str, str]:
    """Each row's own shipped variant's headline latency (run id -> key) when rows ship different variants
    and every row has one measured alike (frame or tile, threads); else {}: one key for every row."""
    mode = {r.run_id: r.params.get(SHIPPED_PARAM, "int8") for r in rows}
    if len(set(mode.values())) < 2:
        return {}
    own = {r.run_id: headline_latency_key(r.metrics, mode[r.run_id]) for r in rows}
    alike = {k.replace(f"_{mode[i]}_", "_") if k else None for i, k in own.items()}
    return {i: k for i, k in own.items() if k} if len(alike) == 1 and None not in alike else {}


def trade_off(rows: list[Row], latency_key: str | None = None) -> Comparison:
    """Fill ``latency_ms`` (from ``latency_key``, default the headline latency the rows share), the
    challenge scores (only from a frame-size latency), and the Pareto marks (max PSNR, min latency, min
    size); rows that ship different variants (``SHIPPED_PARAM``) each get their own variant's latency."""
    own = _own_latency_keys(rows) if latency_key is None else {}
    shipped = sorted({r.params.get(SHIPPED_PARAM, "int8") for r in rows}) if own else []
    if latency_key is None:
        common = set.intersection(*(set(r.metrics) for r in rows)) if rows else set()
        latency_key = next(iter(own.values()), None) or headline_latency_key(common) \
            or headline_latency_key({k for r in rows for k in r.metrics})
    for row in rows:
        for score in SCORE_METRICS:  # logged by an older ispdc from a tile latency: recomputed or dropped
            row.metrics.pop(score, None)
        key = own.get(row.run_id, latency_key)
        if key and key in row.metrics:
            row.metrics["latency_ms"] = row.metrics[key]
            if is_frame_latency(key):
                row.metrics.update(challenge_scores(row.metrics["psnr"], row.metrics["latency_ms"]))
    keys = [k for k in ("psnr", "latency_ms", "size_kb") if any(not math.isnan(r.get(k)) for r in rows)]
    objectives = [tuple(r.get(k) for k in keys) for r in rows]  # an objective no run reports is left out
    for row, optimal in zip(rows, pareto_mask(objectives, tuple(k == "psnr" for k in keys))):
        row.pareto = optimal
    return Comparison(rows, latency_key, shipped=shipped)


def format_table(comparison: Comparison) -> str:
    """A fixed-width table, one row per run, ``*`` on Pareto-optimal rows; the latency header names the
    runtime, threads and size, and the footer the metric key and where the scores come from."""
    latency = f"latency_ms ({comparison.latency_label})"
    heads = ["", "run", "psnr", "ssim", "size_kb", "macs", latency, "mai2021", "mai2022"]
    body = []
    for r in comparison.rows:
        def num(key: str, fmt: str, r: Any = r) -> str:
            value = r.get(key)
            return ("n/a" if key in SCORE_METRICS else "-") if math.isnan(value) else format(value, fmt)

        body.append(["*" if r.pareto else "", r.name, num("psnr", ".2f"), num("ssim", ".4f"), num("size_kb", ".1f"),
                     num("macs", ",.0f"), num("latency_ms", ".2f"), num("mai2021_score", ".2f"),
                     num("mai2022_score", ".3g")])
    widths = [max(len(str(c)) for c in col) for col in zip(heads, *body)]
    lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(heads, widths)))]
    lines.append("-" * len(lines[0]))
    for cells in body:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    lines.append("* Pareto-optimal: no other run has higher PSNR, lower latency and smaller size at once")
    if comparison.latency_key:
        lines.append(f"latency: {comparison.latency_key_name} ({comparison.latency_label}); " + (
            "MAI 2021/2022 scores from it" if comparison.scored else
            "MAI scores n/a: they are defined on a whole frame's runtime (set export.frame_size)"))
    return "\n".join(lines)


def _front(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """The 2-D front (min x, max y) as a staircase, for drawing."""
    mask = pareto_mask([(y, x) for x, y in zip(xs, ys)], (True, False))
    pts = sorted((x, y) for x, y, m in zip(xs, ys, mask) if m)
    return [p[0] for p in pts], [p[1] for p in pts]


def write_plots(comparison: Comparison, out_dir: Path) -> list[Path]:
    """``pareto_psnr_latency`` and ``pareto_psnr_size`` as .png (matplotlib) and .html (plotly, with
    plotly.js inlined so the file opens offline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    axes = [("latency_ms", f"latency ms ({comparison.latency_label})", "pareto_psnr_latency"),
            ("size_kb", "size KB", "pareto_psnr_size")]
    for key, label, stem in axes:
        rows = [r for r in comparison.rows if not math.isnan(r.get(key)) and not math.isnan(r.get("psnr"))]
        xs, ys = [r.get(key) for r in rows], [r.get("psnr") for r in rows]
        fx, fy = _front(xs, ys)
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        ax.scatter(xs, ys, c=["tab:red" if r.pareto else "tab:gray" for r in rows], zorder=3)
        ax.step(fx, fy, where="post", color="tab:red", alpha=0.5, label="front (this pair)")
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(r.name, (x, y), fontsize=6, xytext=(4, 3), textcoords="offset points")
        log_x = bool(xs) and min(xs) > 0 and max(xs) / min(xs) > LOG_SPAN  # e.g. int8 next to int16x8
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel("\n".join(textwrap.wrap(label, 70)), fontsize=8)
        ax.set_ylabel("PSNR dB")
        ax.set_title(f"PSNR vs {key} (red: Pareto-optimal on PSNR, latency, size)", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        png = out_dir / f"{stem}.png"
        fig.savefig(png)
        plt.close(fig)

        figure = go.Figure()
        figure.add_trace(go.Scatter(x=fx, y=fy, mode="lines", line_shape="hv", name="front (this pair)",
                                    line={"color": "crimson", "dash": "dot"}))
        for optimal in (True, False):
            sel = [r for r in rows if r.pareto == optimal]
            figure.add_trace(go.Scatter(
                x=[r.get(key) for r in sel], y=[r.get("psnr") for r in sel], mode="markers",
                name="Pareto-optimal" if optimal else "dominated",
                marker={"size": 11, "color": "crimson" if optimal else "gray"},
                text=[r.name for r in sel], customdata=[[r.run_id, r.get("ssim"), r.get("macs")] for r in sel],
                hovertemplate="%{text}<br>PSNR %{y:.2f} dB<br>" + key + " %{x:.2f}<br>SSIM %{customdata[1]:.4f}"
                              "<br>MACs %{customdata[2]:,.0f}<br>run %{customdata[0]}<extra></extra>"))
        figure.update_layout(title=f"PSNR vs {label}", xaxis_title=label, yaxis_title="PSNR dB",
                             template="plotly_white", xaxis_type="log" if log_x else "linear")
        html = out_dir / f"{stem}.html"
        figure.write_html(html, include_plotlyjs=True, full_html=True)
        files += [png, html]
    table = out_dir / "trade_off.txt"
    table.write_text(format_table(comparison) + "\n")
    return [table, *files]


def compare_runs(tracking_uri: str, experiments: Sequence[str] | None = None, recipe: str | None = None,
                 tags: dict[str, str] | None = None, parent: str | None = None, out_dir: Path | None = None,
                 latency_key: str | None = None, log_to_run: str | None = None) -> Comparison:
    """Fetch, mark, and (with ``out_dir``) write the table and plots; ``log_to_run`` also logs them
    as artifacts (``compare/``) on that run, e.g. the sweep's parent run."""
    rows = fetch_rows(tracking_uri, experiments, recipe, tags, parent)
    if not rows:
        asked = ", ".join(f"{k}={v}" for k, v in {"experiments": experiments, "recipe": recipe, "tags": tags,
                                                    "parent": parent}.items() if v)
        raise CompareError(f"no finished recipe runs with metrics at {tracking_uri}"
                           + (f" matching {asked}" if asked else ""))
    comparison = trade_off(rows, latency_key)
    if out_dir is not None:
        comparison.files = write_plots(comparison, Path(out_dir))
        if log_to_run:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri)
            for path in comparison.files:
                client.log_artifact(log_to_run, str(path), artifact_path="compare")
    return comparison


def as_records(comparison: Comparison) -> list[dict[str, Any]]:
    """The table as plain dicts (for pandas or JSON)."""
    return [{"run_id": r.run_id, "run": r.name, "experiment": r.experiment, "pareto": r.pareto,
             **{k: r.get(k) for k in TABLE_COLUMNS}} for r in comparison.rows]
