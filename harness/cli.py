"""`ddbench VERB --suite NAME [flags]` (`python benchmark.py ...`): the command line. It parses, checks what it was
given (one line and exit status 2 before any compute), and hands over to the pipeline (harness/pipeline.py).

Verbs: run (the default: suite → prepare → distill → evaluate → leaderboard), plan, search, site, compare, export,
evaluate (a set made elsewhere); and fetch-set NAME, which downloads a released set of the registry
(benchmarks/released/) and needs no suite.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
from pathlib import Path

import ray

from harness.config.loader import load_suite
from harness.config.released import RELEASED_DIR, ReleasedError, load_released
from harness.config.schema import SuiteError
from harness.core.store import stored_rows
from harness.models.data import DataError, load_real_data
from harness.models.measures import DiversityError
from harness.models.students import is_student
from harness.pipeline import Run, RunError, at_set_ipc, check_protocols, evaluate_checked
from harness.report.export import ExportError
from harness.report.plan import DEFAULT_GPU_TFLOPS, PlanError
from harness.report.rows import external_names
from harness.runtime.cluster import ClusterError, check_target, resolve, signalled
from harness.runtime.cluster import _exit_on as on_signal
from harness.runtime.preflight import (
    DEFAULT_GPU_MEMORY_GB,
    check_memory_fits,
    check_out_dir,
    check_real_image_counts,
)
from harness.runtime.released_sets import evaluate_line, fetch
from harness.stages.distill import DistillError
from harness.stages.external import (
    ExternalSetError,
    check_and_build,
    check_name,
    parse_normalisation,
    read_class_order,
    suite_classes,
)
from harness.stages.prepare import PrepareError
from harness.stages.search import DEFAULT_TRIALS, SearchError, SearchSpec, default_point, search_protocol, space_of
from methods import get_method

VERBS = ("run", "plan", "search", "site", "compare", "export", "evaluate")
# What a verb's namespace holds for the flags it does not take: every check reads one namespace, however parsed.
UNSET = dict(
    address=None,
    no_check=False,
    accept_failed_check=False,
    cross_arch=False,
    plan=False,
    search=None,
    trials=None,
    search_student=None,
    search_set=None,
    resume=False,
    gpus=None,  # None: not given (1 GPU, DEFAULT_GPU_TFLOPS): a run refuses what only a plan reads
    gpu_tflops=None,
    gpu_memory=DEFAULT_GPU_MEMORY_GB,
    site=False,
    compare=None,
    export=None,
    evaluate=None,
    name=None,
    class_order=None,
    allow_uneven=False,
    allow_duplicates=False,
    allow_overlap=False,
    reported=None,
    protocols=None,
    tensor_normalization=None,
)
# The flags only `evaluate` takes, as their dest: given to another verb, they are refused.
EVALUATE_ONLY = (
    "name",
    "class_order",
    "allow_uneven",
    "allow_duplicates",
    "allow_overlap",
    "reported",
    "protocols",
    "tensor_normalization",
)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _out_dir(text: str) -> Path:
    if not text.strip():  # Path("") is ".": the run would write its caches, sets and store into the current folder
        raise argparse.ArgumentTypeError(
            "an empty path names the current folder; name the output folder (default: runs)"
        )
    return Path(text)


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _percent(text: str) -> float:
    """--reported PERCENT → a fraction, as the rows hold accuracy."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage, got {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage in (0, 100], got {text!r}")
    return value / 100


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"ddbench: error: {message}\n")


def _suite_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", default="fashion-mnist", help="a suite name in benchmarks/ or a YAML path")
    p.add_argument("--out", default=Path("runs"), type=_out_dir, help="all outputs of the run (default: runs/)")
    p.add_argument("--methods", help="comma-separated methods (default: the suite's)")
    p.add_argument("--ipc", type=_int_list, help="comma-separated IPCs (default: the suite's)")
    p.add_argument("--students", help="comma-separated students (default: the suite's or the profile's)")
    p.add_argument("--seeds", type=_positive, help="student seeds per setting (default: the suite's)")
    p.add_argument(
        "--profile",
        default="full",
        help="full (the suite as written) or one of its profiles, e.g. quick, leaderboard (default: full)",
    )


