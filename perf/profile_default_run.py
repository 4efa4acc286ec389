"""Where a run's time goes: per stage wall and CPU seconds, per trial kind the shares of compute, test-split
evaluation, data movement and Ray scheduling (issue 29, item 1).

It runs `benchmark.py` with the arguments given after `--` as a child process, samples the CPU seconds of the
child's whole process tree (the driver, the raylet and every Ray worker) from /proc twice a second, and splits the
run into stages by the `[stage]` prefix of the lines it prints. Per trial kind (protocol × IPC) it reads the rows
the run wrote: `train_seconds` (compute: the training loop), `test_seconds` (the test split), `setup_seconds` (data
movement: the set loaded, converted and sent to the device, the models built) and, per evaluation stage, the
cores' time left for Ray (scheduling, idle cores at the tail): the stage's wall × its task slots − the tasks' time.

    python perf/profile_default_run.py -- --suite fashion-mnist --methods random-real --ipc 1,10

`--out` (default a fresh temporary folder, so that nothing is cached but what a fresh clone has) is passed on.
Record `uptime`'s load with every figure: on shared cores the absolute seconds mean little.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
STAGE = re.compile(r"^\[([a-z][a-z -]*)\]")


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds (user + system, with reaped children's) of `root` and every process under it, by pid."""
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = sum(int(f) for f in fields[11:15]) / TICKS
    inside, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid and p not in inside]
        inside.update(children)
        frontier += children
    return {p: cpu[p] for p in inside if p in cpu}


class Sampler(threading.Thread):
    """The process tree's CPU seconds, twice a second: a process's last reading counts after it ends."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.last, self.stopped = root, {}, threading.Event()

    def total(self) -> float:
        return sum(self.last.values())

    def run(self):
        while not self.stopped.is_set():
            self.last.update(tree_cpu(self.root))
            time.sleep(0.5)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(argv: list[str], out: Path) -> tuple[list[dict], float]:
    """Run benchmark.py; the stages in order as {stage, wall, cpu}, and the whole wall time."""
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(repo / "benchmark.py"), *argv, "--out", str(out)]
    print(f"[profile] {' '.join(cmd)}   (load average {load_average()})", flush=True)
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, cwd=repo)
    sampler = Sampler(child.pid)
    sampler.start()
    stages: list[dict] = []

    def enter(name: str):
        now, cpu = time.perf_counter(), sampler.total()
        if stages:
            stages[-1].update(wall=now - stages[-1]["t"], cpu=cpu - stages[-1]["c"])
        if name is not None:
            stages.append({"stage": name, "t": now, "c": cpu})

    enter("start-up")
    buffer = ""
    while chunk := child.stdout.read(1):
        buffer += chunk
        if chunk not in "\r\n":
            continue
        line, buffer = buffer.strip(), ""
        if not line:
            continue
        if chunk == "\n":
            print(line, flush=True)
        if (m := STAGE.match(line)) and m.group(1) != stages[-1]["stage"]:
            name = m.group(1)
            if not any(s["stage"] == name for s in stages):  # a stage's later lines (its summary) stay in it
                enter(name)
    child.wait()
    sampler.last.update(tree_cpu(child.pid) if child.poll() is None else {})
    enter(None)
    sampler.stopped.set()
    if child.returncode:
        sys.exit(f"[profile] benchmark.py exited with {child.returncode}")
    return stages, time.perf_counter() - t0


def trial_kinds(out: Path, slots: int, evaluate_wall: float) -> list[dict]:
    """Per (protocol, IPC): trials, and the seconds of compute, test split, data movement; the scheduling share."""
    rows = []
    for path in (out / "results").glob("*.jsonl"):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("kind") == "measured" and "adopted_from" not in r]
    kinds: dict[tuple, dict] = defaultdict(lambda: defaultdict(float))
    for r in rows:
        k = kinds[(r["protocol"], r["ipc"])]
        k["trials"] += 1
        k["compute"] += r["train_seconds"]
        k["test"] += r["test_seconds"]
        k["data"] += r.get("setup_seconds", 0.0)
    in_tasks = sum(k["compute"] + k["test"] + k["data"] for k in kinds.values())
    table = []
    for (protocol, ipc), k in sorted(kinds.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        total = k["compute"] + k["test"] + k["data"]
        table.append({"protocol": protocol, "ipc": ipc, **k, "total": total})
    return table, in_tasks, max(0.0, evaluate_wall * slots - in_tasks)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="the run's --out (default: a fresh temporary folder)")
    parser.add_argument("--slots", type=int, default=os.cpu_count(), help="trial slots (CPU cores) of the cluster")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("benchmark_args", nargs=argparse.REMAINDER, help="-- then benchmark.py's arguments")
    args = parser.parse_args()
    argv = [a for a in args.benchmark_args if a != "--"]
    out = args.out or Path(tempfile.mkdtemp(prefix="ddbench-profile-"))
    load_before = load_average()
    stages, wall = run(argv, out)
    load_after = load_average()
    evaluate_wall = sum(s["wall"] for s in stages if s["stage"] == "evaluate")
    kinds, in_tasks, scheduling = trial_kinds(out, args.slots, evaluate_wall)

    print(f"\n[profile] {wall:.0f} s wall; load average before {load_before}, after {load_after}\n")
    print("| stage | wall (s) | CPU (s) | CPU / wall |\n|---|---|---|---|")
    for s in stages:
        print(f"| {s['stage']} | {s['wall']:.1f} | {s['cpu']:.1f} | {s['cpu'] / max(s['wall'], 1e-9):.2f} |")
    print(f"| **total** | **{wall:.1f}** | **{sum(s['cpu'] for s in stages):.1f}** | |\n")
    print(
        "| protocol | IPC | trials | compute (s) | test split (s) | data movement (s) | compute % | test % | data % |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for k in kinds:
        t = max(k["total"], 1e-9)
        print(
            f"| {k['protocol']} | {k['ipc']} | {k['trials']:.0f} | {k['compute']:.1f} | {k['test']:.1f} | "
            f"{k['data']:.1f} | {k['compute'] / t:.0%} | {k['test'] / t:.0%} | {k['data'] / t:.0%} |"
        )
    slot_seconds = evaluate_wall * args.slots
    print(
        f"\nevaluate: {evaluate_wall:.1f} s × {args.slots} slots = {slot_seconds:.0f} slot-seconds; in trials "
        f"{in_tasks:.0f} ({in_tasks / max(slot_seconds, 1e-9):.0%}); Ray scheduling, worker start-up and idle slots "
        f"{scheduling:.0f} ({scheduling / max(slot_seconds, 1e-9):.0%})"
    )
    if args.json:
        figures = {
            "argv": argv,
            "wall": wall,
            "load_before": load_before,
            "load_after": load_after,
            "stages": [{k: s[k] for k in ("stage", "wall", "cpu")} for s in stages],
            "trial_kinds": kinds,
            "evaluate_slot_seconds": slot_seconds,
            "in_trials": in_tasks,
            "scheduling": scheduling,
        }
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
