"""The result store: one JSON line per (suite, method, config hash, IPC, student, protocol, protocol hash,
seed), appended and never rewritten.

Each row is written with one `write` on a file opened for appending, then flushed to disk, so a crash
leaves at most a torn last line, which `read` skips. A rerun asks `has` before training anything.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

KEY_FIELDS = ("suite", "method", "config_hash", "ipc", "student", "protocol", "protocol_hash", "seed")


def row_key(row: dict) -> tuple:
    return tuple(row[k] for k in KEY_FIELDS)


class ResultStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._keys = {row_key(r) for r in self.read()}

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a crash mid-write
                continue
        return rows

    def has(self, key: tuple) -> bool:
        return key in self._keys

    def append(self, row: dict) -> None:
        key = row_key(row)
        if key in self._keys:
            return
        data = json.dumps(row, sort_keys=True) + "\n"
        with open(self.path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() and not self._ends_with_newline(f):
                data = "\n" + data  # start cleanly after a torn line
            f.write(data.encode())
            f.flush()
            os.fsync(f.fileno())
        self._keys.add(key)

    @staticmethod
    def _ends_with_newline(f) -> bool:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(0, os.SEEK_END)
        return last == b"\n"
