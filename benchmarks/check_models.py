"""``check_model`` on every registered model: what ``ispdc check-model`` says about the zoo itself.

    .venv/bin/python -m benchmarks.check_models [--only smallnet pynet ...] [--no-convert] [--threads N]

Each model at its registry ``tiny_config``, converted to fp32 TFLite (``convert=True``): output
contract, gradients, ONNX and TFLite parity against PyTorch, non-builtin ops, torch-pruning groups and
the layers kept whole, what folding folds, feature taps.  Plugins installed beside ispdc (entry point
``ispdc.models``) are checked too, marked by their origin.  Writes ``benchmarks/results/check_models.json``
and the table of ``docs/your-model.md``.
"""
from __future__ import annotations

import time
from typing import Any

from benchmarks.report import ROOT, cli, measured_on, paragraph, publish, setup, stamp, table
from compress.model_check import STAGES, ModelReport, check_model
from teachers.registry import STUDENTS, TEACHERS

DOC = ROOT / "docs" / "your-model.md"
HEADER = ["model", "family", "from", "output", "backward", "ONNX dB", "TFLite fp32 dB", "non-builtin ops",
          "prunable groups", "kept whole (prune)", "folds", "taps", "every check"]


def _flag(ok: bool | None) -> str:
    return "-" if ok is None else ("ok" if ok else "**FAIL**")


def _db(facts: dict[str, Any], key: str, ran: bool | None) -> str:
    value = facts.get(f"{key}_parity_db")
    if value is None:
        return "-" if ran is None else "**FAIL**"
    cell = f"{value:.1f}"
    return cell if facts.get(f"{key}_ok") else f"**{cell}**"


def _folds(facts: dict[str, Any]) -> str:
    fold = facts.get("fold")
    if not fold:
        return "-"
    parts = [f"{fold['reparameterized_blocks']} block(s)" if fold["reparameterized_blocks"] else "",
             f"{fold['conv_bn_folded']} Conv+BN" if fold["conv_bn_folded"] else ""]
    return ", ".join(p for p in parts if p) or "nothing"


def row(entry: dict[str, Any]) -> list[str]:
    facts, failed, notes = entry["facts"], entry["failed_stages"], entry["note_stages"]
    ran = {stage: (stage not in failed + notes) if stage in entry["stages"] else None for stage in STAGES}
    verdict = "ok" if entry["ok"] else "**FAIL**: " + ", ".join(failed)
    verdict += f" (note: {', '.join(notes)})" if notes else ""
    kept = ", ".join(f"`{n}`" for n in facts.get("ignored", [])) or "-"
    ops = facts.get("non_builtin_ops")
    return [f"`{entry['name']}`", entry["family"], entry["origin"], _flag(ran["output"]), _flag(ran["backward"]),
            _db(facts, "onnx", ran["export"]), _db(facts, "tflite", ran["tflite"]),
            "-" if ops is None else (", ".join(ops) or "none"),
            str(facts.get("prunable_groups", "-")), kept, _folds(facts), str(facts.get("taps", "-")),
            verdict]


def as_entry(report: ModelReport, origin: str) -> dict[str, Any]:
    return {"name": report.name, "family": report.family, "origin": origin, "config": report.config,
            "ok": report.ok, "seconds": round(report.seconds, 1),
            "stages": sorted({f.stage for f in report.findings}, key=STAGES.index),
            "failed_stages": sorted({f.stage for f in report.problems}, key=STAGES.index),
            "note_stages": sorted({f.stage for f in report.notes}, key=STAGES.index),
            "findings": [{"stage": f.stage, "ok": f.ok, "message": f.message} for f in report.findings],
            "facts": report.facts}


def main() -> None:
    parser = cli(__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="model names (default: every registered one)")
    parser.add_argument("--no-convert", dest="convert", action="store_false", help="skip the TFLite conversions")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    setup(args.threads)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # unused-initializer warnings: tidiness, not findings
    models = [("teacher", n) for n in TEACHERS.names()] + [("student", n) for n in STUDENTS.names()]
    if args.only:
        models = [(f, n) for f, n in models if n in args.only]
    start = time.perf_counter()
    entries = []
    for family, name in models:
        registry = TEACHERS if family == "teacher" else STUDENTS
        report = check_model(family, name, registry.info(name).tiny_config, convert=args.convert)
        entries.append(as_entry(report, registry.origin(name)))
        print(f"{family:<8} {name:<26} {'ok' if report.ok else 'FAIL ' + ', '.join(entries[-1]['failed_stages'])}"
              f"  ({report.seconds:.1f} s)", flush=True)
    result = stamp(convert=args.convert, seconds=round(time.perf_counter() - start, 1), models=entries)
    intro = paragraph("""
        {measured}: `check_model(family, name, tiny_config, convert={convert})` on {count} registered models
        ({passed} passing every check, {seconds:.0f} s in all).  ONNX and TFLite columns are the
        PSNR of the exported fp32 model against PyTorch on a random packed input (100 dB = identical; the
        export stage needs 60).  *Kept whole* are the layers torch-pruning never prunes (`prune_ignore`, or
        the last conv when a model declares none); *folds* is what `compress.fold` merges for export; *taps*
        counts `feature_taps`.  A *note* is a failed check that no recipe puts the model through (a
        teacher is never folded, pruned or exported).  Each model's findings, word for word, are in
        `benchmarks/results/check_models.json`.""",
                      measured=measured_on(result), convert=args.convert, count=len(entries),
                      passed=sum(e["ok"] for e in entries), seconds=result["seconds"])
    publish("check_models", "The zoo, checked", intro, table(HEADER, [row(e) for e in entries]), result, doc=DOC)


if __name__ == "__main__":
    main()
