"""Layers point down: no import cycle between the project's packages, counting every import statement (function-level
ones too, which only hide a cycle from the interpreter, not from a reader)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "longlive"


def _node(module: str) -> str:
    """The graph node of a module: its subpackage (longlive.train.data -> train) or top-level module (cli)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "longlive"


def import_graph() -> dict[str, dict[str, list[str]]]:
    """{node: {imported node: ["file:line", ...]}} over every import of a longlive module."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        here = _node(".".join(parts))
        package = parts if rel.name == "__init__" else parts[:-1]
        for stmt in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(stmt, ast.Import):
                targets = [a.name for a in stmt.names]
            elif isinstance(stmt, ast.ImportFrom):
                base = package[: len(package) - stmt.level + 1] if stmt.level else []
                targets = [".".join([*base, stmt.module] if stmt.module else base)]
            else:
                continue
            for t in targets:
                if t.startswith("longlive.") and _node(t) != here:
                    graph.setdefault(here, {}).setdefault(_node(t), []).append(f"{rel}.py:{stmt.lineno}")
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, {}):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycle_between_packages():
    graph = import_graph()
    assert {"model", "quant", "measure"} <= set(graph["infer"]) and "train" in graph["workloads"]  # really built
    cycle = find_cycle(graph)
    where = [f"{a} -> {b} at {graph[a][b][:3]}" for a, b in zip(cycle, cycle[1:], strict=False)] if cycle else []
    assert cycle is None, "import cycle: " + "; ".join(where)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": []}, "b": {"c": []}}) is None
    assert find_cycle({}) is None


def test_ground_floor_packages_import_no_upper_layer():
    graph = import_graph()
    for low, high in (("model", "quant"), ("model", "infer"), ("measure", "infer"), ("measure", "train"),
                      ("eval", "train"), ("parallel", "train"), ("workloads", "runner"),
                      ("experiments", "infer"), ("experiments", "runner"), ("infer", "workloads")):
        assert high not in graph.get(low, {}), f"{low} imports {high}: {graph[low][high][:3]}"
    assert not graph.get("names"), f"longlive.names is the ground floor and imports nothing: {graph.get('names')}"
    assert not graph.get("filecheck"), f"longlive.filecheck is the ground floor: {graph.get('filecheck')}"
    assert "filecheck" in graph["model"] and "filecheck" in graph["infer"]  # used from the floor up (really built)


OPTIONAL_EXTRAS = {"transformer_engine", "triton", "vbench", "cv2", "wandb", "cudnn"}
"""What a function may import: optional extras probed where they are used (not installed with the package, or only
with a CUDA build of torch). Everything else, the project's own modules first, is imported at module top."""
OPTIONAL_MODULES = {"torch.utils.tensorboard"}
"""Modules of required packages that need an optional extra (torch's TensorBoard writer needs `tensorboard`)."""
DEFERRED = {"torch.nn.attention.flex_attention"}
"""Parts of torch whose import loads the compiler stack (torch._dynamo, 1-3 s per process): imported where used, so
the many cells and commands that never compile start fast. `torch._dynamo` / `torch._inductor` themselves are reached
as attributes of `torch`, which loads them on first use."""


def test_imports_sit_at_module_top_unless_probing_an_optional_extra():
    inside = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for stmt in ast.walk(fn):
                if isinstance(stmt, ast.Import):
                    names = [a.name for a in stmt.names]
                elif isinstance(stmt, ast.ImportFrom):
                    names = ["." if stmt.level else (stmt.module or "")]
                else:
                    continue
                inside += [f"{path.relative_to(PACKAGE.parent)}:{stmt.lineno} {n}" for n in names
                           if n.split(".")[0] not in OPTIONAL_EXTRAS and n not in DEFERRED | OPTIONAL_MODULES]
    assert not inside, "function-level imports (move them to the module top): " + "; ".join(inside)
