"""The cluster path against a real `ray start --head` that this file starts and stops (own port, own temp dir, token
auth on): a run attaches through RAY_ADDRESS with no --address, and through --address, with a relative --out;
a refused token and an address where nothing listens end in one line and exit 2 within seconds."""

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from harness.runtime.cluster import (
    PROBE_SECONDS,
    ClusterError,
    Target,
    check_target,
    local_choice_line,
    resolve,
    unrecorded_heads,
)
from tests.factories import tiny_suite_raw, write_suite

ROOT = Path(__file__).resolve().parent.parent
RAY = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` command of this interpreter's environment
MARK = "DDBENCH_TEST_HEAD"  # carried by every process of the test's head (workers inherit the raylet's environment)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _marked(value: str) -> list[int]:
    mark = f"{MARK}={value}".encode()
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if mark in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def _stop(value: str) -> None:
    """`ray stop` would stop every Ray on the machine; this ends only the head's own processes."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _marked(value):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + 5
        while _marked(value) and time.time() < deadline:
            time.sleep(0.2)


@contextlib.contextmanager
def _head(auth_mode: str, token: str | None = None, dashboard_port: int | None = None, **extra_env: str):
    """A real `ray start --head` of the given auth mode (with its dashboard where a port is given), on its own port
    and temp dir (short: Ray's socket paths must fit in 107 bytes); stopped with its processes alone. Its PATH starts
    with this interpreter's folder, so a job's `python` is the tests' own."""
    temp = Path(tempfile.mkdtemp(prefix="ddh", dir="/tmp"))
    port, mark = _free_port(), uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"RAY_AUTH_MODE": auth_mode, MARK: mark, **({"RAY_AUTH_TOKEN": token} if token else {})})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra_env)
    dashboard = (
        [f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
        if dashboard_port
        else ["--include-dashboard=false"]
    )
    proc = subprocess.Popen(
        [
            *RAY,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--temp-dir={temp / 'ray'}",
            "--num-cpus=2",
            "--disable-usage-stats",
            *dashboard,
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        recorded, deadline = temp / "ray" / "ray_current_cluster", time.time() + 90
        while not recorded.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert recorded.exists(), "the head did not start"
        yield {"address": recorded.read_text().strip(), "token": token, "temp": temp}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        _stop(mark)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def head():
    """A real head with token auth on."""
    with _head("token", secrets.token_hex(32)) as started:
        yield started


@pytest.fixture(scope="module")
def first_out(tmp_path_factory):
    return tmp_path_factory.mktemp("first") / "runs"


@pytest.fixture(scope="module")
def small_suite(tmp_path_factory):
    """The tiny suite cut to one method, one IPC, one protocol, one seed: the cluster path, not the numbers."""
    raw = tiny_suite_raw()
    raw.update(methods={"random-real": {}}, ipcs=[2], seeds=1)
    raw["protocols"] = {"hard-label": raw["protocols"]["hard-label"]}
    raw.pop("cross_arch")
    path = write_suite(raw, tmp_path_factory.mktemp("suite") / "small.yaml")
    return path


def _driver_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _run(args, cwd, env, timeout=240):
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmark.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.perf_counter() - t0


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results" / "tiny.jsonl").read_text().splitlines()]


def test_ray_address_without_flag_attaches_with_token_and_relative_out(head, small_suite, first_out):
    """The `ray submit` situation: a cluster exists and the run names none itself; only the token is in the
    environment (Ray would not turn token auth on for it); `--out` is relative to the driver's directory, not the
    workers' (theirs is where `ray start` ran)."""
    done, _ = _run(
        ["--suite", str(small_suite), "--out", "runs", "--no-check"],
        first_out.parent,
        _driver_env(RAY_ADDRESS=head["address"], RAY_AUTH_TOKEN=head["token"]),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"attached to {head['address']} (RAY_ADDRESS)" in done.stdout
    out = first_out
    assert f"see --out {out}" in done.stdout
    shards = list(out.glob("distilled/tiny/random-real/*/ipc2/*/shard.json"))
    assert len(shards) == 10 and (out / "leaderboard" / "tiny.md").is_file()
    assert len(_rows(out)) == 2  # the set's trial and the full-data row
    assert "num_cpus" not in done.stderr and "Token authentication is" not in done.stderr


def test_address_flag_attaches(head, small_suite, first_out, tmp_path):
    """The same sets, their trials run again on the cluster from another directory (the store left behind, to keep
    this short: the workers read the sets from the absolute --out)."""
    run_dir = tmp_path / "elsewhere"
    shutil.copytree(first_out, run_dir / "out", ignore=shutil.ignore_patterns("results"))
    done, _ = _run(
        ["--suite", str(small_suite), "--out", "out", "--no-check", "--address", head["address"]],
        run_dir,
        _driver_env(RAY_AUTH_TOKEN=head["token"]),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"attached to {head['address']} (--address)" in done.stdout
    assert "2 trials, 2 to run" in done.stdout
    assert len(_rows(run_dir / "out")) == 2


def test_refused_token_is_one_line_and_exit_2(head, small_suite, tmp_path):
    done, _ = _run(
        ["--suite", str(small_suite), "--out", "runs", "--address", head["address"]],
        tmp_path,
        _driver_env(RAY_AUTH_TOKEN=secrets.token_hex(32)),
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "refused this client's token" in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists()  # nothing computed, nothing written


def test_a_local_cluster_writes_no_token_file(tmp_path):
    """What the harness and tests/conftest.py start a local cluster with: a plain ray.init() writes a fresh token to
    ~/.ray/auth_token (Ray 2.60), and with it token auth for every later client on the machine."""
    driver = (
        "from harness.runtime.cluster import use_session_token; import ray\n"
        "use_session_token(); ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False); ray.shutdown()\n"
    )
    env = _driver_env(HOME=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", driver], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / ".ray" / "auth_token").exists()


def test_a_head_answers_the_grpc_probe(head):
    """The probe that tells a Ray head from something else on its port (tests/test_bad_input.py) passes a real one."""
    from harness.runtime.cluster import _speaks_grpc

    assert _speaks_grpc(head["address"])


def test_nothing_listening_is_one_line_within_seconds(small_suite, tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(ClusterError, match="no Ray head answers there"):
        check_target(Target(address, "--address"))
    assert time.perf_counter() - t0 < PROBE_SECONDS + 2
    # and through the CLI (whose own start, importing torch, is most of its time on a busy machine)
    done, _ = _run(["--suite", str(small_suite), "--out", "runs", "--address", address], tmp_path, _driver_env())
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "no Ray head answers there" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_recorded_cluster_is_attached_when_live_and_passed_over_when_stale(head, monkeypatch, tmp_path):
    """The file `ray start` writes is what `ray submit`'s script finds; one left by a dead head is ignored."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(head["temp"]))
    assert resolve(None) == Target(head["address"], str(head["temp"] / "ray" / "ray_current_cluster"))
    assert resolve("auto") == resolve(None)
    assert resolve("local") == Target(None, "--address local")
    stale = tmp_path / "ray" / "ray_current_cluster"
    stale.parent.mkdir()
    stale.write_text(f"127.0.0.1:{_free_port()}")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    target = resolve(None)
    assert not target.attach and "where nothing listens" in target.note
    with pytest.raises(ClusterError, match="--address auto: no running Ray head"):
        resolve("auto")


def _owned_by(pid: int) -> list[int]:
    mark = f"DDBENCH_RAY_OWNER={pid}-".encode()
    found = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(v.startswith(mark) for v in Path(f"/proc/{p}/environ").read_bytes().split(b"\0")):
                found.append(int(p))
        except OSError:
            pass
    return found


def test_killed_driver_takes_its_local_cluster_along(first_out, small_suite, tmp_path):
    """SIGKILL runs no code in the driver; without the harness's watchdog Ray's agents outlived it by about a
    minute. Killed mid-distillation, every process of the local cluster it started is gone within seconds."""
    out = tmp_path / "out"
    if (first_out / "cache").is_dir():  # prepared by the first test: straight to the shards
        shutil.copytree(first_out / "cache", out / "cache")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "benchmark.py"),
            "--suite",
            str(small_suite),
            "--out",
            str(out),
            "--no-check",
            "--address",
            "local",
        ],
        cwd=tmp_path,
        env=_driver_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in proc.stdout:  # the actors exist once their progress bar is drawn
            if "shards on" in line:
                break
        assert len(_owned_by(proc.pid)) >= 3, "the local cluster's processes carry the owner mark"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 15
    while _owned_by(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert not _owned_by(proc.pid)


def test_a_token_on_the_machine_is_not_sent_to_a_head_without_auth(small_suite, tmp_path):
    """Issue 30 item 1: a token in RAY_AUTH_TOKEN and in ~/.ray/auth_token (what `ray get-auth-token --generate`
    writes) made the driver present one to an auth-off head, whose calls back into the driver were then refused and
    every actor died. The driver asks the head first: this one asks for no token, so none is sent, the `[ray]` line
    says so, and the run finishes."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    with _head("disabled") as off:
        done, _ = _run(
            ["--suite", str(small_suite), "--out", "runs", "--no-check", "--address", off["address"]],
            tmp_path,
            _driver_env(HOME=str(home), RAY_AUTH_TOKEN=secrets.token_hex(32)),
        )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    attached = next(line for line in done.stdout.splitlines() if line.startswith(f"[ray] attached to {off['address']}"))
    assert "the head runs without token auth; the token in RAY_AUTH_TOKEN is not sent" in attached, attached
    assert len(_rows(tmp_path / "runs")) == 2  # the set's trial and the full-data row


def test_a_token_head_is_asked_and_sent_the_token(head):
    """The same question to a head with token auth: it asks, and the token on the machine is sent."""
    env = _driver_env(RAY_AUTH_TOKEN=head["token"])
    code = (
        "from harness.runtime.cluster import Target, check_target\n"
        f"print(check_target(Target({head['address']!r}, '--address')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "the head asks for a token; sent from RAY_AUTH_TOKEN"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**_driver_env(), "HOME": str(head["temp"])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "the head runs token auth and this machine holds no token" in done.stderr


@pytest.mark.slow  # a head with its dashboard, and a run that prepares the tiny suite's models: ~2 minutes
@pytest.mark.skipif(
    importlib.util.find_spec("aiohttp") is None, reason="ray job submit needs ray[default]: pip install -e '.[cluster]'"
)
def test_ray_job_submit_runs_the_suite_on_a_local_head(small_suite, tmp_path):
    """Issue 30 item 8: Ray's job API, the modern way to submit to a cluster: `ray job submit --working-dir . --
    python benchmark.py ...` against a real head with its dashboard; the job's driver attaches through the
    RAY_ADDRESS the job supervisor sets, keeps the job's runtime_env, and its rows land in the store."""
    out, dashboard = tmp_path / "runs", _free_port()
    # Ray's memory monitor kills the newest workers when the machine's memory is 95% used, whoever uses it: on a
    # machine shared with other runs it killed this job's actors for their memory, not the job's.
    with _head("disabled", dashboard_port=dashboard, RAY_memory_monitor_refresh_ms="0") as started:
        url, deadline = f"http://127.0.0.1:{dashboard}", time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=5):
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"the dashboard of {started['address']} did not answer at {url}")
        command = [*RAY, "job", "submit", "--address", url, "--working-dir", ".", "--", "python", "benchmark.py"]
        command += ["--suite", str(small_suite), "--out", str(out), "--no-check"]
        done = subprocess.run(command, cwd=ROOT, env=_driver_env(), capture_output=True, text=True, timeout=600)
    text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)  # the job's log and Ray's coloured status lines
    lines = [line for line in text.splitlines() if line.startswith(("[", "ddbench", "Traceback"))]
    assert done.returncode == 0 and "' succeeded" in text, "\n".join(lines[:40]) + done.stderr[-2000:]
    # the job's driver finds the cluster through the RAY_ADDRESS the job supervisor sets, and the auth mode it
    # inherits from the head
    attached = f"[ray] attached to {started['address']} (RAY_ADDRESS): 2 CPUs, 0 GPUs"
    assert attached in text and "auth: RAY_AUTH_MODE=disabled as set" in text, "\n".join(lines[:40])
    assert len(_rows(out)) == 2  # the set's trial and the full-data row


def test_a_head_on_its_own_temp_dir_is_named_when_a_local_cluster_is_chosen(head, monkeypatch, tmp_path):
    """Issue 30 item 5: `ray start --head --temp-dir X` records its address under X, where ray.init does not look;
    a run naming no cluster starts a local one, and now says so in one line that names the head it passed over."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # where this run looks: no head recorded there
    assert resolve(None) == Target(None, "no cluster named")
    port = head["address"].rsplit(":", 1)[1]
    found = [(address, temp) for address, temp in unrecorded_heads() if address.endswith(f":{port}")]
    assert found == [(head["address"], str(head["temp"] / "ray"))], unrecorded_heads()
    line = local_choice_line()
    assert line.startswith(f"[ray] starting a local cluster on this machine's {os.cpu_count()} CPUs: no --address")
    assert "a head started with its own --temp-dir runs here" in line and "--address " in line, line
