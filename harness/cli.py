"""`python benchmark.py --suite NAME` / `ddbench --suite NAME`: suite → prepare → distill → evaluate → leaderboard."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cluster import ClusterError, check_target, connector, resolve
from .cross_arch import cross_architecture
from .data import DataError, load_real_data
from .distill import DistillError, distill, plan
from .diversity import DiversityError, measure_sets
from .evaluate import evaluate, full_data_protocol
from .fine_tune import fine_tune_backbones
from .identity import FULL_DATA
from .leaderboard import render
from .lock import holds_output
from .plan import DEFAULT_GPU_TFLOPS, PlanError, make_plan
from .preflight import check_out_dir, check_real_image_counts
from .prepare import PrepareError, prepare
from .store import ResultStore
from .suite import SuiteError, load_suite


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
    p.add_argument("--gpus", type=_positive, default=1, help="GPUs the plan spreads the work over (default: 1)")
    p.add_argument("--gpu-tflops", type=_positive_number, default=DEFAULT_GPU_TFLOPS,
                   help=f"sustained TFLOP/s per GPU the plan prices unmeasured work at (default: {DEFAULT_GPU_TFLOPS:g})")
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
    except (SuiteError, PlanError, ClusterError) as e:
        fail(str(e))
    except DataError as e:  # its message says what is wrong with the data; the suite's data section points at it
        fail(f"{suite.source}: data: {e}")
    try:
        return run(suite, real, methods, args.out, args.address, check=not args.no_check, cross_arch=args.cross_arch,
                   accept_failed_check=args.accept_failed_check)
    except (PrepareError, DiversityError, ClusterError, DistillError) as e:
        fail(str(e))


@holds_output  # one run per --out at a time (harness/lock.py)
def run(suite, real, methods: list[str], out: Path, address: str | None, check: bool = True,
        cross_arch: bool = False, accept_failed_check: bool = False) -> int:
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
    prepared = fine_tune_backbones(suite, real, prepared, out, methods, connect, check=check)
    jobs = plan(suite, prepared, out, methods, suite.ipcs)
    manifests = distill(suite, real, prepared, jobs, connect)
    measure_sets(suite, real, prepared, manifests, out)
    store = ResultStore(out / "results" / f"{suite.name}.jsonl")
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
    notes.append("protocols: " + "; ".join(
        f"{k}: epochs by IPC {v.epochs}" + (f", student options {v.student_kwargs}" if v.student_kwargs else "")
        for k, v in suite.protocols.items()))
    notes += suite.notes
    current = {(m.method, m.config_hash) for m in manifests} | {(FULL_DATA, real.train.fingerprint()[:12])}
    recipes = {prepared.protocol_hash(p) for p in suite.protocols.values()}
    if suite.full_data.epochs:  # full_data.epochs 0: no full-data row, and no recipe of 0 epochs to build
        recipes.add(full_data_protocol(suite).identity())
    md, csv = render(suite, store.read(), current, out / "leaderboard", methods, notes, manifests, recipes)
    print(f"[leaderboard] {md} and {csv} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(md.read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
