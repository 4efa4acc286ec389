"""Prepare a suite's backbone and teacher and run the backbone check, and nothing else: what a new dataset's suite
should pass before any method samples its backbone.

    python scripts/check_backbone.py --suite my-data.yaml --out runs [--steps 1500,3000,6000] [--write]

`--steps` trains a backbone that prepare trains (the pixel DiT) to each step count in turn, every run extending
the last one's checkpoint, and checks each: the agreement against training steps, for choosing
`backbone.train.steps` on a new dataset. Each check prints its agreement, its rate per class by name and the
classes below the bar (`backbone.check_min_agreement`), and is kept in `<out>/cache/backbone-check-*.json`
(with the class names, the backbone's hash and its training steps), where `benchmark.py --out <out>` finds it:
a run on a backbone of the same training run with other steps says so before it trains.

At the end it prints the `backbone.train.steps` line of the fewest steps that passed (`--write` puts it into the
suite file) and exits 0; where none passed it names the classes that lag, the step count the trend of the last
two checks suggests (agreement against log steps), and exits 1. Bad input exits 2, as `benchmark.py` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.config.loader import load_suite  # noqa: E402
from harness.config.schema import SuiteError  # noqa: E402
from harness.models.data import load_real_data  # noqa: E402
from harness.stages.prepare import PrepareError, lagging_classes, prepare  # noqa: E402

CHECKPOINT_EVERY = 500  # suggested step counts are rounded up to this (the pixel DiT's checkpoint interval)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/check_backbone.py",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--suite", required=True, help="the suite: a name in benchmarks/ or a YAML file's path")
    p.add_argument("--out", default="runs", type=Path, help="the output folder whose cache/ it fills (default runs)")
    p.add_argument(
        "--steps",
        help="comma-separated training step counts, checked in increasing order (default: the suite's "
        "backbone.train.steps)",
    )
    p.add_argument(
        "--write",
        action="store_true",
        help="write the passing `steps:` into the suite file's backbone.train section (a suite given by path)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return check(args)
    except (SuiteError, PrepareError, ValueError) as e:
        print(f"[check] {e}", file=sys.stderr, flush=True)
        return 2


def check(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    trained = getattr(suite.backbone, "train", None)
    if args.steps and trained is None:
        raise ValueError(f"{suite.source}: backbone: --steps is for a backbone prepare trains; this one is not")
    try:
        counts = sorted({int(s) for s in args.steps.split(",")}) if args.steps else [None]
    except ValueError:
        raise ValueError(f"--steps: expected comma-separated whole numbers, got {args.steps!r}") from None
    if any(s is not None and s < 1 for s in counts):
        raise ValueError(f"--steps: step counts must be positive, got {args.steps!r}")
    real = load_real_data(suite.data)
    print(
        f"[check] {suite.name}: {len(real.train)} training images, {len(real.classes)} classes, "
        f"{real.channels} channel(s), {real.image_size} px",
        flush=True,
    )
    results: list[tuple[int | None, dict]] = []
    for steps in counts:
        if steps is not None:
            suite.backbone.train = dataclasses.replace(suite.backbone.train, steps=steps)
        t0 = time.perf_counter()
        # The suite's own backbone only: a further one (`backbones:`) is its methods' and is checked by their runs.
        on_main = [m for m in suite.methods if suite.backbone_of(m) is suite.backbone]
        prepared = prepare(suite, real, args.out, methods=on_main, report_only=True)
        c = prepared.backbone_check
        label = f"steps {steps:,}" if steps is not None else "the suite's backbone"
        print(
            f"[check] {label}: agreement {c['agreement']:.1%} against the bar {c['min_agreement']:.0%}, "
            f"{'passed' if c['passed'] else 'FAILED'} (teacher test accuracy "
            f"{_percent(prepared.teacher_test_accuracy)}); prepare took {time.perf_counter() - t0:.0f} s "
            "(the rate of each class: the [prepare] line above)",
            flush=True,
        )
        results.append((steps if steps is not None else getattr(trained, "steps", None), c))
    passed = [(s, c) for s, c in results if c["passed"]]
    if passed:
        steps, c = passed[0]
        if steps is None:
            print(f"[check] passed: the suite's backbone makes its classes ({c['agreement']:.1%})", flush=True)
            return 0
        print(f"[check] passed at {steps:,} steps ({c['agreement']:.1%}); the suite line:", flush=True)
        print(f"backbone.train.steps: {steps}", flush=True)
        if args.write:
            print(f"[check] {write_steps(Path(suite.source), steps)}", flush=True)
        elif trained.steps != steps:
            print(
                f"[check] (under backbone: in {suite.source}: `train: {{steps: {steps}}}`, or add `steps: {steps}` "
                "to its train: section; --write does it)",
                flush=True,
            )
        return 0
    print(f"[check] FAILED: {next_step(results)}", flush=True)
    return 1


def _percent(x: float | None) -> str:
    return "unknown" if x is None else f"{x:.1%}"


def next_step(results: list[tuple[int | None, dict]]) -> str:
    """What to try after checks that all failed: the classes that lag in the last one, and the step count where the
    trend of the last two (agreement linear in log steps) reaches the bar, rounded up to a checkpoint."""
    steps, last = results[-1]
    lag = ", ".join(f"{n} {r:.0%}" for n, r in lagging_classes(last))
    said = f"the classes below {last['min_agreement']:.0%} are {lag}" if lag else "no class is below the bar alone"
    bar = last["min_agreement"]
    if steps is None:
        return f"{said}; train longer (backbone.train.steps) and check again"
    measured = [(s, c["agreement"]) for s, c in results if s is not None]
    if len(measured) < 2:
        return (
            f"{said}; one step count gives no trend: check two, e.g. "
            f"--steps {steps},{2 * steps} (each run extends the last)"
        )
    (s1, a1), (s2, a2) = measured[-2:]
    if a2 <= a1:
        return (
            f"{said}; the agreement did not rise from {s1:,} to {s2:,} steps ({a1:.1%} → {a2:.1%}), so more steps "
            "may not help: look at the lagging classes' images and the teacher's accuracy on them"
        )
    per_doubling = (a2 - a1) / math.log2(s2 / s1)
    target = s2 * 2 ** ((bar - a2) / per_doubling)
    suggested = math.ceil(target / CHECKPOINT_EVERY) * CHECKPOINT_EVERY
    trend = (
        f"the trend from {s1:,} to {s2:,} steps ({a1:.1%} → {a2:.1%}, {per_doubling * 100:+.1f} points per "
        f"doubling) reaches {bar:.0%} near {target:,.0f} steps"
    )
    if suggested > 8 * s2:
        return (
            f"{said}; {trend}, more than 8 × the last: the trend is too flat to follow far; look at the lagging classes"
        )
    return f"{said}; {trend}: try --steps {suggested} (it extends the {s2:,}-step run)"


def write_steps(path: Path, steps: int) -> str:
    """Put `steps: N` into the backbone section's `train:` of the suite file at `path`, keeping its comments and
    layout; the suite is loaded again to see that it says so. One line saying what was done."""
    text = path.read_text()
    new = _with_steps(text, steps)
    if new is None:
        raise ValueError(f"{path}: backbone: could not place `steps: {steps}`; write backbone.train.steps by hand")
    path.write_text(new)
    try:
        ok = load_suite(str(path)).backbone.train.steps == steps
    except SuiteError:
        ok = False
    if not ok:
        path.write_text(text)
        raise ValueError(f"{path}: backbone: writing `steps: {steps}` did not take; the file is as it was")
    return f"wrote backbone.train.steps: {steps} into {path}"


def _with_steps(text: str, steps: int) -> str | None:
    """`text` (a suite file) with backbone.train.steps set to `steps`: in a `train: {…}` flow mapping, in a `train:`
    block, or as a new `train: {steps: N}` line under `backbone:`; None where the layout is none of these."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"backbone:\s*(#.*)?$", line)), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() and not lines[i][0].isspace()), len(lines))
    body = [i for i in range(start + 1, end) if lines[i].strip() and not lines[i].lstrip().startswith("#")]
    if not body:
        return None
    indent = re.match(r"\s*", lines[body[0]]).group()
    train = next((i for i in body if re.match(rf"{indent}train:", lines[i])), None)
    if train is None:
        lines.insert(start + 1, f"{indent}train: {{steps: {steps}}}\n")
        return "".join(lines)
    line = lines[train]
    flow = re.match(rf"({indent}train:\s*)\{{(.*)\}}(\s*(#.*)?\n?)$", line)
    if flow:
        inner = flow.group(2)
        if re.search(r"\bsteps:\s*\d+", inner):
            inner = re.sub(r"\bsteps:\s*\d+", f"steps: {steps}", inner, count=1)
        else:
            inner = f"steps: {steps}, {inner.strip()}" if inner.strip() else f"steps: {steps}"
        lines[train] = f"{flow.group(1)}{{{inner}}}{flow.group(3)}"
        return "".join(lines)
    if not re.match(rf"{indent}train:\s*(#.*)?$", line):
        return None
    inner = []
    for i in range(train + 1, end):
        if not lines[i].strip() or lines[i].lstrip().startswith("#"):
            continue
        if len(re.match(r"\s*", lines[i]).group()) <= len(indent):
            break
        inner.append(i)
    child = re.match(r"\s*", lines[inner[0]]).group() if inner else indent + "  "
    for i in inner:
        if re.match(rf"{child}steps:", lines[i]):
            lines[i] = re.sub(r"steps:\s*\d+", f"steps: {steps}", lines[i], count=1)
            return "".join(lines)
    lines.insert(train + 1, f"{child}steps: {steps}\n")
    return "".join(lines)


if __name__ == "__main__":
    sys.exit(main())
