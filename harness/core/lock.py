"""One run at a time per output folder: a verb that writes under `--out` holds an exclusive `flock` on
`<out>/.ddbench.lock` for its whole length (harness/pipeline.py). A second run on the same `--out` waits, saying
who holds the folder (pid, host, start time, written into the lock file by the holder), and then finds the first
run's work done: reruns recompute nothing.

The kernel drops the lock when its holder exits, however it exits (kill -9 included), so a stale lock file
from a dead run never blocks: its text is only read to say who held it. On NFS, Linux emulates `flock` with
POSIX byte-range locks, so runs on different hosts sharing `--out` exclude each other too.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".ddbench.lock"


def holder(out: Path) -> str:
    """Who holds (or last held) `out`'s lock, as its lock file says."""
    try:
        h = json.loads((Path(out) / LOCK_FILE).read_text())
        return f"pid {h['pid']} on {h['host']}, running since {h['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a run that has not yet written who it is"


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold `out` for this run; wait (with one line saying for whom) while another run holds it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[lock] {out} is in use by {holder(out)}; waiting for it to finish (Ctrl-C to stop)", flush=True)
            t0 = time.perf_counter()
            fcntl.flock(f, fcntl.LOCK_EX)
            print(f"[lock] {out} is free after {time.perf_counter() - t0:.0f} s; going on", flush=True)
        f.seek(0)
        f.truncate()
        f.write(
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
            )
        )
        f.flush()
        yield  # closing the file releases the lock
