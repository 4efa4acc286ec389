"""`python benchmark.py --suite NAME` / `ddbench --suite NAME`: suite → prepare → distill → evaluate → leaderboard."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from methods import get_method

from harness.runtime.cluster import ClusterError, check_target, connector, resolve
from harness.report.compare import compare, lines as compare_lines
from harness.stages.cross_arch import cross_architecture
from harness.models.data import DataError, load_real_data
from harness.stages.distill import DistillError, distill, plan
from harness.models.measures import DiversityError
from harness.stages.diversity import measure_sets
from harness.stages.evaluate import evaluate, full_data_protocol
from harness.report.export import ExportError, export_set
from harness.stages.fine_tune import fine_tune_backbones
from harness.core.identity import FULL_DATA
from harness.report.leaderboard import render
from harness.report.markdown import protocols_note
from harness.report.rows import board_order, measured_rows, searched_label, trained_under, with_searched_labels
from harness.core.lock import holds_output
from harness.report.plan import DEFAULT_GPU_TFLOPS, PlanError, make_plan
from harness.runtime.preflight import check_out_dir, check_real_image_counts
from harness.stages.prepare import PrepareError, prepare
from harness.stages.search import (DEFAULT_TRIALS, SearchError, SearchSpec, default_point, run_search, search_protocol, space_of,
                     write_outputs)
from harness.core.sets import Manifest
from harness.report.site import build_site
from harness.core.store import ResultStore
from harness.models.students import is_student
from harness.config.loader import load_suite
from harness.config.schema import SuiteError


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


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"ddbench: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ddbench", description=__doc__)
    p.add_argument("--suite", default="fashion-mnist", help="a suite name in benchmarks/ or a YAML path")
    p.add_argument("--out", default="runs", type=Path, help="all outputs of the run (default: runs/)")
    p.add_argument("--methods", help="comma-separated methods (default: the suite's)")
    p.add_argument("--ipc", type=_int_list, help="comma-separated IPCs (default: the suite's)")
    p.add_argument("--students", help="comma-separated students (default: the suite's or the profile's)")
    p.add_argument("--seeds", type=_positive, help="student seeds per setting (default: the suite's)")
    p.add_argument("--profile", default="full", help="full (the suite as written) or one of its profiles, e.g. quick, leaderboard (default: full)")
    p.add_argument("--address", help="Ray cluster HOST:PORT to attach to (default: RAY_ADDRESS, else the head `ray start` "
                                       "runs on this machine, else a local cluster; `local` forces a local one)")
    p.add_argument("--no-check", action="store_true", help="skip the backbone check")
    p.add_argument("--accept-failed-check", action="store_true",
                   help="run methods that sample the backbone even when its check fails; their rows are marked")
    p.add_argument("--cross-arch", action="store_true",
                   help="run the suite's cross-architecture study (teacher × student table and heatmap) instead")
    p.add_argument("--plan", action="store_true",
                   help="print what the suite would do and cost (shards, trials, model loads, images, disk, GPU-hours) "
                        "and run nothing; needs neither the data nor the models")
    p.add_argument("--search", metavar="METHOD[,METHOD]",
                   help="tune these methods' search spaces (or a protocol's recipe for --search-student) on the "
                        "validation split with Ray Tune + Optuna instead of running the suite; the test split is never "
                        "read; best settings go to --out/search/<method>.yaml")
    p.add_argument("--trials", type=_positive, default=None, help="trials per searched method (default: 20)")
    p.add_argument("--search-student", help="the proxy student a search trains (default: the suite's first student)")
    p.add_argument("--search-set", metavar="METHOD",
                   help="a protocol search (--search PROTOCOL) tunes the student's recipe on this method's set "
                        "(default: the suite's first method)")
    p.add_argument("--resume", action="store_true", help="continue a killed --search; finished trials are kept")
    p.add_argument("--gpus", type=_positive, default=1, help="GPUs the plan spreads the work over (default: 1)")
    p.add_argument("--gpu-tflops", type=_positive_number, default=DEFAULT_GPU_TFLOPS,
                   help=f"sustained TFLOP/s per GPU the plan prices unmeasured work at (default: {DEFAULT_GPU_TFLOPS:g})")
    p.add_argument("--site", action="store_true",
                   help="redraw the board and the static site (<out>/site/) from what --out holds: the result store "
                        "and the sets on disk; distils and trains nothing (every run draws the site at its end too)")
    p.add_argument("--compare", metavar="A,B",
                   help="two methods of the suite: per student, protocol and IPC, A − B with its 95%% confidence "
                        "interval and whether it is resolved, from the store in --out; written to <out>/compare/")
    p.add_argument("--export", metavar="METHOD",
                   help="write METHOD's set at --ipc K (one IPC) as a Hugging Face datasets folder under <out>/exports/")
    return p


def fail(message: str) -> None:
    print(f"ddbench: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = {}
    if args.ipc:
        overrides["ipcs"] = args.ipc
    if args.seeds:
        overrides["seeds"] = args.seeds
    if args.students is not None:
        overrides["students"] = [s.strip() for s in args.students.split(",") if s.strip()]
    try:
        suite = load_suite(args.suite, args.profile, overrides, check_files=not args.plan)
        methods = list(suite.methods)
        if args.methods is not None:
            methods = [m.strip() for m in args.methods.split(",") if m.strip()]
            if not methods:
                raise SuiteError(f"{suite.source}: methods: --methods {args.methods!r} names no method")
            repeated = sorted({m for m in methods if methods.count(m) > 1})
            if repeated:
                raise SuiteError(f"{suite.source}: methods: --methods names {', '.join(repeated)} more than once")
            unknown = [m for m in methods if m not in suite.methods]
            if unknown:
                in_profiles = [p for p, v in suite.profiles.items()
                               if all(m in (v.get("methods") or {}) for m in unknown)]
                hint = f"; --profile {in_profiles[0]} lists them" if in_profiles and args.profile == "full" else ""
                raise SuiteError(f"{suite.source}: methods: --methods names {', '.join(unknown)}, "
                                 f"not in the suite (it has: {', '.join(suite.methods)}){hint}")
        modes = [flag for flag, on in (("--search", args.search is not None), ("--site", args.site),
                                       ("--compare", args.compare is not None), ("--export", bool(args.export)),
                                       ("--plan", args.plan), ("--cross-arch", args.cross_arch)) if on]
        if len(modes) > 1:
            raise SuiteError(f"{suite.source}: {' and '.join(modes)}: one at a time")
        pair = None
        if args.compare is not None:
            pair = [m.strip() for m in args.compare.split(",") if m.strip()]
            if len(pair) != 2 or pair[0] == pair[1]:
                raise SuiteError(f"{suite.source}: methods: --compare {args.compare!r} must name two different methods")
        unknown = [m for m in (pair or []) + ([args.export] if args.export else []) if m not in suite.methods]
        if unknown:
            raise SuiteError(f"{suite.source}: methods: {', '.join(unknown)} not in the suite (it has: "
                             f"{', '.join(suite.methods)}){'; try --profile leaderboard' if args.profile == 'full' else ''}")
        if args.export and (not args.ipc or len(args.ipc) != 1):
            raise SuiteError(f"{suite.source}: ipcs: --export needs one IPC (--ipc K)")
        if args.search is not None:
            searches = _search_specs(args, suite)
            check_target(resolve(args.address))
            check_out_dir(args.out, suite.source)
            real = load_real_data(suite.data, with_test=False)  # a search never opens the test split
            return run_searches(suite, real, searches, args.out, args.address, check=not args.no_check,
                                resume=args.resume, accept_failed_check=args.accept_failed_check)
        for flag in ("resume", "search_student", "search_set", "trials"):
            if getattr(args, flag):
                raise SuiteError(f"{suite.source}: --{flag.replace('_', '-')}: only with --search")
        if args.cross_arch and suite.cross_arch is None:
            raise SuiteError(f"{suite.source}: cross_arch: --cross-arch needs a cross_arch section in the suite")
        if args.plan:
            print(make_plan(suite, methods, args.out, args.gpus, args.gpu_tflops), flush=True)
            return 0
        check_target(resolve(args.address))  # a named cluster answers and takes our token, before any compute
        check_out_dir(args.out, suite.source)  # after every check that writes nothing: it creates the folder
        real = load_real_data(suite.data)
        if args.cross_arch:
            check_real_image_counts(suite, real.train, [suite.cross_arch.method], [suite.cross_arch.ipc])
        else:
            check_real_image_counts(suite, real.train, methods, suite.ipcs)
    except (SuiteError, PlanError, ClusterError, SearchError) as e:
        fail(str(e))
    except DataError as e:  # its message says what is wrong with the data; the suite's data section points at it
        fail(f"{suite.source}: data: {e}")
    except (PrepareError, DistillError) as e:
        fail(str(e))
    if pair or args.export:
        methods = pair or [args.export]
    command = shlex.join(["python", "benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(suite, real, methods, args.out, args.address, check=not args.no_check and not (pair or args.export),
                   cross_arch=args.cross_arch, accept_failed_check=args.accept_failed_check,
                   draw_only=bool(args.site or pair or args.export), compare_pair=pair, export=args.export,
                   command=command)
    except (PrepareError, DiversityError, ClusterError, DistillError, ExportError) as e:
        fail(str(e))


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
            raise SuiteError(f"{suite.source}: {flag}: {name} fine-tunes its backbone or chooses across classes, "
                             f"stages a search trial does not run yet")

    for name in names:
        if name in suite.protocols:
            trial_runs(set_method, "--search-set")
            continue
        if name not in suite.methods:
            raise SuiteError(f"{suite.source}: --search: {name} is neither one of the suite's methods "
                             f"(it has: {', '.join(suite.methods)}; a profile may add more) nor its protocols")
        trial_runs(name, "--search")
        if not get_method(name).search_space:
            searchable = [m for m in suite.methods if get_method(m).search_space]
            raise SuiteError(f"{suite.source}: --search: {name} declares no search space (searchable here: "
                             f"{', '.join(searchable) or 'none'})")
    if len(suite.ipcs) != 1:
        raise SuiteError(f"{suite.source}: --ipc: a search tunes at one IPC; pass one of {suite.ipcs}")
    student = args.search_student or suite.students[0]
    if not is_student(student):
        raise SuiteError(f"{suite.source}: --search-student: unknown student {student!r}: not in timm's registry")
    if args.cross_arch or args.plan:
        raise SuiteError(f"{suite.source}: --search: runs alone, not with --{'cross-arch' if args.cross_arch else 'plan'}")
    protocol = search_protocol(suite)
    trials = args.trials or DEFAULT_TRIALS
    specs = [SearchSpec(set_method, suite.ipcs[0], student, name, trials, protocol_search=True)
             if name in suite.protocols else SearchSpec(name, suite.ipcs[0], student, protocol, trials)
             for name in names]
    for spec in specs:
        if not space_of(suite, spec):  # before prepare, not after it
            raise SuiteError(f"{suite.source}: --search: {spec.subject} declares no search space: nothing to search")
        default_point(suite, spec)  # the suite's config must lie in the space: it is the first trial
    return specs


@holds_output  # one run per --out at a time (harness/core/lock.py)
def run_searches(suite, real, specs: list[SearchSpec], out: Path, address: str | None, check: bool = True,
                 resume: bool = False, accept_failed_check: bool = False) -> int:
    """Prepare what the methods need, then each method's search; its trials go to the result store."""
    out = Path(out).absolute()
    connect = connector(address, out)
    prepared = prepare(suite, real, out, check=check, connect=connect, methods=sorted({s.method for s in specs}),
                       accept_failed_check=accept_failed_check)
    connect()
    store = ResultStore(out / "results" / f"{suite.name}.jsonl")
    for spec in specs:
        outcome = run_search(suite, real, prepared, spec, out, resume=resume)
        written = write_outputs(outcome, suite, out, store)
        print(outcome.summary(), flush=True)
        print(f"[search] {spec.subject}: {len(outcome.trials)} trial rows in {store.path}; "
              f"{', '.join(map(str, written))}", flush=True)
    return 0


