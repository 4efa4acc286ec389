"""A suite's text as one merged mapping: its file (by name from benchmarks/ or by path), read as UTF-8 YAML, the
chosen profile and the files it includes, `${VAR}` expansion and command-line overrides. It imports no torch and no
registry, so the command line answers a missing or unreadable suite, a YAML mistake, an unknown profile or an unset
variable in well under a second, before the heavy imports (issue 30 item 7); harness/config/loader.py builds and
checks the mapping."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import yaml

BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


class SuiteError(Exception):
    """A suite file is wrong; the message is one line naming the file and the field."""


_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _expand_env(value, where: str = "", source: str = ""):
    """`${VAR}` / `${VAR:-default}` in strings, so a suite can point at data without being edited. An unset
    `${VAR}` without a default is an error naming the field: expanded to "" it would point somewhere else."""
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k), source) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if isinstance(value, str):

        def expand(m):
            if m.group(1) not in os.environ and m.group(2) is None:
                raise SuiteError(
                    f"{source}: {where}: environment variable {m.group(1)} is not set; set it, or "
                    f"write ${{{m.group(1)}:-default}}"
                )
            return os.environ.get(m.group(1), m.group(2) or "")

        return _ENV.sub(expand, value)
    return value


class _DuplicateKey(yaml.MarkedYAMLError):
    def __init__(self, where: str, first_line: int, mark):
        super().__init__(problem=f"duplicate key (first at line {first_line + 1})", problem_mark=mark)
        self.where = where


class _SuiteLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key given twice in one mapping (plain YAML keeps the later value silently),
    naming the key's path. Paths are handed down from each mapping to its children before they are built."""

    def construct_mapping(self, node, deep=False):
        paths = self.__dict__.setdefault("_paths", {})
        where = paths.get(id(node), "")
        first: dict = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            path = f"{where}.{key}" if where else str(key)
            if key is not None and key != "<<":
                if key in first:
                    raise _DuplicateKey(path, first[key], key_node.start_mark)
                first[key] = key_node.start_mark.line
            self._hand_down(value_node, path)
        return super().construct_mapping(node, deep)

    def _hand_down(self, node, path: str) -> None:
        self._paths[id(node)] = path
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._hand_down(item, f"{path}[{i}]")


def _parse_yaml(text: str, source: str):
    """The suite's YAML; a mistake is one line with its line and column."""
    try:
        return yaml.load(text, Loader=_SuiteLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        if isinstance(e, _DuplicateKey):
            raise SuiteError(
                f"{source}: {e.where}: {e.problem} at {at}: the later value would silently replace the first; keep one"
            ) from None
        what = "; ".join(part for part in (e.context, e.problem) if part)
        raise SuiteError(f"{source}: {at}: not valid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise SuiteError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None


def _read_text(path: Path, where: str) -> str:
    """A suite file's text; bytes that are not UTF-8 (a file saved as Latin-1 or UTF-16, a binary) are one line."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SuiteError(
            f"{where}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from None


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_suite_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return BENCHMARKS_DIR / f"{name_or_path}.yaml"


def read_suite(name_or_path: str, profile: str = "full", overrides: dict | None = None) -> tuple[dict, str]:
    """The suite's mapping with the profile, its includes and the overrides merged and variables expanded, and the
    file's path as the messages name it. Raises SuiteError (one line)."""
    path = resolve_suite_path(name_or_path)
    source = str(path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in BENCHMARKS_DIR.glob("*.yaml")))
        raise SuiteError(f"{source}: no such suite file (suites in benchmarks/: {known})")
    raw = _parse_yaml(_read_text(path, source), source)
    if not isinstance(raw, dict):
        raise SuiteError(f"{source}: top level: expected a mapping")
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise SuiteError(f"{source}: profiles: expected a mapping of profile name to overrides")
    if profile == QUICK and QUICK not in profiles:
        raw = _merge(raw, builtin_quick(raw))
    elif profile != "full":
        if profile not in profiles:
            raise SuiteError(f"{source}: profiles.{profile}: no such profile (have: {', '.join(['full', *profiles])})")
        if not isinstance(profiles[profile], dict):
            raise SuiteError(f"{source}: profiles.{profile}: expected a mapping of the fields it overrides")
        raw = _merge(raw, _with_includes(profiles[profile], f"profiles.{profile}", path))
    # Profiles not chosen are not expanded: a variable only another profile uses need not be set.
    raw = {k: v if k == "profiles" else _expand_env(v, k, source) for k, v in _merge(raw, overrides or {}).items()}
    if isinstance(raw.get("backbones"), dict):  # a further section is named by its kind, which it need not repeat
        raw["backbones"] = {k: {"kind": k, **v} if isinstance(v, dict) else v for k, v in raw["backbones"].items()}
    return raw, source


QUICK = "quick"


def builtin_quick(raw: dict) -> dict:
    """`--profile quick` on a suite that defines no `quick` profile (issue 31, item 3): a smoke run of the suite as
    written, smaller in every dimension that does not change what is prepared — the suite's IPCs up to 10 (its
    smallest where none is), one seed, no full-data row, a quarter of each epoch count the suite's protocols write
    (at least 1) — said in the board's notes. The backbone, teacher and check are the full profile's, so a quick
    run reuses them and what it prepares serves the full run."""
    ipcs = raw.get("ipcs") if isinstance(raw.get("ipcs"), list) else []
    numbers = [i for i in ipcs if isinstance(i, int) and not isinstance(i, bool)]
    quick: dict = {"seeds": 1, "full_data": {"epochs": 0}}
    if numbers:
        quick["ipcs"] = [i for i in numbers if i <= 10] or [min(numbers)]
    protocols = {}
    for name, p in (raw.get("protocols") or {}).items() if isinstance(raw.get("protocols"), dict) else []:
        epochs = p.get("epochs") if isinstance(p, dict) else None
        if isinstance(epochs, dict) and all(isinstance(e, int) and not isinstance(e, bool) for e in epochs.values()):
            protocols[name] = {"epochs": {k: max(1, e // 4) for k, e in epochs.items()}}
    if protocols:
        quick["protocols"] = protocols
    said = "IPCs up to 10, 1 seed, no full-data row" + (", a quarter of the epochs" if protocols else "")
    notes = raw.get("notes") if isinstance(raw.get("notes"), list) else []
    quick["notes"] = [*notes, f"--profile quick: the built-in quick profile (the suite defines none): {said}"]
    return quick


def _with_includes(profile: dict, where: str, suite_path: Path) -> dict:
    """A profile with the fragments its `include:` lists (files, relative to the suite's folder: e.g. a search's
    `search/d4m.yaml`) merged under its own fields."""
    includes = profile.get("include", [])
    includes = [includes] if isinstance(includes, str) else includes
    source = str(suite_path)
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise SuiteError(f"{source}: {where}.include: expected a list of YAML files")
    merged: dict = {}
    for i, name in enumerate(includes):
        path = Path(_expand_env(name, f"{where}.include[{i}]", source))  # an unset variable is named, as elsewhere
        path = path if path.is_absolute() else suite_path.parent / path
        if not path.is_file():
            raise SuiteError(f"{source}: {where}.include[{i}]: {path} is not a file")
        fragment = _parse_yaml(_read_text(path, f"{source}: {where}.include[{i}]: {path}"), str(path))
        if not isinstance(fragment, dict):
            raise SuiteError(f"{source}: {where}.include[{i}]: {path} is not a mapping of suite fields")
        merged = _merge(merged, fragment)
    return _merge(merged, {k: v for k, v in profile.items() if k != "include"})
