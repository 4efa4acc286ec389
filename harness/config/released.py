"""The registry of distilled sets the papers released (benchmarks/released/<name>.yaml): where each is downloaded,
its SHA-256 where one was checked, its suite, IPC, class order and licence, and the accuracy its paper reports for
it. `ddbench fetch-set NAME` (harness/runtime/released_sets.py) reads one entry; a bad entry is one line.

A registry file holds one set:

    name: sre2l-in1k-rn18-4k-ipc50      # the file's stem
    paper: "..."                        # the paper that made the set
    repository: "..."                   # where the download link was read (repository, file, commit)
    suite: imagenet                     # the ddbench suite it is evaluated under; null where the archive holds several
    ipc: 50                             # images per class; null where the archive holds several sets
    download: url                       # url (urllib fetches it), manual (a browser must: Google Drive), huggingface
    url: https://...                    # the file, or the page a person downloads it from
    file: sre2l_in1k_rn18_4k_ipc50.zip  # the name it is saved under (default: the URL's last part)
    huggingface: {repo: ..., folder: ...}  # download: huggingface only: a folder of a Hugging Face dataset repository
    sha256: null                        # 64 hex digits, or null: unverified (fetch-set refuses unless --record-hash)
    class_order: {folders: index, order: "...", source: "..."}  # folders: index, wnid or name
    licence: "..."
    reported: {accuracy: 46.8, std: 0.2, student: resnet18, protocol: "...", table: "..."}  # or null
    notes: "..."
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

from harness.config.text import BENCHMARKS_DIR

RELEASED_DIR = BENCHMARKS_DIR / "released"
DOWNLOADS = ("url", "manual", "huggingface")
CLASS_FOLDERS = ("index", "wnid", "name")
SHA256 = re.compile(r"[0-9a-f]{64}")
FIELDS = {
    "name",
    "paper",
    "repository",
    "suite",
    "ipc",
    "download",
    "url",
    "file",
    "huggingface",
    "sha256",
    "class_order",
    "licence",
    "reported",
    "notes",
}
REQUIRED = ("name", "paper", "repository", "suite", "ipc", "download", "url", "sha256", "class_order", "licence")
REPORTED_FIELDS = {"accuracy", "std", "student", "protocol", "table"}


class ReleasedError(Exception):
    """A registry entry that cannot be read, or a set that cannot be fetched: one line for the user."""


@dataclass(frozen=True)
class Reported:
    """The accuracy (%) the set's paper reports for it, with the student and recipe it was trained under."""

    accuracy: float
    student: str
    protocol: str
    table: str
    std: float | None = None


@dataclass(frozen=True)
class ReleasedSet:
    name: str
    paper: str
    repository: str
    suite: str | None
    ipc: int | None
    download: str
    url: str
    file: str
    sha256: str | None  # None: never checked against the real file (this registry was written without a network)
    class_folders: str  # how the set's class folders are named: index, wnid or name
    class_order: str  # what an index means, or how names map to the suite's classes
    class_order_source: str
    licence: str
    huggingface_repo: str | None = None
    huggingface_folder: str | None = None
    reported: Reported | None = None
    notes: str = ""
    source: str = ""  # the registry file


def _text(entry: dict, key: str, where: str, optional: bool = False) -> str | None:
    value = entry.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ReleasedError(f"{where}: {key}: expected a non-empty string, got {value!r}")
    return value.strip()


