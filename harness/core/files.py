"""Reading what a stage cached: the progress line, a JSON record with its required keys, and the rule that a
damaged cache entry is dropped (and so made again) unless it is the repository's committed weights."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


def log(msg: str) -> None:
    print(msg, flush=True)


def _committed(path: Path) -> bool:
    return Path(path).resolve().is_relative_to(REPO_WEIGHTS)


def _damage(load, path: Path) -> str | None:
    """Why `load(path)` fails on a cached file or folder (truncated, torn, half-deleted), or None."""
    try:
        load(path)
    except Exception as e:  # torch, safetensors and json each raise their own kinds for a damaged file
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e).strip() else 'unreadable'}"[:200]
    return None


def drop_damaged(path: Path, what: str, load, redo: str) -> None:
    """Delete `path` if it exists but does not load, saying so in one line: the caller makes it again. The
    repository's committed weights are never deleted: their checksums are verified (`_cached_dir`)."""
    path = Path(path)
    if not path.exists() or _committed(path) or not (damage := _damage(load, path)):
        return
    log(f"[prepare] {what}: the cached {path} is damaged ({damage}); {redo}")
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def read_json(path: Path, keys: tuple[str, ...]) -> dict:
    data = json.loads(Path(path).read_text())
    missing = [k for k in keys if k not in data]
    if missing:
        raise KeyError(f"no {', '.join(missing)}")
    return data
