"""Where the run's Ray work goes: an existing cluster the run attaches to, or a local one the harness starts and
owns. Everything about the cluster that can be checked is checked before any compute (docs/decisions.md, "The
cluster path (issue 13, item 1)")."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

try:  # token auth came with Ray 2.52 (pyproject allows 2.40); these are what ray.init itself uses (private)
    from ray._raylet import AuthenticationTokenLoader, Config, GcsClient
    from ray.exceptions import AuthenticationError

    TOKEN_AUTH = True
except ImportError:
    TOKEN_AUTH = False

PROBE_SECONDS = 5.0  # a head that does not answer a TCP connect in this long is taken as absent
# Marks every process of a local cluster the harness starts (they inherit the driver's environment), so that a
# watchdog can end exactly those when the driver is killed, and nothing else on the machine.
OWNER_VAR = "DDBENCH_RAY_OWNER"
_watchdog = None  # its stdin's write end must live as long as the driver: its closing is the signal
TOKEN_SOURCES = "RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token"


class ClusterError(Exception):
    """The cluster named for the run cannot be used; one line for the user."""


@dataclass(frozen=True)
class Target:
    address: str | None  # host:port (or ray://host:port) to attach to; None: start a local cluster
    source: str  # what named it, for the messages: --address, RAY_ADDRESS, the file `ray start` wrote
    note: str = ""  # why a named cluster was passed over, if one was

    @property
    def attach(self) -> bool:
        return self.address is not None


def _current_cluster_file() -> Path:
    """Where `ray start --head` records its address and `ray.init()` looks for it (RAY_TMPDIR, TMPDIR or /tmp)."""
    root = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
    return Path(root or "/tmp") / "ray" / "ray_current_cluster"


def _host_port(address: str) -> tuple[str, int]:
    bare = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--address: expected HOST:PORT (e.g. 10.0.0.5:6379), got {address!r}")
    return host.strip("[]"), int(port)


def _listens(address: str, seconds: float = PROBE_SECONDS) -> bool:
    try:
        with socket.create_connection(_host_port(address), timeout=seconds):
            return True
    except OSError:
        return False


# HTTP/2's client preface and an empty SETTINGS frame: what a gRPC client sends first. A head's GCS (gRPC over
# HTTP/2, plain unless RAY_USE_TLS) answers with its own SETTINGS frame at once.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _speaks_grpc(address: str, seconds: float = PROBE_SECONDS) -> bool:
    """Whether what listens at `address` answers as a gRPC server: its first 9 bytes are a SETTINGS frame's header
    (type 4, stream 0). Something else there (a web server, a database) made Ray's client wait 40 s for a GCS and
    end in a 13-line RpcError."""
    try:
        with socket.create_connection(_host_port(address), timeout=seconds) as conn:
            conn.settimeout(seconds)
            conn.sendall(_H2_PREFACE)
            head = b""
            while len(head) < 9 and (chunk := conn.recv(9 - len(head))):
                head += chunk
    except OSError:
        return False
    return len(head) == 9 and head[3] == 4 and head[5:9] == bytes(4)


def resolve(address: str | None) -> Target:
    """The cluster the run means. `--address` wins, then RAY_ADDRESS, then the cluster `ray start --head` recorded on
    this machine (what `ray submit` runs beside) if it still answers; else a local cluster (`--address local` asks
    for one outright). A recorded address where nothing listens is stale (a head killed without `ray stop`): it is
    passed over, not deleted, as the file is Ray's."""
    flag, variable = address or "", os.environ.get("RAY_ADDRESS", "")
    source, named = ("--address", flag) if flag else ("RAY_ADDRESS", variable)
    if named == "local":
        return Target(None, f"{source} local")
    if named and named != "auto":
        return Target(named, source)
    recorded = _current_cluster_file()
    try:
        found = recorded.read_text().strip()
    except OSError:
        found = ""
    if found and _listens(found, 1.0):
        return Target(found, str(recorded))
    if named == "auto":
        raise ClusterError(f"{source} auto: no running Ray head is recorded in {recorded}")
    return Target(
        None,
        "no cluster named",
        note=f"{recorded} names {found}, where nothing listens (a head stopped without `ray stop`): ignored"
        if found
        else "",
    )


