"""Print the repository's layout tables from the code: README's `| where | what |` table, one row per module of
harness/ and methods/ grouped by floor (the floors are tests/test_layers.py's LAYERS), each row its module
docstring's first sentence; and docs/extending.md's table of the floors.

    python3 scripts/layout_table.py            # print both tables
    python3 scripts/layout_table.py --write    # rewrite them in README.md and docs/extending.md
    python3 scripts/layout_table.py --check    # exit 1 if either file is not what --write would make

Each table sits between two marker comments (`<!-- layout:begin … -->`, `<!-- layout:end -->`) so that --write
replaces exactly the generated part. tests/test_layers.py fails when README's table misses a module or lists one
that is gone: a new module then needs a docstring and one run of --write.
"""

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "methods")
# The rest of the repository, below the code's rows: folders, not modules, so no docstring says what they hold.
FOLDERS = (
    ("weights/", "committed pretrained weights of the embedded suite (checksums and the command that made them)"),
    (
        "perf/",
        "scripts that print figures: generation, student and CLO throughput, repulsion on vs off "
        "(`repulsion_diversity.py`), every method rehearsed at true size (`rehearsal.py`, whose figures "
        "`benchmarks/rehearsal/` keeps for the plan)",
    ),
    ("docs/", "decisions and their reasons; `docs/extending.md`: how to add a method, a student, a protocol, a suite"),
)
README_TABLE = ("README.md", "modules")
EXTENDING_TABLE = ("docs/extending.md", "floors")
# A sentence ends at a full stop followed by a capital, a code span or a quote (not "et al., " nor "e.g. x").
SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z`\"(]|\s*$)")


def floors() -> tuple[str, ...]:
    """tests/test_layers.py's LAYERS, read without importing the test module (and pytest with it)."""
    tree = ast.parse((ROOT / "tests" / "test_layers.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "LAYERS" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise SystemExit("tests/test_layers.py defines no LAYERS")


def modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of harness/ and methods/ (a package is its __init__.py)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def where(module: str, path: Path) -> str:
    """The path a table shows: a package as its folder (`harness/core/`), a module as its file."""
    if path.name == "__init__.py":
        return module.replace(".", "/") + "/"
    return path.relative_to(ROOT).as_posix()


def floor_of(module: str, layers: tuple[str, ...]) -> str | None:
    found = [floor for floor in layers if module == floor or module.startswith(floor + ".")]
    return max(found, key=len) if found else None


def first_sentence(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text()))
    if not doc:
        raise SystemExit(f"{path.relative_to(ROOT)} has no docstring: its first sentence is its row in README's table")
    paragraph = " ".join(doc.split("\n\n")[0].split())
    end = SENTENCE_END.search(paragraph)
    sentence = paragraph[: end.end()] if end else paragraph
    return sentence.removesuffix(".").replace("|", "\\|")


def grouped() -> list[tuple[str, list[tuple[str, str]]]]:
    """Per floor, bottom first: its rows (where, what), the floor's own package or module first."""
    layers, found = floors(), modules()
    loose = sorted(m for m in found if floor_of(m, layers) is None and m not in PACKAGES)
    if loose:
        raise SystemExit(f"modules outside every floor of LAYERS: {', '.join(loose)}")
    out = []
    for floor in layers:
        rows = sorted((where(m, p), first_sentence(p)) for m, p in found.items() if floor_of(m, layers) == floor)
        out.append((floor, rows))
    return out


def modules_table() -> str:
    lines = ["| where | what |", "|---|---|"]
    for _, rows in grouped():
        lines += [f"| `{w}` | {what} |" for w, what in rows]
    lines += [f"| `{w}` | {what} |" for w, what in FOLDERS]
    return "\n".join(lines)


def floors_table() -> str:
    lines = ["| floor | what it holds | modules |", "|---|---|---|"]
    for _, rows in grouped():
        (top, what), *rest = rows
        names = ", ".join(f"`{w.removeprefix(top)}`" for w, _ in rest)
        lines.append(f"| `{top}` | {what} | {names or '—'} |")
    return "\n".join(lines)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- layout:begin {name}: made by scripts/layout_table.py --write -->", "<!-- layout:end -->"


def rewritten(text: str, name: str, table: str) -> str:
    begin, end = markers(name)
    pattern = re.compile(re.escape(begin) + r"\n.*?\n" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"no {begin} … {end} block to rewrite")
    return pattern.sub(lambda _: f"{begin}\n{table}\n{end}", text, count=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the tables in README.md and docs/extending.md")
    mode.add_argument("--check", action="store_true", help="exit 1 if a file's table is not the code's")
    args = p.parse_args(argv)
    tables = {README_TABLE: modules_table(), EXTENDING_TABLE: floors_table()}
    if not (args.write or args.check):
        print("\n\n".join(tables.values()))
        return 0
    stale = []
    for (file, name), table in tables.items():
        path = ROOT / file
        text = path.read_text()
        new = rewritten(text, name, table)
        if new != text:
            stale.append(file)
            if args.write:
                path.write_text(new)
    if args.check and stale:
        print(f"out of date (run python3 scripts/layout_table.py --write): {', '.join(stale)}", file=sys.stderr)
        return 1
    if args.write:
        print(f"rewrote {', '.join(stale)}" if stale else "already current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
