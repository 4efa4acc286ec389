"""The house's layers: imports point down, never in a circle, and never from inside a function to dodge one;
methods import no stage module; protocol names live only in the protocol registry."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "methods")
# The stage modules: what runs the pipeline. Methods are plain torch and import none of them.
STAGES = {"harness.suite", "harness.prepare", "harness.distill", "harness.evaluate", "harness.diversity",
          "harness.cross_arch", "harness.leaderboard", "harness.store", "harness.cli", "harness.training",
          "harness.data_parallel", "harness.plan", "harness.site", "harness.export", "harness.search",
          "harness.fine_tune"}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges(modules: dict[str, Path]) -> dict[str, set[tuple[str, bool]]]:
    """module → {(imported project module, imported inside a function?)}. `from pkg import name` counts as an
    import of `pkg.name` where that is a module, else of `pkg`."""
    edges: dict[str, set[tuple[str, bool]]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        is_package = path.name == "__init__.py"
        nested = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                nested |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, is_package, node)
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != module:
                    edges[module].add((target, id(node) in nested))
        if is_package and "pkgutil.iter_modules(__path__)" in path.read_text():  # imports all its modules itself
            edges[module] |= {(m, False) for m in modules if m != module and m.rsplit(".", 1)[0] == module}
    return edges


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.fixture(scope="module")
def edges():
    return import_edges(_modules())


def test_the_walker_sees_a_cycle_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_harness_and_methods(edges):
    graph = {m: {target for target, _ in targets} for m, targets in edges.items()}
    assert len(graph) > 20 and sum(map(len, graph.values())) > 40   # the walker found the real graph
    assert "methods.cao2" in graph["methods"]                       # including the package's own imports
    assert find_cycle(graph) is None, f"import cycle: {' → '.join(find_cycle(graph))}"


def test_no_project_import_inside_a_function(edges):
    inside = sorted(f"{m} imports {t}" for m, targets in edges.items() for t, nested in targets if nested)
    assert not inside, "imports inside functions (move them to the top, or the code to a lower layer): " + "; ".join(inside)


def test_methods_import_no_stage_module(edges):
    bad = sorted(f"{m} → {t}" for m, targets in edges.items() if m.startswith("methods")
                 for t, _ in targets if t in STAGES)
    assert not bad, bad
    # …and they can reach the backbone code they share with the harness.
    assert ("harness.backbones.sampling", False) in edges["methods.diffusion"]


def test_protocol_names_live_only_in_the_protocol_registry():
    from harness.protocols import list_protocols

    names = re.compile("|".join(map(re.escape, list_protocols())))
    found = [f"{p.name}:{i}" for p in sorted((ROOT / "harness").glob("*.py")) if p.name != "protocols.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if names.search(line)]
    assert not found, found


def test_the_harness_names_no_method():
    """No string in harness/ is a registered method's name: methods are plug-ins, found by what they declare."""
    from methods import list_methods

    names = set(list_methods())
    found = [f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}" for path in sorted((ROOT / "harness").rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names]
    assert not found, found