def unrecorded_heads() -> list[tuple[str, str]]:
    """(address, temp dir) of each `ray start --head` running on this machine that `resolve` cannot find: one
    started with its own `--temp-dir` records its address there, not where ray.init looks. Told apart from a
    driver's own local cluster (GCS port 0, chosen at random) by the fixed port `ray start` gives its GCS."""
    recorded = _current_cluster_file().parent
    heads = []
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not args or not args[0].endswith("gcs_server"):
            continue
        pairs = (a.lstrip("-").split("=", 1) for a in args[1:] if a.startswith("--") and "=" in a)
        flags = {key.replace("-", "_"): value for key, value in pairs}  # Ray spells some with -, some with _
        port, session = flags.get("gcs_server_port", "0"), Path(flags.get("session_dir", ""))
        if port != "0" and session.parent != recorded:
            heads.append((f"{flags.get('node_ip_address', '127.0.0.1')}:{port}", str(session.parent)))
    return sorted(heads)


def local_choice_line() -> str:
    """What a run that names no cluster says when it starts a local one: the choice, and a head it passed over
    (issue 30 item 5: a head on a custom --temp-dir was passed over without a word)."""
    heads = unrecorded_heads()
    line = (
        f"[ray] starting a local cluster on this machine's {os.cpu_count()} CPUs: no --address, no RAY_ADDRESS, "
        f"no head recorded in {_current_cluster_file()}"
    )
    if heads:
        (address, temp), others = heads[0], f" and {len(heads) - 1} more" if len(heads) > 1 else ""
        line += (
            f"; a head started with its own --temp-dir runs here ({address}, temp dir {temp}{others}), which that "
            f"file does not name: --address {address} attaches to it"
        )
    return line