def parse_entry(entry, where: str, name: str) -> ReleasedSet:
    """One registry file's mapping, checked field by field (`where` names the file in the one-line errors)."""
    if not isinstance(entry, dict):
        raise ReleasedError(f"{where}: expected a mapping of fields, got {type(entry).__name__}")
    unknown = sorted(set(entry) - FIELDS)
    if unknown:
        raise ReleasedError(f"{where}: unknown fields {', '.join(unknown)} (known: {', '.join(sorted(FIELDS))})")
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        raise ReleasedError(f"{where}: missing fields {', '.join(missing)} (null where unknown: suite, ipc, sha256)")
    if entry["name"] != name:
        raise ReleasedError(f"{where}: name: {entry['name']!r} is not the file's name {name!r}")
    ipc = entry["ipc"]
    if ipc is not None and (isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1):
        raise ReleasedError(f"{where}: ipc: expected a positive integer or null, got {ipc!r}")
    download = entry["download"]
    if download not in DOWNLOADS:
        raise ReleasedError(f"{where}: download: expected one of {', '.join(DOWNLOADS)}, got {download!r}")
    url = _text(entry, "url", where)
    if urlparse(url).scheme not in ("http", "https", "file"):
        raise ReleasedError(f"{where}: url: expected an http(s) or file URL, got {url!r}")
    sha = entry["sha256"]
    if sha is not None and not (isinstance(sha, str) and SHA256.fullmatch(sha)):
        raise ReleasedError(f"{where}: sha256: expected 64 lowercase hex digits or null (unverified), got {sha!r}")
    hf = entry.get("huggingface")
    if (download == "huggingface") != (hf is not None):
        raise ReleasedError(
            f"{where}: huggingface: {{repo, folder}} is given with download: huggingface, and only then"
        )
    if hf is not None and not (isinstance(hf, dict) and set(hf) == {"repo", "folder"}):
        raise ReleasedError(f"{where}: huggingface: expected {{repo: OWNER/NAME, folder: PATH}}, got {hf!r}")
    order = entry["class_order"]
    if not isinstance(order, dict) or set(order) != {"folders", "order", "source"}:
        raise ReleasedError(f"{where}: class_order: expected {{folders, order, source}}, got {order!r}")
    if order["folders"] not in CLASS_FOLDERS:
        raise ReleasedError(
            f"{where}: class_order.folders: expected one of {', '.join(CLASS_FOLDERS)}, got {order['folders']!r}"
        )
    reported = entry.get("reported")
    if reported is not None:
        if not isinstance(reported, dict) or not {"accuracy", "student", "protocol", "table"} <= set(reported):
            raise ReleasedError(f"{where}: reported: expected {{accuracy, student, protocol, table[, std]}} or null")
        if set(reported) - REPORTED_FIELDS:
            raise ReleasedError(
                f"{where}: reported: unknown fields {', '.join(sorted(set(reported) - REPORTED_FIELDS))}"
            )
        accuracy = reported["accuracy"]
        if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0 < accuracy <= 100:
            raise ReleasedError(f"{where}: reported.accuracy: expected a percentage in (0, 100], got {accuracy!r}")
        reported = Reported(
            float(accuracy),
            str(reported["student"]),
            str(reported["protocol"]),
            str(reported["table"]),
            None if reported.get("std") is None else float(reported["std"]),
        )
    suite = _text(entry, "suite", where, optional=True)
    file = _text(entry, "file", where, optional=True) or Path(urlparse(url).path).name
    if download != "huggingface" and (not file or "/" in file or file in (".", "..")):
        raise ReleasedError(f"{where}: file: expected a plain file name to save the download under, got {file!r}")
    return ReleasedSet(
        name=name,
        paper=_text(entry, "paper", where),
        repository=_text(entry, "repository", where),
        suite=suite,
        ipc=ipc,
        download=download,
        url=url,
        file=file,
        sha256=sha,
        class_folders=order["folders"],
        class_order=str(order["order"]),
        class_order_source=str(order["source"]),
        licence=_text(entry, "licence", where),
        huggingface_repo=hf["repo"] if hf else None,
        huggingface_folder=hf["folder"] if hf else None,
        reported=reported,
        notes=str(entry.get("notes") or ""),
        source=where,
    )


def registry_names(folder: Path = RELEASED_DIR) -> list[str]:
    return sorted(p.stem for p in Path(folder).glob("*.yaml"))


def load_released(name: str, folder: Path = RELEASED_DIR) -> ReleasedSet:
    """The registry entry `name` (benchmarks/released/<name>.yaml, or under `folder`)."""
    path = Path(folder) / f"{name}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or not path.is_file():
        known = ", ".join(registry_names(folder)) or "none"
        raise ReleasedError(f"{folder}: no released set {name!r} (the registry has: {known})")
    try:
        entry = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ReleasedError(f"{path}: not valid YAML{line}: {getattr(e, 'problem', e)}") from None
    return parse_entry(entry, str(path), name)