def _address_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        help="Ray cluster HOST:PORT to attach to (default: RAY_ADDRESS, else the head `ray start` "
        "runs on this machine, else a local cluster; `local` forces a local one)",
    )


def _check_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-check", action="store_true", help="skip the backbone check")
    p.add_argument(
        "--accept-failed-check",
        action="store_true",
        help="run methods that sample the backbone even when its check fails; their rows are marked",
    )


def _search_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=_positive, default=None, help="trials per searched method (default: 20)")
    p.add_argument("--search-student", help="the proxy student a search trains (default: the suite's first student)")
    p.add_argument(
        "--search-set",
        metavar="METHOD",
        help="a protocol search (search PROTOCOL) tunes the student's recipe on this method's set "
        "(default: the suite's first method)",
    )
    p.add_argument("--resume", action="store_true", help="continue a killed search; finished trials are kept")


def _plan_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpus", type=_positive, default=None, help="GPUs the plan spreads the work over (default: 1)")
    p.add_argument(
        "--gpu-tflops",
        type=_positive_number,
        default=None,
        help=f"sustained TFLOP/s per GPU the plan prices unmeasured work at (default: {DEFAULT_GPU_TFLOPS:g})",
    )


def _memory_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gpu-memory",
        type=_positive_number,
        default=DEFAULT_GPU_MEMORY_GB,
        metavar="GB",
        help="memory per GPU: a run (or plan) whose method the rehearsal's figures (benchmarks/rehearsal/) predict "
        f"to need more is refused before any compute (default: {DEFAULT_GPU_MEMORY_GB:g})",
    )


def _evaluate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="the set's name on the board (its rows' method), e.g. rded-released")
    p.add_argument(
        "--class-order",
        metavar="FILE",
        help="for a set whose classes are indices (folders 0, 1, …; a tensor's labels): a file of one class key or "
        "name per line, line i naming index i, or `suite` for the suite's own order (never guessed)",
    )
    p.add_argument("--protocols", help="comma-separated protocols to train under (default: the suite's, all of them)")
    p.add_argument("--allow-uneven", action="store_true", help="evaluate a set whose classes hold unequal counts")
    p.add_argument(
        "--allow-duplicates", action="store_true", help="evaluate a set in which an image repeats another exactly"
    )
    p.add_argument(
        "--allow-overlap",
        action="store_true",
        help="evaluate a set holding images (near-)identical to the suite's test split; its rows carry the count",
    )
    p.add_argument(
        "--reported", type=_percent, metavar="PERCENT", help="the accuracy the set's paper reports, kept beside"
    )
    p.add_argument(
        "--tensor-normalization",
        metavar="NAME|MEANS/STDS",
        help="a float tensor's normalisation to undo: imagenet, cifar10, cifar100 or e.g. 0.2861/0.3530",
    )


