"""Generation throughput: the same diffusion shards made in a plain in-process loop, on 1 Ray actor and on
2 Ray actors. Prints images/s and the ratios, with the one-off cost of starting the actors (a Python process
each, importing torch/diffusers and loading the backbone) apart from steady-state generation.

    python perf/generation_throughput.py [--suite fashion-mnist] [--out runs] [--ipc 10]
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

from harness.config.loader import load_suite  # noqa: E402
from harness.models.data import load_real_data  # noqa: E402
from harness.stages.distill import ShardWorker, plan  # noqa: E402
from harness.stages.prepare import prepare  # noqa: E402


def run_on(workers, submit, collect, job, classes) -> float:
    t0 = time.perf_counter()
    pending = [submit(workers[i % len(workers)], job, label) for i, label in enumerate(range(classes))]
    collect(pending)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--suite", default="fashion-mnist")
    p.add_argument("--out", default="runs", type=Path, help="where the suite's prepared models are cached")
    p.add_argument("--ipc", type=int, default=10)
    args = p.parse_args()
    suite = load_suite(args.suite)
    real = load_real_data(suite.data)
    prepared = prepare(suite, real, args.out, check=False)
    classes, cores = len(real.classes), os.cpu_count()
    images = args.ipc * classes
    rows = []  # (name, startup seconds, generation seconds)
    with tempfile.TemporaryDirectory() as tmp:
        for threads in sorted({1, cores}):
            t0 = time.perf_counter()
            worker = ShardWorker(suite, prepared, "cpu", threads=threads, real=real)
            worker.warm("diffusion")
            startup = time.perf_counter() - t0
            job = plan(suite, prepared, Path(tmp) / f"local{threads}", ["diffusion"], [args.ipc])[0]
            seconds = run_on([worker], lambda w, j, c: w.run_shard(j, c), lambda _: None, job, classes)
            rows.append((f"in-process, {threads} thread(s)", startup, seconds))
        torch.set_num_threads(cores)
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        Actor = ray.remote(num_cpus=1)(ShardWorker)
        for n in (1, 2):
            t0 = time.perf_counter()
            actors = [Actor.remote(suite, prepared, "cpu", 1) for _ in range(n)]
            ray.get([a.warm.remote("diffusion") for a in actors])
            startup = time.perf_counter() - t0
            job = plan(suite, prepared, Path(tmp) / f"ray{n}", ["diffusion"], [args.ipc])[0]
            seconds = run_on(actors, lambda a, j, c: a.run_shard.remote(j, c), ray.get, job, classes)
            rows.append((f"Ray, {n} actor(s)", startup, seconds))
            for a in actors:
                ray.kill(a)
        ray.shutdown()
    base = images / rows[-3][2]  # in-process with all cores: the plain loop a user would write
    print(
        f"\n{images} images ({classes} classes × IPC {args.ipc}), {suite.method_config('diffusion').steps} DDIM "
        f"steps, guidance {suite.method_config('diffusion').cfg_scale}, {cores} cores, torch {torch.__version__}"
    )
    print(f"{'':26s} {'startup s':>9s} {'generate s':>10s} {'images/s':>9s} {'vs in-process':>14s}")
    for name, startup, seconds in rows:
        rate = images / seconds
        print(f"{name:26s} {startup:9.1f} {seconds:10.1f} {rate:9.2f} {rate / base:13.2f}x")
    print(f"(ratios against the in-process loop on {cores} threads; Ray actors use one thread each)")


if __name__ == "__main__":
    main()
