"""Which operators of a ``.tflite`` XNNPACK leaves to TFLite's own kernels.

On a CPU the TFLite interpreter hands every op XNNPACK supports to its delegate; the rest run on
TFLite's built-in kernels, with the graph split into partitions around them.  An INT8 model is only
fast when XNNPACK takes (nearly) all of it: a left-out op runs on slower reference-style int8
kernels and every partition boundary costs a hand-over.  Support differs by type: e.g. in
ai-edge-litert 2.3 XNNPACK takes float ``HARD_SWISH``, ``PRELU`` and ``MINIMUM`` but not their INT8
forms, so an op list alone does not say whether INT8 will pay off; this module asks the interpreter.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

DELEGATE_OP = "DELEGATE"


def _node_inventory(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[int]]:
    """(original nodes, delegate nodes, graph-output tensor ids) after the default delegates ran."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()  # the XNNPACK delegate is applied here
    nodes = interpreter._get_ops_details()  # noqa: SLF001 - the only Python view of the delegated graph
    delegates = [n for n in nodes if n["op_name"] == DELEGATE_OP]
    originals = [n for n in nodes if n["op_name"] != DELEGATE_OP]
    outputs = {int(d["index"]) for d in interpreter.get_output_details()}
    return originals, delegates, outputs


def xnnpack_report(path: Path) -> dict[str, Any]:
    """``{"undelegated": [op names], "partitions": n, "ops": n}`` for ``path`` on this CPU.

    The interpreter keeps the replaced nodes in its node list beside the ``DELEGATE`` nodes that took
    them over.  A node ran by TFLite itself is one whose output feeds a delegate node or is a graph
    output without being produced by a delegate, or whose output another such node reads; walking
    the nodes backwards settles each from its consumers.  ``partitions`` counts the delegate nodes
    (1 when XNNPACK took the whole graph, 0 when it took nothing).
    """
    originals, delegates, graph_outputs = _node_inventory(Path(path))
    made_by_delegate = {int(t) for d in delegates for t in d["outputs"]}
    read_by_delegate = {int(t) for d in delegates for t in d["inputs"]}
    readers: dict[int, list[int]] = {}
    for node in originals:
        for tensor in node["inputs"]:
            readers.setdefault(int(tensor), []).append(int(node["index"]))
    outside: set[int] = set()
    for node in reversed(originals):  # the node list is in execution (topological) order
        outs = [int(t) for t in node["outputs"]]
        if any(t in made_by_delegate for t in outs):
            continue
        if any(t in read_by_delegate or t in graph_outputs for t in outs) or any(
                reader in outside for t in outs for reader in readers.get(t, [])):
            outside.add(int(node["index"]))
    return {"undelegated": [str(n["op_name"]) for n in originals if int(n["index"]) in outside],
            "partitions": len(delegates), "ops": len(originals)}


def xnnpack_undelegated_ops(path: Path) -> list[str]:
    """Op names (execution order, repeats kept) that run outside XNNPACK; ``[]`` when it takes all."""
    return xnnpack_report(path)["undelegated"]