HELP = {
    "run": "make the suite's sets, train its students on them, draw the board and the site (the default verb)",
    "plan": "print what the suite would do and cost (shards, trials, model loads, images, disk, GPU-hours) and run "
    "nothing; needs neither the data nor the models",
    "search": "tune these methods' search spaces (or a protocol's recipe for --search-student) on the validation "
    "split with Ray Tune + Optuna instead of running the suite; the test split is never read; best "
    "settings go to --out/search/<method>.yaml",
    "site": "redraw the board and the static site (<out>/site/) from what --out holds: the result store and the sets "
    "on disk; distils and trains nothing (every run draws the site at its end too)",
    "compare": "two methods of the suite: per student, protocol and IPC, A − B with its 95%% confidence interval and "
    "whether it is resolved, from the store in --out; written to <out>/compare/",
    "export": "write METHOD's set at --ipc K (one IPC) as a Hugging Face datasets folder under <out>/exports/",
    "fetch-set": "download a released set of the registry (benchmarks/released/NAME.yaml), check its SHA-256, unpack "
    "it, and print the `ddbench evaluate` line that puts it on the board; where the network fails, one line says what "
    "to download by hand and where to put it",
    "evaluate": "evaluate a set made elsewhere (an ImageFolder, a datasets folder or Parquet file, a .pt/.npz "
    "tensor file) like the suite's own: checked first (classes, images per class, size, unreadable files, "
    "duplicates, test-set leakage), copied into --out's set folders, trained on by every student, protocol and "
    "seed; rows of kind external",
}
CROSS_ARCH_HELP = "run the suite's cross-architecture study (teacher × student table and heatmap) instead"


def parser() -> argparse.ArgumentParser:
    """`ddbench VERB ...`: each verb's --help lists its own flags."""
    p = _Parser(
        prog="ddbench", description=__doc__, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, *groups, **modes) -> argparse.ArgumentParser:
        v = verbs.add_parser(name, help=HELP[name], description=HELP[name].replace("%%", "%"), allow_abbrev=False)
        v.set_defaults(**{**UNSET, **modes})  # first: a flag the verb takes keeps its own default
        _suite_flags(v)
        for group in groups:
            group(v)
        return v

    verb("run", _address_flag, _check_flags, _memory_flag).add_argument(
        "--cross-arch", action="store_true", help=CROSS_ARCH_HELP
    )
    verb("plan", _plan_flags, _memory_flag, plan=True)
    verb("search", _address_flag, _check_flags, _search_flags).add_argument(
        "search", metavar="METHOD[,METHOD]", help="the methods (or protocols) to search"
    )
    verb("site", _address_flag, _check_flags, site=True)
    verb("compare", _address_flag).add_argument("compare", metavar="A,B", help="the two methods")
    verb("export", _address_flag).add_argument("export", metavar="METHOD", help="the method whose set to write")
    verbs.add_parser("fetch-set", help=HELP["fetch-set"], add_help=False)  # listed here; parsed by fetch_set_parser
    verb("evaluate", _address_flag, _evaluate_flags).add_argument(
        "--set", dest="evaluate", metavar="SOURCE", required=True, help="the set: a folder or file"
    )
    return p


def fetch_set_parser() -> argparse.ArgumentParser:
    """`ddbench fetch-set NAME [--to DIR] [--record-hash]`: needs no suite, cluster or data."""
    p = _Parser(prog="ddbench fetch-set", description=HELP["fetch-set"], allow_abbrev=False)
    p.add_argument("name", metavar="NAME", help="a registry entry (benchmarks/released/NAME.yaml)")
    p.add_argument("--to", type=_out_dir, default=None, help="where to download and unpack it (default: released/NAME)")
    p.add_argument(
        "--record-hash",
        action="store_true",
        help="fetch an entry whose SHA-256 the registry does not record (unverified) and print the file's, to commit",
    )
    p.add_argument("--registry", type=Path, default=RELEASED_DIR, help="the registry folder (default: %(default)s)")
    return p


def fetch_set(argv: list[str]) -> int:
    """The fetch-set verb: the registry entry, fetched and checked; one line and exit 2 on any failure."""
    args = fetch_set_parser().parse_args(argv)
    try:
        entry = load_released(args.name, args.registry)
        fetched = fetch(entry, args.to or Path("released") / entry.name, record_hash=args.record_hash)
    except ReleasedError as e:
        fail(str(e))
    state = "verified against the registry" if fetched.verified else "UNVERIFIED: the registry records none"
    print(f"[fetch-set] {entry.name}: {fetched.download}, SHA-256 {fetched.sha256} ({state})", flush=True)
    if not fetched.verified:
        print(f"[fetch-set] once checked against the source, commit to {entry.source}: sha256: {fetched.sha256}")
    print(f"[fetch-set] set folder: {fetched.set_dir} (class folders by {entry.class_folders}: {entry.class_order})")
    if entry.reported is not None:
        r = entry.reported
        print(f"[fetch-set] its paper reports {r.accuracy:g} % ({r.student}, {r.protocol}; {r.table})")
    print(evaluate_line(fetched), flush=True)
    return 0


