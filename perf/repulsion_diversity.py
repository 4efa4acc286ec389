"""Repulsion on vs off at the same (β, γ): recall and coverage against precision, on the suite's teacher features.

    python3 perf/repulsion_diversity.py [--suite fashion-mnist] [--ipc 50] [--draws 3] [--tolerance 0.05]

For each draw (an independent set of seed images and noises for every class) the script distils the whole
suite twice with `adaptive-sampling-fixed`, once as configured (repulsion on) and once with `repulsion: false`,
same seeds, same noise, same (β, γ), and measures both sets with harness/stages/diversity.py (the leaderboard's
measures: precision, recall, density, coverage, FID). It prints each draw and the mean change, and whether
recall or coverage rose while precision fell by no more than `--tolerance` (absolute). `--bo` compares
`adaptive-sampling` with `adaptive-sampling-no-repulsion` instead: they pick the same (β*, γ*) per mini-batch.
Sets are written under OUT/repulsion-check/ and measured through the same cached path as a run's sets.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness.config.loader import load_suite  # noqa: E402
from harness.core.sets import save_images  # noqa: E402
from harness.models.data import load_real_data  # noqa: E402
from harness.stages.distill import shard_seed  # noqa: E402
from harness.stages.diversity import DiversityMeter  # noqa: E402
from harness.stages.prepare import prepare  # noqa: E402
from methods import get_method  # noqa: E402
from methods.base import ClassTask, MethodContext  # noqa: E402

MEASURES = ("precision", "recall", "density", "coverage", "fid")


def distil(method, real, conditions, ipc: int, draw: int, folder: Path) -> float:
    """The whole suite's set at `ipc` into `folder` (skipped if there); returns seconds spent."""
    if (folder / ".done").exists():
        return 0.0
    t0 = time.perf_counter()
    for label, key in enumerate(real.classes):
        seed = shard_seed(draw, "repulsion-check", ipc, key)  # the same for both arms of a draw
        task = ClassTask(
            label,
            key,
            ipc,
            seed,
            real.train.class_images(label),
            len(real.classes),
            real.image_size,
            real.channels,
            condition=conditions[label],
        )
        (folder / key).mkdir(parents=True, exist_ok=True)
        save_images(method.distill_class(task), folder / key)
    (folder / ".done").touch()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--suite", default="fashion-mnist")
    p.add_argument("--profile", default="leaderboard", help="the suite profile that lists adaptive sampling")
    p.add_argument("--out", default="runs", type=Path)
    p.add_argument("--ipc", type=int, default=50)
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--tolerance", type=float, default=0.05, help="largest allowed precision drop (absolute)")
    p.add_argument("--bo", action="store_true", help="compare the BO variants instead of the fixed (β, γ) one")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    suite = load_suite(args.suite, args.profile)
    real = load_real_data(suite.data)
    prepared = prepare(suite, real, args.out, check=False)
    context = prepared.provide(MethodContext(torch.device("cpu")), frozenset({"backbone", "teacher"}))
    teacher = context.teacher
    name = "adaptive-sampling" if args.bo else "adaptive-sampling-fixed"
    cls = get_method(name)
    on_cfg = suite.method_config(name)
    arms = {"on": on_cfg, "off": dataclasses.replace(on_cfg, repulsion=False)}
    where = (
        "(β*, γ*) by BO per mini-batch, the same for both arms"
        if args.bo
        else f"(β, γ) = ({on_cfg.cfg_scale}, {on_cfg.strength})"
    )
    print(
        f"{suite.name}: {name}, IPC {args.ipc}, {len(real.classes)} classes, {where}, repulsion λ = "
        f"{on_cfg.repulsion_weight}; {args.draws} draws; measures on {suite.diversity.extractor} features"
        + (f" (first {suite.diversity.feature_dim} principal components)" if suite.diversity.feature_dim else ""),
        flush=True,
    )
    meter = DiversityMeter(suite.diversity, real, lambda: teacher, prepared.teacher_hash, args.out / "cache")
    conditions = prepared.conditions
    base = args.out / "repulsion-check" / suite.name / name / f"ipc{args.ipc}"
    results = {"on": [], "off": []}
    for draw in range(args.draws):
        for arm, cfg in arms.items():
            method = cls(cfg, context)
            folder = base / f"draw{draw}-{arm}"
            seconds = distil(method, real, conditions, args.ipc, draw, folder)
            results[arm].append(meter.measure(folder))
            made = f"made in {seconds:.0f} s" if seconds else "from disk"
            print(
                f"  draw {draw} repulsion {arm:>3}: "
                + "  ".join(
                    f"{m} {results[arm][-1][m]:.3f}" if results[arm][-1][m] is not None else f"{m} –" for m in MEASURES
                )
                + f"  ({made})",
                flush=True,
            )

    def mean(arm, m):
        values = [r[m] for r in results[arm] if r[m] is not None]
        return sum(values) / len(values) if values else float("nan")

    print("\nmean over draws        off      on   on − off")
    for m in MEASURES:
        print(f"  {m:<12} {mean('off', m):9.3f} {mean('on', m):7.3f} {mean('on', m) - mean('off', m):+9.3f}")
    rises = {m: mean("on", m) - mean("off", m) for m in ("recall", "coverage")}
    drop = mean("off", "precision") - mean("on", "precision")
    ok = max(rises.values()) > 0 and drop <= args.tolerance
    print(
        f"\nrecall {rises['recall']:+.3f}, coverage {rises['coverage']:+.3f}; precision changes by {-drop:+.3f} "
        f"(tolerance −{args.tolerance}): {'holds' if ok else 'does NOT hold'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
