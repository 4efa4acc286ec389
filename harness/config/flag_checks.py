"""The flags checked against the suite's names, before any model, data or cluster: the methods they name (--methods,
--compare, --export), the one verb they ask for, the flags that belong to another verb, and what compare and export
read from --out (a row of each method; the set on disk). `SuiteNames` is what these need of a suite: built from its
text by the command line before the heavy imports (harness/flags.py), from the loaded suite by harness/cli.py, so
both answer a mistake with the same line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.config.text import SuiteError
from harness.core.identity import MANIFEST
from harness.core.store import latest_external_sets, stored_rows


@dataclass(frozen=True)
class SuiteNames:
    source: str
    name: str
    methods: list[str] = field(default_factory=list)
    profiles: dict = field(default_factory=dict)
    has_cross_arch: bool = False

    @classmethod
    def of_text(cls, raw: dict, source: str) -> SuiteNames:
        methods = raw.get("methods", {})
        if not isinstance(methods, dict):  # as the loader says it, not "it has: " nothing
            raise SuiteError(f"{source}: methods: expected a mapping of method name to settings, got {methods!r}")
        profiles = raw.get("profiles") if isinstance(raw.get("profiles"), dict) else {}
        profiles = {k: v for k, v in profiles.items() if isinstance(v, dict)}  # the loader refuses the rest
        return cls(source, str(raw.get("name", "")), list(methods), profiles, raw.get("cross_arch") is not None)

    @classmethod
    def of_suite(cls, suite) -> SuiteNames:
        return cls(suite.source, suite.name, list(suite.methods), suite.profiles, suite.cross_arch is not None)

    def rows(self, out) -> list[dict]:
        return stored_rows(Path(out) / "results" / f"{self.name}.jsonl")


def no_rows_message(source: str, out, absent: list[str]) -> str:
    return (
        f"{source}: methods: the store in {out} holds no row of {' or '.join(absent)} "
        f"(a run with --methods {','.join(absent)} makes them)"
    )


def no_set_message(source: str, out, method: str, ipc: int) -> str:
    return (
        f"{source}: methods: no {method} set at IPC {ipc} in {out} (a run with --methods {method} --ipc {ipc} makes it)"
    )


def methods_without_rows(rows: list[dict], methods: list[str]) -> list[str]:
    return [m for m in methods if not any(r.get("method") == m for r in rows)]


def has_set_on_disk(out, suite_name: str, method: str, ipc: int) -> bool:
    return bool(list((Path(out) / "distilled" / suite_name / method).glob(f"*/ipc{ipc}/{MANIFEST}")))


def check_out_holds(args, suite: SuiteNames, verb: str, pair: list[str] | None) -> None:
    """compare: a row of each method in --out's store; export: the method's set at its IPC on disk. What the
    pipeline checks again (for a caller of its API), here before the heavy imports."""
    if verb == "compare":
        absent = methods_without_rows(suite.rows(args.out), pair)
        if absent:
            raise SuiteError(no_rows_message(suite.source, args.out, absent))
    if verb == "export":
        (ipc,) = args.ipc
        if not has_set_on_disk(args.out, suite.name, args.export, ipc):
            raise SuiteError(no_set_message(suite.source, args.out, args.export, ipc))


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


def chosen_methods(args, suite: SuiteNames) -> list[str]:
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
        in_profiles = [
            p
            for p, v in suite.profiles.items()
            if isinstance(v.get("methods"), dict) and all(m in v["methods"] for m in unknown)
        ]
        hint = f"; --profile {in_profiles[0]} lists them" if in_profiles and args.profile == "full" else ""
        raise SuiteError(
            f"{suite.source}: methods: --methods names {', '.join(unknown)}, "
            f"not in the suite (it has: {', '.join(suite.methods)}){hint}"
        )
    return methods


def chosen_verb(args, suite: SuiteNames) -> tuple[str, list[str] | None]:
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
    external = sorted({name for name, _ in latest_external_sets(suite.rows(args.out))}) if pair else []
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
    check_evaluate_only(args, suite.source)
    if args.evaluate is not None:
        return "evaluate", None
    if args.search is not None:
        return "search", None
    for flag in ("resume", "search_student", "search_set", "trials"):
        if getattr(args, flag):
            raise SuiteError(f"{suite.source}: --{flag.replace('_', '-')}: only with --search")
    if args.cross_arch and not suite.has_cross_arch:
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


def check_evaluate_only(args, source: str) -> None:
    """evaluate's flags with evaluate only, and evaluate without --methods (it trains on the set it is given)."""
    if args.evaluate is not None:
        if args.methods is not None:
            raise SuiteError(f"{source}: --methods: evaluate trains on the set it is given; --name names it")
        return
    given = [f for f in EVALUATE_ONLY if getattr(args, f) not in (None, False)]
    if given:
        raise SuiteError(f"{source}: --{given[0].replace('_', '-')}: only with evaluate (--evaluate SOURCE)")