def flat_parser() -> argparse.ArgumentParser:
    """No verb: every flag, the verbs as mode flags (`--plan`, `--search M`, ...), as scripts and `ray submit
    cluster.yaml benchmark.py --suite imagenet` call it; without a mode flag it runs."""
    p = _Parser(
        prog="ddbench",
        description=__doc__,
        allow_abbrev=False,
        usage="ddbench [VERB] [--suite NAME] [flags]  (VERB: "
        + " | ".join((*VERBS, "fetch-set"))
        + "; `ddbench VERB --help`)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _suite_flags(p)
    _address_flag(p)
    _check_flags(p)
    p.add_argument("--cross-arch", action="store_true", help=CROSS_ARCH_HELP)
    p.add_argument("--plan", action="store_true", help="as the verb plan: " + HELP["plan"])
    p.add_argument("--search", metavar="METHOD[,METHOD]", help="as the verb search: " + HELP["search"])
    _search_flags(p)
    _plan_flags(p)
    _memory_flag(p)
    p.add_argument("--site", action="store_true", help="as the verb site: " + HELP["site"])
    p.add_argument("--compare", metavar="A,B", help="as the verb compare: " + HELP["compare"])
    p.add_argument("--export", metavar="METHOD", help="as the verb export: " + HELP["export"])
    p.add_argument("--evaluate", metavar="SOURCE", help="as the verb evaluate --set SOURCE: " + HELP["evaluate"])
    _evaluate_flags(p)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    return (parser() if argv and argv[0] in VERBS else flat_parser()).parse_args(argv)


def fail(message: str) -> None:
    print(f"ddbench: error: {message}", file=sys.stderr)
    sys.exit(2)


@contextlib.contextmanager
def _signals_as_exceptions():
    """SIGTERM/SIGHUP raise Terminated while the CLI runs (a handler already set by whoever embeds it is kept)."""
    saved = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            if signal.getsignal(signum) in (signal.SIG_DFL, None):
                saved[signum] = signal.signal(signum, on_signal)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        if not ray.is_initialized():  # with a cluster up, the handler stays: it is what lets atexit stop it
            for signum, handler in saved.items():
                signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    """The CLI. Ctrl-C is one line and exit status 130, SIGTERM 143 (SIGHUP 129): what is finished is on disk, and
    the same command resumes from it."""
    try:
        with _signals_as_exceptions():
            return _main(argv)
    except KeyboardInterrupt:
        if signalled():
            _stopped(f"stopped by {signal.Signals(signalled()).name}", 128 + signalled())
        _stopped("interrupted (Ctrl-C)", 130)
    except SystemExit as e:  # Terminated, or what Ray's get makes of it: SystemExit(1)
        signum = signalled() or (signal.SIGTERM if _rays_sigterm_exit(e) else None)
        if signum:  # (a SIGTERM while ray.init runs meets Ray's own handler: sys.exit(15))
            _stopped(f"stopped by {signal.Signals(signum).name}", 128 + signum)
        raise


def _rays_sigterm_exit(e: SystemExit) -> bool:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame if tb is not None else None
    return (
        frame is not None
        and frame.f_code.co_name == "sigterm_handler"
        and frame.f_globals.get("__name__", "").startswith("ray.")
    )


def _stopped(what: str, status: int) -> None:
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):  # end a progress bar's line, so that ours is a line of its own
        bar.close()
    print(f"ddbench: {what}; what is finished is kept, and the same command resumes from it", file=sys.stderr)
    sys.exit(status)


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["fetch-set"]:
        return fetch_set(argv[1:])
    args = parse(argv)
    command = shlex.join(["python", "benchmark.py", *argv])
    try:
        suite = load_suite(args.suite, args.profile, _overrides(args), check_files=not args.plan)
        methods = _methods(args, suite)
        verb, pair = _verb(args, suite)
        if verb == "evaluate":
            return _evaluate(args, suite, command)
        if verb in ("run", "plan"):  # before any compute: the cluster, the data, the models
            check_memory_fits(suite, [suite.cross_arch.method] if args.cross_arch else methods, args.gpu_memory)
        if verb == "plan":
            plan = Run(suite, methods, args.out).plan(
                args.gpus or 1, args.gpu_tflops or DEFAULT_GPU_TFLOPS, args.gpu_memory
            )
            print(plan, flush=True)
            return 0
        specs = _search_specs(args, suite) if verb == "search" else []
        run = _run(args, suite, specs or methods, verb, pair, command)
        return _ask(run, verb, pair, specs, args)
    except (
        SuiteError,
        PlanError,
        ClusterError,
        SearchError,
        PrepareError,
        DistillError,
        DiversityError,
        ExportError,
        ExternalSetError,
        RunError,
    ) as e:
        fail(str(e))
    except DataError as e:  # its message says what is wrong with the data; the suite's data section points at it
        fail(f"{suite.source}: data: {e}")


