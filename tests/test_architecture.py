"""The layer picture of docs/architecture.md, checked on the source: imports point one way, no file
circle, function-local imports only for heavy optional libraries, no package module over ~400 lines.

Run it alone to print the import graph's summary: ``python -m pytest -q -s tests/test_architecture.py``.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("teachers", "students", "distill", "compress", "recipes", "benchmarks")
"""Bottom to top: a module may import its own package and the packages below it, never above."""
PACKAGES = LAYERS[:-1]

HEAVY_OPTIONAL = {
    "tensorflow": "~10 s and 700 MB at import",
    "tf_keras": "TensorFlow",
    "onnx2tf": "imports TensorFlow",
    "onnxruntime": "only the export / x86 paths need it",
    "onnx": "only the export paths need it",
    "onnxsim": "only the export paths need it",
    "onnxscript": "only the export paths need it",
    "onnx_graphsurgeon": "only the export paths need it",
    "neural_compressor": "INC, optional x86 quantizer",
    "playwright": "the UI screenshot only",
    "ai_edge_litert": "the TFLite runtime: only paths that run a .tflite",
    "ai_edge_quantizer": "AI Edge Quantizer, only the benchmarked AEQ path (compress.quantization.aeq)",
    "mlflow": "~1.5 s at import; the CLI's offline commands never need it",
    "matplotlib": "plots only",
    "plotly": "plots only",
    "rawpy": "LibRaw, only for camera RAW files",
    "torch": "~2 s at import: `ispdc --help` and the bundle's reader run without it",
    "torchvision": "through teachers.torch_compat only",
    "torch_pruning": "through torch",
    "torchao": "PT2E QAT quantizer, only for quantize.qat",
}
"""Libraries a function may import where it needs them, and why they are not imported at the top."""
HEAVY_WRAPPERS = {
    "compress.quantization.qat": "subclasses torchao's PT2E Quantizer: importing it costs ~1.6 s and prints "
                                 "native-library warnings, so a recipe loads it only when it asks for QAT",
}
"""Project modules built on a heavy optional library at their top, imported where they are used."""
LAZY_PROJECT_IMPORTS = {"recipes/cli.py", "recipes/cli_tracking.py", "recipes/cli_bundle.py",
                        "recipes/cli_check.py"}
"""Command dispatch: each command imports only the modules it runs, so the CLI starts fast."""
MAX_LINES = 400
PAPER_MODELS = {"teachers/pynet.py", "teachers/aaunet.py", "students/pynetv2.py"}
"""Models written line by line after their papers' code: left whole for side-by-side reading."""


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import names (``compress.export.tflite.convert`` -> ``compress.export.tflite``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


class _Imports(ast.NodeVisitor):
    """Every import of a module with its line and whether it sits inside a function."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.depth = 0
        self.found: list[tuple[str, int, bool]] = []  # (imported name, line, function-local)

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, node.lineno, self.depth > 0) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        self.found.append((base, node.lineno, self.depth > 0))
        self.found += [(f"{base}.{alias.name}", node.lineno, self.depth > 0) for alias in node.names]


def _imports() -> dict[str, list[tuple[str, int, bool]]]:
    result = {}
    for module, path in MODULES.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), str(path)))
        result[module] = visitor.found
    return result


IMPORTS = _imports()


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, found in IMPORTS.items():
        for name, _, _ in found:
            target = _resolve(name)
            if target and target != module:
                edges[module].add(target)
    return edges


EDGES = _edges()


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def _rel(module: str) -> str:
    return str(MODULES[module].relative_to(ROOT))


def test_no_import_runs_up_a_layer() -> None:
    upward = sorted(f"{_rel(a)} imports {b} ({b.split('.')[0]} is above {a.split('.')[0]})"
                    for a, targets in EDGES.items() for b in targets if _layer(b) > _layer(a))
    assert not upward, "\n".join(upward)


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in MODULES:
        if start in index:
            continue
        work = [(start, iter(sorted(EDGES.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(EDGES.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_no_circle_of_files() -> None:
    cycles = _cycles()
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_function_local_imports_only_for_heavy_libraries() -> None:
    offenders = []
    for module, found in IMPORTS.items():
        rel = _rel(module)
        for name, line, local in found:
            if not local:
                continue
            top = name.split(".")[0]
            if top in HEAVY_OPTIONAL or top == "" or (top in LAYERS and rel in LAZY_PROJECT_IMPORTS):
                continue
            if _resolve(name) in HEAVY_WRAPPERS:
                continue
            if top in LAYERS or top not in sys.stdlib_module_names:
                offenders.append(f"{rel}:{line}: function-local import of {name}")
    assert not offenders, "\n".join(sorted(set(offenders)))


def test_benchmarks_use_public_names_only() -> None:
    private = sorted({f"{_rel(m)}:{line}: {name}" for m, found in IMPORTS.items() if m.startswith("benchmarks")
                      for name, line, _ in found
                      if name.split(".")[0] in PACKAGES and any(p.startswith("_") for p in name.split(".")[1:])})
    assert not private, "\n".join(private)


def test_package_modules_stay_small() -> None:
    long = sorted(f"{_rel(m)}: {n} lines" for m, p in MODULES.items()
                  if (n := len(p.read_text().splitlines())) > MAX_LINES and _rel(m) not in PAPER_MODELS)
    assert not long, "\n".join(long)


def test_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints the package-level graph: what each package imports (the picture in docs/architecture.md)."""
    packages: dict[str, set[str]] = defaultdict(set)
    for a, targets in EDGES.items():
        for b in targets:
            if a.split(".")[0] != b.split(".")[0]:
                packages[a.split(".")[0]].add(b.split(".")[0])
    with capsys.disabled():
        print(f"\n{len(MODULES)} modules, {sum(map(len, EDGES.values()))} import edges, "
              f"{len(_cycles())} file circles")
        for package in reversed(LAYERS):
            below = sorted(packages.get(package, ()), key=LAYERS.index)
            print(f"  {package:<10} imports {', '.join(below) or 'nothing of the project'}")
    assert set(packages.get("teachers", ())) == set()
