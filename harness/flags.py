"""The command line's flags and verbs (`ddbench VERB --suite NAME [flags]`), and the checks of them and of the suite's
text that need no model, data or cluster: run first by benchmark.py, before the heavy imports (torch, Ray,
diffusers take 10-30 s on a busy machine), so that a typo, a missing suite or a bad flag is one line and exit
status 2 in well under two seconds (issue 30 item 7). harness/cli.py parses with the same parser and checks the
rest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.config.defaults import DEFAULT_GPU_MEMORY_GB, DEFAULT_GPU_TFLOPS
from harness.config.evaluate_args import ExternalSetError, precheck_evaluate
from harness.config.flag_checks import SuiteNames, check_out_holds, chosen_methods, chosen_verb
from harness.config.released import RELEASED_DIR
from harness.config.text import SuiteError, read_suite

DESCRIPTION = """`ddbench VERB --suite NAME [flags]` (`python benchmark.py ...`): the command line. It parses,
checks what it was given (one line and exit status 2 before any compute), and hands over to the pipeline
(harness/pipeline.py).

Verbs: run (the default: suite → prepare → distill → evaluate → leaderboard), plan, search, site, compare, export,
evaluate (a set made elsewhere); and fetch-set NAME, which downloads a released set of the registry
(benchmarks/released/) and needs no suite.
"""
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


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _checked(text: str, convert, within, expected: str):
    """`text` converted, and within range: otherwise argparse's one line, "expected EXPECTED, got 'TEXT'"."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not within(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _positive(text: str) -> int:
    return _checked(text, int, lambda v: v >= 1, "a positive integer")


def _out_dir(text: str) -> Path:
    if not text.strip():  # Path("") is ".": the run would write its caches, sets and store into the current folder
        raise argparse.ArgumentTypeError(
            "an empty path names the current folder; name the output folder (default: runs)"
        )
    return Path(text)


def _positive_number(text: str) -> float:
    return _checked(text, float, lambda v: 0 < v < float("inf"), "a positive number")


def _percent(text: str) -> float:
    """--reported PERCENT → a fraction, as the rows hold accuracy."""
    return _checked(text, float, lambda v: 0 < v <= 100, "a percentage in (0, 100]") / 100


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
        prog="ddbench",
        description=DESCRIPTION,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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


def flat_parser() -> argparse.ArgumentParser:
    """No verb: every flag, the verbs as mode flags (`--plan`, `--search M`, ...), as scripts and `ray submit
    cluster.yaml benchmark.py --suite imagenet` call it; without a mode flag it runs."""
    p = _Parser(
        prog="ddbench",
        description=DESCRIPTION,
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


def overrides(args) -> dict:
    """The suite fields the flags override."""
    overrides = {}
    if args.ipc:
        overrides["ipcs"] = args.ipc
    if args.seeds:
        overrides["seeds"] = args.seeds
    if args.students is not None:
        overrides["students"] = [s.strip() for s in args.students.split(",") if s.strip()]
    return overrides


def precheck(argv: list[str]) -> argparse.Namespace:
    """The flags parsed and the suite's text read (file, UTF-8, YAML, profile, includes, variables): one line and exit
    status 2 on a mistake, before anything heavy is imported. The suite's fields are checked after (they need the
    method, model and protocol registries). fetch-set reads no suite: its own parser checks it."""
    if argv[:1] == ["fetch-set"]:
        return fetch_set_parser().parse_args(argv[1:])
    args = parse(argv)
    try:
        raw, source = read_suite(args.suite, args.profile, overrides(args))
        names = SuiteNames.of_text(raw, source)
        chosen_methods(args, names)
        verb, pair = chosen_verb(args, names)  # reads --out only for a compare, which a plan is not
        check_out_holds(args, names, verb, pair)
        if verb == "evaluate":
            precheck_evaluate(args, raw, names.methods)
    except (SuiteError, ExternalSetError) as e:
        fail(str(e))
    return args
