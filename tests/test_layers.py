"""The house's layers: imports point down, never in a circle, and never from inside a function to dodge one;
methods import no stage module; protocol names live only in the protocol registry."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "methods")
# The house's floors, bottom first: a module imports only from its own floor or those below it. Each floor is a
# folder, so the folder listing is this table (README's layout table says what each holds).
LAYERS = (
    "harness.core",  # identity, atomic writes, the result store, the output lock, distilled-set folders
    "harness.models",  # data, generators, students, teachers, protocols, the training loop, set measures
    "methods",  # plain torch plug-ins; they see core and models only
    "harness.config",  # suite YAML → checked dataclasses
    "harness.runtime",  # Ray clusters, data-parallel workers, pre-flight checks
    "harness.stages",  # prepare, fine-tune, distill, evaluate, diversity, cross-arch, search
    "harness.report",  # the board, the site, comparisons, exports, the cost plan
    "harness.pipeline",  # the pipeline: one invocation's stages and what they produce
    "harness.flags",  # the command line's flags and the checks that need no heavy import (issue 30 item 7)
    "harness.cli",  # the verbs, handed over to the pipeline
)


def layer_of(module: str) -> int | None:
    """The floor a module sits on: the longest LAYERS prefix it has (None for the bare packages)."""
    found = [i for i, floor in enumerate(LAYERS) if module == floor or module.startswith(floor + ".")]
    return max(found, key=lambda i: len(LAYERS[i])) if found else None


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
    base = base[: len(base) - (node.level - 1)]
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
                return stack[stack.index(nxt) :] + [nxt]
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
    assert len(graph) > 20 and sum(map(len, graph.values())) > 40  # the walker found the real graph
    assert "methods.cao2" in graph["methods"]  # including the package's own imports
    assert find_cycle(graph) is None, f"import cycle: {' → '.join(find_cycle(graph))}"


def test_no_project_import_inside_a_function(edges):
    inside = sorted(f"{m} imports {t}" for m, targets in edges.items() for t, nested in targets if nested)
    assert not inside, "imports inside functions (move them to the top, or the code to a lower layer): " + "; ".join(
        inside
    )


def test_every_module_sits_on_a_floor():
    loose = sorted(m for m in _modules() if layer_of(m) is None and m not in PACKAGES)
    assert not loose, f"modules outside every floor of LAYERS (put them in a folder that is one): {loose}"


def upward_imports(edges: dict[str, set[tuple[str, bool]]]) -> list[str]:
    return sorted(
        f"{m} (floor {layer_of(m)}) → {t} (floor {layer_of(t)})"
        for m, targets in edges.items()
        if m != "harness"  # the bare package holds nothing; `methods` is the methods floor itself
        for t, _ in targets
        if t != "harness" and layer_of(t) > layer_of(m)
    )


def test_imports_point_down_the_floors(edges):
    up = upward_imports(edges)
    assert not up, "imports that point up a floor: " + "; ".join(up)
    # …and the walker sees the edges that matter: methods reach the generator code they share with the harness.
    assert ("harness.models.generators.sampling", False) in edges["methods.diffusion"]


def test_the_floor_rule_fails_on_an_upward_import():
    assert upward_imports({"methods.cao2": {("harness.stages.prepare", False)}}) == [
        "methods.cao2 (floor 2) → harness.stages.prepare (floor 5)"
    ]
    assert upward_imports({"harness.stages.distill": {("harness.report.leaderboard", False)}})
    assert upward_imports({"harness.models.data": {("methods", False)}})  # the bare package is the methods floor
    assert not upward_imports({"harness.report.site": {("harness.stages.distill", False), ("harness", False)}})


def test_protocol_names_live_only_in_the_protocol_registry():
    from harness.models.protocols import list_protocols

    names = re.compile("|".join(map(re.escape, list_protocols())))
    found = [
        f"{p.name}:{i}"
        for p in sorted((ROOT / "harness").rglob("*.py"))
        if p.name != "protocols.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if names.search(line)
    ]
    assert not found, found


def test_the_harness_names_no_method():
    """No string in harness/ is a registered method's name: methods are plug-ins, found by what they declare."""
    from methods import list_methods

    names = set(list_methods())

    def constants(tree):
        # A generator kind may share its name with the method that samples it plainly (kind `mar`, method `mar`):
        # the kind's declaration `kind = "mar"` names the kind, not the method.
        kinds = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["kind"]
        }
        return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in kinds]

    found = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}"
        for path in sorted((ROOT / "harness").rglob("*.py"))
        for node in constants(ast.parse(path.read_text()))
        if isinstance(node.value, str) and node.value in names
    ]
    assert not found, found


def _readme_layout_paths() -> list[str]:
    """The first column of README's generated layout table (between its layout:begin/end markers)."""
    text = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- layout:begin modules:.*?-->\n(.*?)<!-- layout:end -->", text, re.S)
    assert table, "README.md has no layout table between its layout:begin modules / layout:end markers"
    return re.findall(r"^\| `([^`]+)` \|", table.group(1), re.M)


def test_readme_layout_table_lists_every_module_and_no_other():
    """Each module of harness/ and methods/ has its row (a package as its folder); run
    `python3 scripts/layout_table.py --write` after adding, moving or removing one."""
    expected = {
        (m.replace(".", "/") + "/") if p.name == "__init__.py" else p.relative_to(ROOT).as_posix()
        for m, p in _modules().items()
        if m != "harness"
    }
    listed = [p for p in _readme_layout_paths() if p.split("/")[0] in PACKAGES]
    assert len(listed) == len(set(listed)), f"listed twice: {sorted({p for p in listed if listed.count(p) > 1})}"
    missing, gone = sorted(expected - set(listed)), sorted(set(listed) - expected)
    assert not missing and not gone, (
        f"README's layout table misses {missing} and lists {gone}, which do not exist; "
        "run python3 scripts/layout_table.py --write"
    )


def test_the_layout_tables_are_what_the_code_makes():
    """README's module table and docs/extending.md's floor table are made from the code's docstrings and floors;
    a changed docstring or a new module means `python3 scripts/layout_table.py --write`."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "layout_table.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