def _evaluate(args, suite, command: str) -> int:
    """`evaluate`: the set is read and checked against the suite (classes, counts, size and mode, unreadable
    files, duplicates), the suite reloaded at the set's IPC, the set checked for test-set leakage, then trained on.
    Every check comes before any training."""
    name = check_name(args.name)
    protocols = check_protocols(suite, args.protocols)
    order = read_class_order(args.class_order) if args.class_order is not None else None
    normalisation = parse_normalisation(args.tensor_normalization)
    check_target(resolve(args.address))
    check_out_dir(args.out, suite.source)
    real = load_real_data(suite.data)
    keys, names = suite_classes(suite.data)
    ext = check_and_build(
        args.evaluate,
        keys,
        names,
        real.channels,
        real.image_size,
        order,
        normalisation,
        allow_uneven=args.allow_uneven,
        allow_duplicates=args.allow_duplicates,
    )
    if args.ipc and ext.ipc not in args.ipc:
        raise SuiteError(f"{suite.source}: --ipc: the set holds {ext.ipc} images per class, not {args.ipc}")
    suite = at_set_ipc(suite, ext, args.profile, _overrides(args))
    evaluate_checked(
        suite, real, ext, name, args.out, args.address, protocols, args.allow_overlap, args.reported, command
    )
    return 0


def _overrides(args) -> dict:
    overrides = {}
    if args.ipc:
        overrides["ipcs"] = args.ipc
    if args.seeds:
        overrides["seeds"] = args.seeds
    if args.students is not None:
        overrides["students"] = [s.strip() for s in args.students.split(",") if s.strip()]
    return overrides


def _methods(args, suite) -> list[str]:
    """The board's methods: --methods, checked against the suite's, else the suite's."""
    if args.methods is None:
        return list(suite.methods)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise SuiteError(f"{suite.source}: methods: --methods {args.methods!r} names no method")
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise SuiteError(f"{suite.source}: methods: --methods names {', '.join(repeated)} more than once")
    unknown = [m for m in methods if m not in suite.methods]
    if unknown:
        in_profiles = [p for p, v in suite.profiles.items() if all(m in (v.get("methods") or {}) for m in unknown)]
        hint = f"; --profile {in_profiles[0]} lists them" if in_profiles and args.profile == "full" else ""
        raise SuiteError(
            f"{suite.source}: methods: --methods names {', '.join(unknown)}, "
            f"not in the suite (it has: {', '.join(suite.methods)}){hint}"
        )
    return methods


