"""`ddbench VERB --suite NAME [flags]` (`python benchmark.py ...`): the command line. It parses, checks what it was
given (one line and exit status 2 before any compute), and hands over to the pipeline (harness/pipeline.py).

Verbs: run (the default: suite → prepare → distill → evaluate → leaderboard), plan, search, site, compare, export.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys

import ray

from harness.config.defaults import DEFAULT_GPU_TFLOPS
from harness.config.evaluate_args import ExternalSetError, parse_normalisation, read_class_order
from harness.config.flag_checks import SuiteNames, chosen_methods, chosen_verb
from harness.config.loader import load_suite
from harness.config.released import ReleasedError
from harness.config.schema import SuiteError
from harness.flags import fail, fetch_set_parser, overrides, parse
from harness.models.data import DataError, load_real_data
from harness.models.measures import DiversityError
from harness.models.students import is_student
from harness.pipeline import Run, RunError, at_set_ipc, check_protocols, evaluate_checked
from harness.report.export import ExportError
from harness.report.plan import PlanError
from harness.runtime.cluster import ClusterError, check_target, resolve, signalled
from harness.runtime.cluster import _exit_on as on_signal
from harness.runtime.preflight import check_memory_fits, check_out_dir, check_real_image_counts
from harness.runtime.released_sets import fetch_set
from harness.stages.distill import DistillError
from harness.stages.external import check_and_build, check_name, suite_classes
from harness.stages.prepare import PrepareError
from harness.stages.search import DEFAULT_TRIALS, SearchError, SearchSpec, default_point, search_protocol, space_of
from methods import get_method


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
            _stopped(f"stopped by {signal.Signals(signalled()).name}", 128 + signalled(), argv)
        _stopped("interrupted (Ctrl-C)", 130, argv)
    except SystemExit as e:  # Terminated, or what Ray's get makes of it: SystemExit(1)
        signum = signalled() or (signal.SIGTERM if _rays_sigterm_exit(e) else None)
        if signum:  # (a SIGTERM while ray.init runs meets Ray's own handler: sys.exit(15))
            _stopped(f"stopped by {signal.Signals(signum).name}", 128 + signum, argv)
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


def _stopped(what: str, status: int, argv: list[str] | None) -> None:
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):  # end a progress bar's line, so that ours is a line of its own
        bar.close()
    argv = sys.argv[1:] if argv is None else list(argv)
    # A stopped search continues only when asked to (--resume): the same command alone would refuse its folder.
    resumes = (
        "the same command with --resume continues the search"
        if argv[:1] != ["fetch-set"] and parse(argv).search is not None and "--resume" not in argv
        else "the same command resumes from it"
    )
    print(f"ddbench: {what}; what is finished is kept, and {resumes}", file=sys.stderr)
    sys.exit(status)


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["fetch-set"]:
        try:
            return fetch_set(fetch_set_parser().parse_args(argv[1:]))
        except ReleasedError as e:
            fail(str(e))
    args = parse(argv)
    command = shlex.join(["python", "benchmark.py", *argv])
    try:
        suite = load_suite(args.suite, args.profile, overrides(args), check_files=not args.plan)
        names = SuiteNames.of_suite(suite)
        methods = chosen_methods(args, names)
        verb, pair = chosen_verb(args, names)
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
    suite = at_set_ipc(suite, ext, args.profile, overrides(args))
    evaluate_checked(
        suite, real, ext, name, args.out, args.address, protocols, args.allow_overlap, args.reported, command
    )
    return 0


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
