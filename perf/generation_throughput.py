"""Generation throughput: the same diffusion shards made in a plain in-process loop, on 1 Ray actor and on
2 Ray actors. Prints images/s and the ratios. Needs the suite's backbone (prepared by a run, or committed).

    python perf/generation_throughput.py [--suite fashion-mnist] [--classes 10] [--ipc 6]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray  # noqa: E402
import torch  # noqa: E402

from harness.data import load_real_data  # noqa: E402
from harness.distill import ShardWorker, distill, plan  # noqa: E402
from harness.prepare import prepare  # noqa: E402
from harness.suite import load_suite  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--suite", default="fashion-mnist")
    p.add_argument("--out", default="runs", type=Path, help="where the suite's prepared models are cached")
    p.add_argument("--ipc", type=int, default=6)
    args = p.parse_args()
    suite = load_suite(args.suite)
    real = load_real_data(suite.data)
    prepared = prepare(suite, real, args.out, check=False)
    images = args.ipc * len(real.classes)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = plan(suite, prepared, Path(tmp) / "inproc", ["diffusion"], [args.ipc])
        t0 = time.perf_counter()
        worker = ShardWorker(suite, prepared, "cpu", threads=os.cpu_count(), real=real)
        for label in range(len(real.classes)):
            worker.run_shard(jobs[0], label)
        results["in-process loop"] = time.perf_counter() - t0
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        for actors in (1, 2):
            jobs = plan(suite, prepared, Path(tmp) / f"ray{actors}", ["diffusion"], [args.ipc])
            t0 = time.perf_counter()
            distill(suite, real, prepared, jobs, lambda: None, max_actors=actors)
            results[f"Ray, {actors} actor(s)"] = time.perf_counter() - t0
        ray.shutdown()
    base = images / results["in-process loop"]
    print(f"\n{images} images ({len(real.classes)} classes × IPC {args.ipc}), "
          f"{suite.method_config('diffusion').steps} DDIM steps, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"{'':20s} {'seconds':>8s} {'images/s':>9s} {'vs in-process':>14s}")
    for name, seconds in results.items():
        rate = images / seconds
        print(f"{name:20s} {seconds:8.1f} {rate:9.2f} {rate / base:13.2f}x")
    print("(Ray times include starting the actors and loading the backbone in each.)")


if __name__ == "__main__":
    main()