def _verb(args, suite) -> tuple[str, list[str] | None]:
    """The one verb asked for (a verb, or the mode flag standing for it) and, for compare, its pair; checked."""
    modes = [
        flag
        for flag, on in (
            ("--search", args.search is not None),
            ("--site", args.site),
            ("--compare", args.compare is not None),
            ("--export", args.export is not None),
            ("--evaluate", args.evaluate is not None),
            ("--plan", args.plan),
            ("--cross-arch", args.cross_arch),
        )
        if on
    ]
    if len(modes) > 1:
        raise SuiteError(f"{suite.source}: {' and '.join(modes)}: one at a time")
    pair = None
    if args.compare is not None:
        pair = [m.strip() for m in args.compare.split(",") if m.strip()]
        if len(pair) != 2 or pair[0] == pair[1]:
            raise SuiteError(f"{suite.source}: methods: --compare {args.compare!r} must name two different methods")
    # --compare may name an external set (`ddbench evaluate`) the store in --out holds beside the suite's methods
    external = external_names(stored_rows(Path(args.out) / "results" / f"{suite.name}.jsonl")) if pair else []
    unknown = [m for m in pair or [] if m not in suite.methods and m not in external]
    unknown += [args.export] if args.export is not None and args.export not in suite.methods else []
    if unknown:
        raise SuiteError(
            f"{suite.source}: methods: {', '.join(unknown)} not in the suite (it has: "
            f"{', '.join(suite.methods)}{'; external sets in --out: ' + ', '.join(external) if external else ''})"
            f"{'; try --profile leaderboard' if args.profile == 'full' else ''}"
        )
    if args.export is not None and (not args.ipc or len(args.ipc) != 1):
        raise SuiteError(f"{suite.source}: ipcs: --export needs one IPC (--ipc K)")
    if args.no_check and args.accept_failed_check:
        raise SuiteError(
            f"{suite.source}: --no-check and --accept-failed-check: one or the other (--no-check skips the "
            "backbone check; --accept-failed-check runs it and marks the rows when it fails)"
        )
    if not args.plan:
        for flag in ("gpus", "gpu_tflops"):
            if getattr(args, flag) is not None:
                raise SuiteError(
                    f"{suite.source}: --{flag.replace('_', '-')}: only with --plan (it prices the plan; a run uses "
                    "the GPUs its Ray cluster has)"
                )
    if args.evaluate is not None:
        if args.methods is not None:
            raise SuiteError(f"{suite.source}: --methods: evaluate trains on the set it is given; --name names it")
        return "evaluate", None
    given = [f for f in EVALUATE_ONLY if getattr(args, f) not in (None, False)]
    if given:
        raise SuiteError(f"{suite.source}: --{given[0].replace('_', '-')}: only with evaluate (--evaluate SOURCE)")
    if args.search is not None:
        return "search", None
    for flag in ("resume", "search_student", "search_set", "trials"):
        if getattr(args, flag):
            raise SuiteError(f"{suite.source}: --{flag.replace('_', '-')}: only with --search")
    if args.cross_arch and suite.cross_arch is None:
        raise SuiteError(f"{suite.source}: cross_arch: --cross-arch needs a cross_arch section in the suite")
    verb = (
        "site"
        if args.site
        else "compare"
        if pair
        else "export"
        if args.export is not None
        else "plan"
        if args.plan
        else "run"
    )
    return verb, pair