def _token_source() -> str | None:
    """Where the token this client would send comes from (Ray's own order), or None where the machine holds none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH ({path})" if Path(path).is_file() else None
    home = Path.home() / ".ray" / "auth_token"
    return str(home) if home.is_file() else None


def _token_available() -> bool:
    return _token_source() is not None


def _set_auth_mode(mode: str) -> None:
    """Ray reads RAY_AUTH_MODE into its cached config at import; refresh it as ray.init does for a new cluster."""
    os.environ["RAY_AUTH_MODE"] = mode
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def _quiet_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# What check_target found out about each address's auth, for the `[ray]` line: the CLI checks before any compute and
# the connector again when it attaches, and the head is asked once.
_auth_by_address: dict[str, str] = {}


def _gcs_accepts(address: str, where: str) -> bool:
    """Whether the head's GCS takes this client as its auth mode now stands; False: it refused the client's token
    (or the absence of one). The client ray.init builds first; it fails at once on a refused token."""
    try:
        with _quiet_stderr():  # its C++ side logs the refusal too: the user gets one line
            GcsClient(address=address)
    except AuthenticationError:
        return False
    except RayError as e:  # e.g. a gRPC server that is not a GCS: "Timed out while waiting for GCS"
        raise ClusterError(f"{where}: not a Ray head that answers: {str(e).splitlines()[0]}") from None
    return True


def _choose_auth(target: Target) -> str:
    """Present a token only to a head that asks for one. A head without token auth accepts a client that sends one,
    but the calls it makes back into the driver then carry none and the driver, in token mode, refuses them (every
    actor dies: issue 30 item 1). Ray 2.60 offers a client no question for the mode but the dashboard's
    /api/authentication_mode, which a minimal install or `--include-dashboard=false` head lacks; the GCS answers the
    same question directly: a client that sends no token is refused by exactly the heads that run token auth.
    RAY_AUTH_MODE set by the user is kept as it is. Returns the auth part of the `[ray]` line."""
    where = f"{target.source}: {target.address}"
    source = _token_source()
    if "RAY_AUTH_MODE" in os.environ:
        mode = os.environ["RAY_AUTH_MODE"].lower()
        chosen = f"RAY_AUTH_MODE={mode} as set" + (f", token from {source}" if mode == "token" and source else "")
    elif target.address.startswith("ray://"):  # a Ray Client server: its proxy, not a GCS, answers there
        if source:
            _set_auth_mode("token")
        return f"token from {source} (a ray:// address cannot be asked its mode)" if source else "no token"
    else:
        _set_auth_mode("disabled")
        if _gcs_accepts(target.address, where):
            return "the head runs without token auth" + (f"; the token in {source} is not sent" if source else "")
        if source is None:
            raise ClusterError(
                f"{where}: the head runs token auth and this machine holds no token: give the cluster's token in "
                f"{TOKEN_SOURCES} (`ray get-auth-token` on the head prints it)"
            )
        _set_auth_mode("token")
        chosen = f"the head asks for a token; sent from {source}"
    if not _gcs_accepts(target.address, where):
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        raise ClusterError(
            f"{where}: the cluster refused this client's token (RAY_AUTH_MODE {mode}): give the "
            f"cluster's token in {TOKEN_SOURCES} (`ray get-auth-token` on the head prints it)"
        )
    return chosen


def check_target(target: Target) -> str:
    """Before any compute: the named cluster answers within seconds and takes this client (with a token only if it
    asks for one). Ray itself would wait for ever on a dead address and retry a refused token for 20 s before a
    traceback. Returns how the client authenticates, for the `[ray]` line ("" for a local cluster)."""
    if not target.attach:
        return ""
    where = f"{target.source}: {target.address}"
    if not _listens(target.address):
        raise ClusterError(
            f"{where}: no Ray head answers there within {PROBE_SECONDS:g} s "
            f"(start one with `ray start --head`, or leave out --address for a local cluster)"
        )
    tls = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")
    if not target.address.startswith("ray://") and not tls and not _speaks_grpc(target.address):
        raise ClusterError(
            f"{where}: something listens there, but not a Ray head (it does not answer as Ray's GCS, a gRPC "
            "server, would): give the head's GCS port (`ray start --head` prints it; 6379 by default)"
        )
    if not TOKEN_AUTH:
        return "no token auth (Ray before 2.52)"
    if target.address not in _auth_by_address:
        _auth_by_address[target.address] = _choose_auth(target)
    return _auth_by_address[target.address]


def runtime_env() -> dict | None:
    """The project's own packages, shipped to the workers so that they run the driver's code whatever is installed
    on the nodes (their dependencies come from the nodes: cluster.yaml's setup). A job submitted with its own
    runtime_env (`ray job submit --working-dir`) keeps it: Ray refuses two that set the same field."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        return None
    packages = [importlib.util.find_spec(name).submodule_search_locations[0] for name in ("harness", "methods")]
    return {"py_modules": packages, "excludes": ["__pycache__", "*.pyc"]}


def _sees(marker: str) -> str | None:
    return None if os.path.exists(marker) else f"{socket.gethostname()} ({os.getcwd()})"


def check_shared(out: Path) -> None:
    """Every node of the cluster must see `--out` at the same path: actors write shards there and the driver and the
    trials read them back. One zero-CPU task per live node looks for a file the driver has just written."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    out.mkdir(parents=True, exist_ok=True)
    marker = out / f".ddbench-shared-{uuid.uuid4().hex}"
    marker.write_text("")
    try:
        sees = ray.remote(num_cpus=0)(_sees)
        blind = [
            r
            for r in ray.get(
                [
                    sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                        str(marker)
                    )
                    for n in nodes
                ]
            )
            if r
        ]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise ClusterError(
            f"--out {out}: not visible on {len(blind)} of {len(nodes)} nodes ({', '.join(blind)}); on "
            f"a cluster it must be shared storage mounted at the same path on every node "
            f"(see cluster.yaml)"
        )
    print(
        f"[ray] {len(nodes)} node(s) see --out {out}"
        + ("; nodes that join later must mount it at the same path" if len(nodes) > 1 else ""),
        flush=True,
    )


def _start_watchdog(owner: str) -> None:
    """A killed driver (SIGKILL) runs no code; Ray's own reaper then stops the head's processes but its agents and
    workers outlive it by about a minute (measured). This process waits for the driver's end (its stdin closes)
    and ends the processes that carry the owner mark, which only this run's cluster does."""
    code = (
        "import os, signal, sys, time\n"
        "sys.stdin.read()\n"
        "mark = ('" + OWNER_VAR + "=' + sys.argv[1]).encode()\n"
        "def owned():\n"
        "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "        try:\n"
        "            if int(pid) != os.getpid() and mark in open(f'/proc/{pid}/environ', 'rb').read().split(b'\\0'):\n"
        "                yield int(pid)\n"
        "        except OSError:\n"
        "            pass\n"
        "for sig in (signal.SIGTERM, signal.SIGKILL):\n"
        "    for pid in owned():\n"
        "        try: os.kill(pid, sig)\n"
        "        except OSError: pass\n"
        "    time.sleep(2)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != OWNER_VAR}
    global _watchdog
    _watchdog = subprocess.Popen(
        [sys.executable, "-c", code, owner],
        stdin=subprocess.PIPE,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class Terminated(SystemExit):
    """SIGTERM or SIGHUP as an exit with status 128 + the signal, raised in the main thread as Ctrl-C raises
    KeyboardInterrupt: the stages unwind (their locks, their Ray work), atexit's ray.shutdown() stops a local
    cluster, and the CLI (harness/cli.py) says so in one line."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


_signalled: int | None = None


def _exit_on(signum, frame):
    global _signalled
    _signalled = signum
    raise Terminated(signum)


def signalled() -> int | None:
    """The SIGTERM/SIGHUP `_exit_on` took, if any: raised inside `ray.get`, Terminated reaches the caller as Ray's
    SystemExit(1) (and a KeyboardInterrupt as a plain one), so the CLI asks here which signal it was."""
    return _signalled


def use_session_token() -> None:
    """Token auth on for a local cluster this process starts, with the environment's token or, where it holds none,
    a fresh one in this process's environment only: a plain `ray.init()` (Ray 2.60) writes a new token to
    ~/.ray/auth_token, which then turns token auth on for every later client and `ray start` on the machine. Also
    what the tests' own cluster (tests/conftest.py) starts with, so that the test suite leaves no token behind."""
    if TOKEN_AUTH and "RAY_AUTH_MODE" not in os.environ:
        if not _token_available():
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        _set_auth_mode("token")


def start_local() -> None:
    """A local cluster on this machine's cores. Its auth mode is set on purpose, which also silences Ray's
    token-auth warning: token auth stays on (its head listens on every interface, not loopback only, as measured on
    Ray 2.60), and where the environment holds no token a fresh one lives only in this process's environment,
    which the cluster's processes inherit, rather than in ~/.ray/auth_token, where it would turn token auth on for
    every later `ray start` on the machine."""
    use_session_token()
    owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if os.path.isdir("/proc"):
        _start_watchdog(owner)  # first: a driver killed inside ray.init leaves helpers too
    os.environ[OWNER_VAR] = owner
    try:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, num_cpus=os.cpu_count())
    finally:
        del os.environ[OWNER_VAR]
    reclaim_signals()


def reclaim_signals() -> None:
    """On SIGTERM the driver's core worker (its C++ failure handler, installed by ray.init over Ray's own Python one,
    which itself replaced any handler set before) aborts: no atexit, no ray.shutdown. A handler set now from Python
    replaces it (the CLI's own included: one line, exit 143); one the user set is kept."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            current = signal.getsignal(signum)
            module = getattr(current, "__module__", "") or ""
            if current in (signal.SIG_DFL, None) or module.startswith(("ray.", "harness.")):
                signal.signal(signum, _exit_on)
        except ValueError:  # not the main thread: leave signals to whoever owns them
            pass


def connector(address: str | None, out: Path):
    """The run's `connect`. A named cluster is checked and attached now, before prepare, with the project shipped
    and `--out` checked on every node; a local cluster starts only when some work needs Ray, so that a rerun with
    everything cached never starts one."""
    target = resolve(address)
    if target.note and not ray.is_initialized():
        print(f"[ray] {target.note}", flush=True)
    if target.attach and not ray.is_initialized():
        auth = check_target(target)
        t0 = time.perf_counter()
        try:
            ray.init(address=target.address, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env())
        except (ConnectionError, RayError) as e:
            raise ClusterError(f"{target.source}: {target.address}: {str(e).splitlines()[0]}") from None
        reclaim_signals()
        resources = ray.cluster_resources()
        print(
            f"[ray] attached to {target.address} ({target.source}): {resources.get('CPU', 0):g} CPUs, "
            f"{resources.get('GPU', 0):g} GPUs, in {time.perf_counter() - t0:.1f} s; auth: {auth}",
            flush=True,
        )
        check_shared(out)

    def connect():
        if not ray.is_initialized():
            if target.source == "no cluster named":
                print(local_choice_line(), flush=True)
            start_local()

    return connect
