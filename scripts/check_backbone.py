"""Prepare a suite's backbone and teacher and run the backbone check, and nothing else: what a new dataset's
suite should pass before any method runs.

    python scripts/check_backbone.py --suite docs/suites/fashion-proxy.yaml --out runs [--steps 2000,4000,6000]

`--steps` trains the pixel DiT to each step count in turn (each run extends the last one's checkpoint) and
checks each: the agreement against training steps, for choosing `backbone.train.steps` on a new dataset.
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.config.loader import load_suite  # noqa: E402
from harness.models.data import load_real_data  # noqa: E402
from harness.stages.prepare import prepare  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", required=True)
    p.add_argument("--out", default="runs", type=Path)
    p.add_argument("--steps", help="comma-separated step counts for the pixel DiT (default: the suite's)")
    args = p.parse_args()
    suite = load_suite(args.suite)
    real = load_real_data(suite.data)
    print(
        f"[check] {suite.name}: {len(real.train)} training images, {len(real.classes)} classes, "
        f"{real.channels} channel(s), {real.image_size} px",
        flush=True,
    )
    for steps in [int(s) for s in args.steps.split(",")] if args.steps else [suite.backbone.train.steps]:
        suite.backbone.train = dataclasses.replace(suite.backbone.train, steps=steps)
        t0 = time.perf_counter()
        c = prepare(suite, real, args.out, accept_failed_check=True).backbone_check  # reports, never stops
        print(
            f"[check] steps {steps}: agreement {c['agreement']:.1%} (per class "
            f"{', '.join(f'{a:.0%}' for a in c['per_class'])}), {'passed' if c['passed'] else 'FAILED'}; "
            f"prepare took {time.perf_counter() - t0:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