def _run(args, suite, methods, verb: str, pair, command: str) -> Run:
    """The checks that touch the cluster, --out and the data, in that order (--out is made by the second: every
    check that writes nothing comes first), then the Run that answers `verb`."""
    check_target(resolve(args.address))  # a named cluster answers and takes our token, before any compute
    check_out_dir(args.out, suite.source)
    if verb == "search":  # a search never opens the test split; its methods are the specs'
        real = load_real_data(suite.data, with_test=False)
        return Run(
            suite,
            sorted({s.method for s in methods}),
            args.out,
            real,
            args.address,
            check=not args.no_check,
            accept_failed_check=args.accept_failed_check,
        )
    real = load_real_data(suite.data)
    if args.cross_arch:
        check_real_image_counts(suite, real.train, [suite.cross_arch.method], [suite.cross_arch.ipc])
    else:
        check_real_image_counts(suite, real.train, methods, suite.ipcs)
    reads_only = verb in ("site", "compare", "export")
    if verb in ("compare", "export"):  # an external set of the pair is no method: the Run reads its rows only
        methods = [m for m in pair if m in suite.methods] if pair else [args.export]
    return Run(
        suite,
        methods,
        args.out,
        real,
        args.address,
        check=not args.no_check and verb not in ("compare", "export"),
        accept_failed_check=args.accept_failed_check,
        make=not reads_only,
        cross_arch=args.cross_arch,
        command=command,
    )


def _ask(run: Run, verb: str, pair, specs: list[SearchSpec], args) -> int:
    if verb == "search":
        run.search(specs, resume=args.resume)
    elif verb == "compare":
        run.compare(pair)
    elif verb == "export":
        run.export()
    elif args.cross_arch:
        run.cross_arch_study()
    else:
        run.board()
    return 0


def _search_specs(args, suite) -> list[SearchSpec]:
    """What `--search` asks for, checked before anything runs: one IPC, known methods that declare a space."""
    names = [m.strip() for m in args.search.split(",") if m.strip()]
    if not names:
        raise SuiteError(f"{suite.source}: --search: {args.search!r} names no method")
    set_method = args.search_set or next(iter(suite.methods))
    if set_method not in suite.methods:
        raise SuiteError(f"{suite.source}: --search-set: {set_method} is not one of the suite's methods")

    def trial_runs(name: str, flag: str) -> None:
        cls, config = get_method(name), suite.method_config(name)
        if cls.fine_tuning(config) is not None or cls.selects_across_classes(config):
            raise SuiteError(
                f"{suite.source}: {flag}: {name} fine-tunes its backbone or chooses across classes, "
                f"stages a search trial does not run yet"
            )

    for name in names:
        if name in suite.protocols:
            trial_runs(set_method, "--search-set")
            continue
        if name not in suite.methods:
            raise SuiteError(
                f"{suite.source}: --search: {name} is neither one of the suite's methods "
                f"(it has: {', '.join(suite.methods)}; a profile may add more) nor its protocols"
            )
        trial_runs(name, "--search")
        if not get_method(name).search_space:
            searchable = [m for m in suite.methods if get_method(m).search_space]
            raise SuiteError(
                f"{suite.source}: --search: {name} declares no search space (searchable here: "
                f"{', '.join(searchable) or 'none'})"
            )
    if len(suite.ipcs) != 1:
        raise SuiteError(f"{suite.source}: --ipc: a search tunes at one IPC; pass one of {suite.ipcs}")
    student = args.search_student or suite.students[0]
    if not is_student(student):
        raise SuiteError(f"{suite.source}: --search-student: unknown student {student!r}: not in timm's registry")
    protocol = search_protocol(suite)
    trials = args.trials or DEFAULT_TRIALS
    specs = [
        SearchSpec(set_method, suite.ipcs[0], student, name, trials, protocol_search=True)
        if name in suite.protocols
        else SearchSpec(name, suite.ipcs[0], student, protocol, trials)
        for name in names
    ]
    for spec in specs:
        if not space_of(suite, spec):  # before prepare, not after it
            raise SuiteError(f"{suite.source}: --search: {spec.subject} declares no search space: nothing to search")
        default_point(suite, spec)  # the suite's config must lie in the space: it is the first trial
    return specs


if __name__ == "__main__":
    sys.exit(main())
