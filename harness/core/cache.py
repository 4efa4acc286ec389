"""The content-addressed cache every stage keeps under `<out>/cache/`: a file named by the hash of what made it
is read back if it loads, made again (and said so, in one line) if it is damaged, and otherwise made and
written whole (harness/core/atomic.py). The repository's committed `weights/` stand in for the cache where they
hold the same name, and are verified by their checksums instead of being dropped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.core import atomic

REPO_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


def log(msg: str) -> None:
    print(msg, flush=True)


def committed(path: Path) -> bool:
    return Path(path).resolve().is_relative_to(REPO_WEIGHTS)


def damage(load, path: Path) -> str | None:
    """Why `load(path)` fails on a cached file or folder (truncated, torn, half-deleted), or None."""
    try:
        load(path)
    except Exception as e:  # torch, safetensors and json each raise their own kinds for a damaged file
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e).strip() else 'unreadable'}"[:200]
    return None


def drop_damaged(path: Path, what: str, load, redo: str) -> None:
    """Delete `path` if it exists but does not load, saying so in one line: the caller makes it again. The
    repository's committed weights are never deleted: their checksums are verified (`cached_dir`)."""
    path = Path(path)
    if not path.exists() or committed(path) or not (why := damage(load, path)):
        return
    log(f"[prepare] {what}: the cached {path} is damaged ({why}); {redo}")
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def read_json(path: Path, keys: tuple[str, ...]) -> dict:
    data = json.loads(Path(path).read_text())
    missing = [k for k in keys if k not in data]
    if missing:
        raise KeyError(f"no {', '.join(missing)}")
    return data


def cached_dir(out: Path, name: str) -> Path:
    """The committed copy in weights/<any suite>/ if there is one (checksums verified), else the run's own cache.
    `name` carries the content hash, so a renamed copy of a suite finds the weights its original committed."""
    committed_copy = next(iter(sorted(REPO_WEIGHTS.glob(f"*/{name}"))), None)
    if committed_copy is None:
        return Path(out) / "cache" / name
    sums = committed_copy.parent / "SHA256SUMS"
    for line in sums.read_text().splitlines() if sums.exists() else []:
        digest, rel = line.split(maxsplit=1)
        if rel.startswith(name + "/") and hashlib.sha256((sums.parent / rel).read_bytes()).hexdigest() != digest:
            raise RuntimeError(f"committed weights {sums.parent / rel} do not match {sums}: re-fetch the repository")
    return committed_copy


def committed_record(name: str) -> Path | None:
    """A record (a JSON file) the repository committed beside its weights, weights/<any suite>/`name`, verified by
    that folder's checksums; None where there is none. A record is named by the hash of what made it, as a cache
    entry is, so one found here is what the run would make: the same models, data and settings."""
    found = next(iter(sorted(REPO_WEIGHTS.glob(f"*/{name}"))), None)
    if found is None:
        return None
    sums = found.parent / "SHA256SUMS"
    listed = dict(reversed(line.split(maxsplit=1)) for line in sums.read_text().splitlines()) if sums.exists() else {}
    if listed.get(name) != hashlib.sha256(found.read_bytes()).hexdigest():
        raise RuntimeError(f"committed record {found} does not match {sums}: re-fetch the repository")
    return found


@contextmanager
def filling(folder: Path) -> Iterator[Path]:
    """Work that makes `folder` (a cache entry) and writes into it: if the work fails or is interrupted (Ctrl-C,
    SIGTERM) and leaves the folder empty, the folder goes too, so a killed run leaves no empty
    `backbone-<hash>/` or `teacher-<hash>/` that looks like an entry (issue 31, item 6). What it did write stays."""
    folder = Path(folder)
    existed = folder.exists()
    try:
        yield folder
    except BaseException:
        if not existed and folder.is_dir() and not committed(folder) and not any(folder.iterdir()):
            folder.rmdir()
        raise


def ensure(path: Path, what: str, load, redo: str, make: Callable[[Path], None]) -> bool:
    """`path` as the cache holds it, or made by `make(path)` (which writes it whole) where it is missing or
    damaged; whether it was made."""
    drop_damaged(path, what, load, redo)
    if Path(path).exists():
        return False
    make(path)
    return True


def ensure_json(
    path: Path,
    what: str,
    keys: tuple[str, ...],
    redo: str,
    make: Callable[[], dict],
    indent: int | None = None,
    from_weights: bool = False,
) -> dict:
    """The cached record at `path` (damaged, or lacking any of `keys`: made again), else `make()`'s, written.
    `from_weights`: where the cache has none, the record of the same name committed beside the weights
    (`committed_record`) is copied into the cache instead of being made, and the run says so in one line."""
    drop_damaged(path, what, lambda f: read_json(f, keys), redo)
    if not Path(path).exists() and from_weights and (copy := committed_record(Path(path).name)) is not None:
        read_json(copy, keys)  # a committed record lacking a key is a repository fault: say so, do not remake it
        atomic.write_text(path, copy.read_text())
        log(
            f"[prepare] {what}: taken from {copy.relative_to(REPO_WEIGHTS.parent)} (the same models, data and settings)"
        )
    if Path(path).exists():
        return json.loads(Path(path).read_text())
    result = make()
    atomic.write_json(path, result, indent=indent)
    return result
