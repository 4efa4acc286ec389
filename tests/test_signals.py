"""Ctrl-C and SIGTERM during a run (issue 30 item 4): one line, exit status 130 / 143 within seconds (not after the
shard in flight), and the same command then finishes the run from what is on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "tests" / "tiny-suite.yaml"


def _command(out: Path) -> list[str]:
    return [
        sys.executable,
        "benchmark.py",
        "--suite",
        str(SUITE),
        "--out",
        str(out),
        "--methods",
        "diffusion",
        "--ipc",
        "1",
        "--seeds",
        "1",
        "--no-check",
    ]


def _ray_heads() -> set[int]:
    """The pids of the raylets and GCS servers running now."""
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()[1:]
    return {int(line.split()[0]) for line in ps if "raylet" in line or "gcs_server" in line}


def _left_behind(before: set[int]) -> set[int]:
    """The raylets and GCS servers started since `before` that still run a few seconds after the command ended."""
    deadline = time.time() + 5
    while (left := _ray_heads() - before) and time.time() < deadline:
        time.sleep(0.2)
    return left


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_signalled_run_ends_in_one_line_and_resumes(signum, status, tmp_path):
    out = tmp_path / "runs"
    heads = _ray_heads()
    proc = subprocess.Popen(
        _command(out), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    for line in proc.stdout:  # distill has begun: a local Ray cluster is starting or its actors are sampling
        if line.startswith("[distill]"):
            break
    time.sleep(3)
    t0 = time.perf_counter()
    proc.send_signal(signum)
    proc.stdout.read()
    proc.wait(60)
    seconds = time.perf_counter() - t0
    reader.join(10)
    text = "".join(err)
    name = "interrupted (Ctrl-C)" if signum == signal.SIGINT else "stopped by SIGTERM"
    assert proc.returncode == status, text[-3000:]
    assert text.strip().splitlines()[-1] == (
        f"ddbench: {name}; what is finished is kept, and the same command resumes from it"
    ), text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    print(f"{name}: exit {proc.returncode} {seconds:.1f} s after the signal")
    # 0.4-0.5 s measured quiet (2.4 s and 5.1 s before benchmark.py skipped the interpreter's teardown); the
    # issue asks for 5 s, the margin is for a loaded 2-core machine
    assert seconds < 10, seconds
    assert not _left_behind(heads), "the run's local Ray cluster outlived the command"
    if signum == signal.SIGTERM:  # the rerun finishes from what the stopped run left
        done = subprocess.run(_command(out), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert "backbone: training" not in done.stdout, done.stdout[-2000:]  # prepare's models were kept
        assert (out / "leaderboard" / "tiny.md").is_file()


@pytest.mark.slow  # a search's trials on a local cluster, stopped and resumed: ~3 minutes on two busy cores
def test_ctrl_c_during_a_search_is_one_line_exit_130_and_resumes(tmp_path):
    """Issue 30 item 5: Ctrl-C during `search` ended in Ray Tune's warnings and a search error (exit 2); now it is
    one line naming the way on (--resume), exit 130 within seconds, and the same command with --resume finishes
    the search."""
    raw = yaml.safe_load(SUITE.read_text())  # test_search's suite: the steps inside diffusion's search range
    raw.update(methods={"diffusion": {"cfg_scale": 2.0, "steps": 10}}, ipcs=[1])
    raw["protocols"] = {"hard-label": {"epochs": {1: 4}, "student_kwargs": {"convnet3": {"width": 8}}}}
    raw.pop("cross_arch")
    suite, out = tmp_path / "search.yaml", tmp_path / "runs"
    suite.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "benchmark.py", "search", "diffusion", "--suite", str(suite), "--out", str(out)]
    command += ["--trials", "3", "--no-check"]
    proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.time() + 420
    while not list(out.glob("search/*/ledger/*.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)  # a trial has finished: the search is under way
    assert proc.poll() is None, "".join(err)[-3000:]
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    seconds = time.perf_counter() - t0
    reader.join(10)
    text = "".join(err)
    assert proc.returncode == 130, text[-3000:]
    assert text.strip().splitlines()[-1] == (
        "ddbench: interrupted (Ctrl-C); what is finished is kept, and the same command with --resume continues "
        "the search"
    ), text[-3000:]
    assert "Traceback" not in text and "Stop signal received" not in text, text[-3000:]
    print(f"search: exit {proc.returncode} {seconds:.1f} s after Ctrl-C")
    # 1.4 s on a quiet machine since the entry point skips the interpreter's teardown (benchmark.py `_end_now`);
    # 4.1-5.1 s before, 26.7 s at load 30. The bound leaves room for a loaded 2-core machine.
    assert seconds < 60, seconds
    done = subprocess.run([*command, "--resume"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (out / "search" / "diffusion.yaml").is_file()
