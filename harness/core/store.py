"""The result store: one JSON line per (suite, method, config hash, IPC, student, protocol, protocol hash,
seed), appended and never rewritten.

Each row is written with one `write` on a file opened for appending, then flushed to disk, so a crash
leaves at most a torn last line, which `read` skips. A rerun asks `has` before training anything.

Writes are idempotent by key, across processes too: `append` takes an exclusive `flock` on the file, reads
the lines other writers added since this store last looked, and writes only a key no one has stored, so two
runs that share a store (or a run that raced another past the output lock, harness/core/lock.py) never store one
result twice.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from harness.core.identity import ROW_KEY_FIELDS, row_key

# The project's own result stores, committed beside the board (leaderboard/results/<suite>.jsonl).
COMMITTED_RESULTS = Path(__file__).resolve().parents[2] / "leaderboard" / "results"


def _rows(data: bytes) -> list[dict]:
    rows = []
    for line in data.decode(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a crash mid-write
            continue
    return rows


def stored_rows(path: Path) -> list[dict]:
    """The rows of the store file at `path`, read without opening the store (no folder is made): [] where there
    is no file. For checks before a run, which must write nothing."""
    path = Path(path)
    return _rows(path.read_bytes()) if path.is_file() else []


class ResultStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._keys: set[tuple] = set()
        self._seen = 0  # bytes of the file whose keys are in `_keys`
        if self.path.exists():
            with open(self.path, "rb") as f:
                self._catch_up(f, locked=False)

    def read(self) -> list[dict]:
        return _rows(self.path.read_bytes()) if self.path.exists() else []

    def has(self, key: tuple) -> bool:
        return key in self._keys

    def _catch_up(self, f, locked: bool = True) -> None:
        """Add the keys of the lines written since `_seen` (by this store or any other process). Without the
        lock, a last line with no newline may be another writer's row in progress: it is left for later."""
        f.seek(self._seen)
        data = f.read()
        if not locked:
            complete = data[: data.rfind(b"\n") + 1]
            if data[len(complete) :] and not _rows(data[len(complete) :]):
                print(
                    f"[store] {self.path} ends in a torn line (a run killed while writing it): it is skipped, "
                    f"and its result is made again",
                    flush=True,
                )
            data = complete
        self._keys.update(row_key(r) for r in _rows(data) if all(k in r for k in ROW_KEY_FIELDS))
        self._seen += len(data)

    def append(self, row: dict) -> bool:
        """Store `row` unless its key is stored already; True if it was written."""
        key = row_key(row)
        if key in self._keys:
            return False
        data = json.dumps(row, sort_keys=True) + "\n"
        with open(self.path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or by the kernel if this process dies
            self._catch_up(f)
            if key in self._keys:  # another process stored it first
                return False
            f.seek(0, os.SEEK_END)
            if f.tell() and not self._ends_with_newline(f):
                data = "\n" + data  # start cleanly after a torn line
            f.write(data.encode())
            f.flush()
            os.fsync(f.fileno())
            self._seen = f.tell()
        self._keys.add(key)
        return True

    @staticmethod
    def _ends_with_newline(f) -> bool:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(0, os.SEEK_END)
        return last == b"\n"


def latest_external_sets(rows: list[dict]) -> dict[tuple[str, int], str]:
    """(name, IPC) → the config hash (the set's SHA-256) of the latest external set (`ddbench evaluate`, rows of kind
    "external") the store holds under them: the store is appended to, so the last row says which set a name stands
    for now at that IPC (harness/report/rows.py `external_rows`)."""
    return {(r["method"], r["ipc"]): r["config_hash"] for r in rows if r.get("kind") == "external"}
