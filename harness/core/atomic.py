"""Writes that are whole or absent: every file and folder the harness publishes goes through here, so a run
killed at any instant leaves either the old state or the new one, never a torn file under the final name."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_path(path: Path) -> Path:
    """A sibling of `path`, private to this process, that `sweep_temps` recognises."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` in one rename, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj, indent: int | None = None) -> None:
    write_text(path, json.dumps(obj, indent=indent))


def torch_save(obj, path: Path) -> None:
    import torch

    with replacing(path) as tmp:
        torch.save(obj, tmp)


def publish_dir(tmp: Path, final: Path) -> bool:
    """Rename a finished folder into place. False (and `tmp` removed) if another attempt published first:
    outputs are deterministic, so its copy is the same."""
    try:
        os.rename(tmp, final)
        return True
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return False


def sweep_temps(folder: Path) -> None:
    """Remove what killed attempts left half-written in `folder`."""
    for stale in Path(folder).glob(".*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