@holds_output  # one run per --out at a time (harness/core/lock.py)
def run(suite, real, methods: list[str], out: Path, address: str | None, check: bool = True,
        cross_arch: bool = False, accept_failed_check: bool = False, draw_only: bool = False,
        compare_pair: list[str] | None = None, export: str | None = None, command: str = "") -> int:
    """The pipeline; `draw_only` (--site, --compare, --export) reads the sets and results --out holds and makes
    none, so it needs no cluster."""
    t0 = time.perf_counter()
    out = Path(out).absolute()  # workers resolve a relative path against their own working directory
    print(f"[suite] {suite.name}: {len(methods)} methods × IPC {suite.ipcs} × {len(suite.students)} students × "
          f"{len(suite.protocols)} protocols × {suite.seeds} seeds → {out}", flush=True)

    connect = connector(address, out)  # attaches a named cluster now; starts a local one only when work needs it
    prepared = prepare(suite, real, out, check=check, connect=connect,
                       methods=[suite.cross_arch.method] if cross_arch else methods,
                       accept_failed_check=accept_failed_check)
    if cross_arch:
        paths = cross_architecture(suite, real, prepared, out, connect)
        print(f"[cross-arch] {', '.join(map(str, paths))} ({time.perf_counter() - t0:.0f} s)", flush=True)
        print(paths[0].read_text(), flush=True)
        return 0
    prepared = fine_tune_backbones(suite, real, prepared, out, methods, connect, check=check, make=not draw_only)
    jobs = plan(suite, prepared, out, methods, suite.ipcs)
    if export:
        return _export(suite, jobs, out)
    labels = {}  # (method, config hash) → its board label, for the configs a search chose
    for name in (m for m in methods if m in suite.searched):
        searched_jobs = plan(suite.with_method_config(name, suite.searched_config(name)), prepared, out, [name],
                             suite.ipcs)
        if searched_jobs[0].config_hash not in {j.config_hash for j in jobs if j.method == name}:
            jobs += searched_jobs
            labels[(name, searched_jobs[0].config_hash)] = searched_label(name, suite.searched[name].trials)
    manifests = [Manifest.read(j.path) for j in jobs if j.done()] if draw_only else distill(suite, real, prepared,
                                                                                            jobs, connect)
    store = ResultStore(out / "results" / f"{suite.name}.jsonl")
    current = {(j.method, j.config_hash) for j in jobs} | {(FULL_DATA, real.train.fingerprint()[:12])}
    recipes = current_recipes(suite, prepared, store.read())
    if compare_pair:  # a searched config is its own row, never averaged with the method's own
        rows, compared, _, _ = with_searched_labels(store.read(), current, [], methods, labels)
        return _compare(suite, rows, compared, recipes, compare_pair, out)
    measure_sets(suite, real, prepared, manifests, out)
    if not draw_only:
        evaluate(suite, real, manifests, store, suite.students, suite.seeds, connect, prepared, out)
    notes = [prepared.teacher_note()]
    if prepared.backbone_check:
        c = prepared.backbone_check
        notes.append(f"backbone check: the teacher agrees with the conditioning class on {c['agreement']:.1%} of "
                     f"{c['samples']} samples (cfg {c['cfg_scale']}, {c['steps']} DDIM steps)")
    for name, tuned in prepared.fine_tuned.items():
        if "check" in tuned:
            c = tuned["check"]
            notes.append(f"{name}'s fine-tuned backbone ({tuned['hash']}, {tuned['cost']['steps']} steps): the teacher "
                         f"agrees with the conditioning class on {c['agreement']:.1%} of {c['samples']} samples")
    notes.append(protocols_note(suite.protocols))
    notes += suite.notes
    rows, current, manifests, order = with_searched_labels(store.read(), current, manifests, methods, labels)
    if labels:
        notes.append("rows labelled 'searched on val (N trials)': the method's config chosen by N trials of a "
                     "hyperparameter search on the validation split (harness/stages/search.py), beside the suite's own")
    md, csv = render(suite, rows, current, out / "leaderboard", order, notes, manifests, recipes)
    print(f"[leaderboard] {md} and {csv} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not draw_only:
        print(md.read_text(), flush=True)
    page = build_site(suite, rows, current, out / "site", order, notes, manifests, out / "leaderboard",
                      command, recipes)
    print(f"[site] {page} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


def current_recipes(suite, prepared, rows: list[dict]) -> set[tuple[str, str]]:
    """(student, protocol hash) of every recipe the board shows: the one each student trains under now in each
    protocol (a searched per-student recipe is that student's alone), and the full-data recipe."""
    students = set(suite.students) | {r.get("student") for r in rows}
    recipes = {(s, prepared.protocol_hash(p.for_student(s))) for p in suite.protocols.values() for s in students}
    if suite.full_data.epochs:  # full_data.epochs 0: no full-data row, and no recipe of 0 epochs to build
        recipes |= {(s, full_data_protocol(suite).identity()) for s in students}
    return recipes


def _compare(suite, rows: list[dict], current, recipes, pair: list[str], out: Path) -> int:
    rows = trained_under(rows, recipes)
    table = board_order(compare(measured_rows(rows, current), *pair), pair, list(suite.students),
                        list(suite.protocols), ("student", "protocol", "ipc"))
    if table.empty:
        fail(f"{suite.source}: methods: the store in {out} holds no cell with both {pair[0]} and {pair[1]}")
    stem = out / "compare" / f"{suite.name}-{pair[0]}-vs-{pair[1]}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(stem.with_suffix(".csv"), index=False, float_format="%.5f")
    text = "\n".join(compare_lines(table, *pair)) + "\n"
    stem.with_suffix(".md").write_text(text)
    print(text + f"\n[compare] {stem}.md and .csv", flush=True)
    return 0


def _export(suite, jobs, out: Path) -> int:
    (job,) = jobs
    if not job.done():
        fail(f"{suite.source}: methods: no {job.method} set at IPC {job.ipc} in {out} (a run with --methods "
             f"{job.method} --ipc {job.ipc} makes it)")
    dest = export_set(Manifest.read(job.path), out / "exports" / f"{suite.name}-{job.method}-ipc{job.ipc}", suite.name)
    print(f"[export] {dest}: load it with datasets.load_dataset({str(dest)!r}, split='train')", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
