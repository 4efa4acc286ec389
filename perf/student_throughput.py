"""Student evaluation cost: seconds per student for each protocol at IPC 10 and 50, and what training S seeds
together saves over S runs alone — one after another in one process, and vectorised with torch.func.vmap.

The sets are random real training images (the cost does not depend on which images); epochs are the suite's
unless --epochs scales them down for a quick look (seconds per epoch are printed too). Runs in-process on the
device the machine has, single-threaded on CPU like a Ray trial.

    python perf/student_throughput.py [--suite fashion-mnist] [--students convnet3] [--seeds 3] [--epochs N]
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from harness.config.loader import load_suite  # noqa: E402
from harness.models.data import load_real_data  # noqa: E402
from harness.models.students import create_student  # noqa: E402
from harness.models.training import train_student  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--suite", default="fashion-mnist")
    p.add_argument("--students", default="convnet3")
    p.add_argument("--ipc", default="10,50")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, help="override the suite's epochs (all IPCs) for a quicker measurement")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    suite = load_suite(args.suite)
    real = load_real_data(suite.data)
    test = (real.test.load(torch.arange(len(real.test))), real.test.labels)
    # A trained teacher would cost the same per batch as this untrained one of the suite's architecture.
    teacher = create_student(
        suite.teacher.arch, len(real.classes), real.channels, real.image_size, width=suite.teacher.train.width
    ).eval()
    seeds = list(range(args.seeds))
    print(f"device {device}, {args.threads} thread(s), torch {torch.__version__}; S = {args.seeds} seeds")
    print(
        "student | protocol | IPC | epochs | s/student (1 seed) | s/epoch | S alone | S together (loop) | "
        "S together (vmap) | alone/loop | alone/vmap"
    )
    for student in args.students.split(","):
        for ipc in (int(i) for i in args.ipc.split(",")):
            g = torch.Generator().manual_seed(ipc)
            idx = torch.cat(
                [
                    real.train.indices_of(c)[torch.randperm(len(real.train.indices_of(c)), generator=g)[:ipc]]
                    for c in range(len(real.classes))
                ]
            )
            images, labels = real.train.load(idx), real.train.labels[idx]
            for name, protocol in suite.protocols.items():
                if args.epochs:
                    protocol = dataclasses.replace(protocol, epochs={}, epochs_beyond=args.epochs)
                epochs = protocol.epochs_for(ipc)

                def run(s, vectorise=None):
                    return train_student(
                        student,
                        images,
                        labels,
                        *test,
                        len(real.classes),
                        ipc,
                        protocol,
                        s,
                        device=device,
                        teacher=teacher,
                        vectorise=vectorise,
                    )

                one = timed(lambda: run(0))
                alone = one + sum(timed(lambda s=s: run(s)) for s in seeds[1:])
                loop = timed(lambda: run(seeds, vectorise=False))
                vmap = timed(lambda: run(seeds, vectorise=True))
                print(
                    f"{student} | {name} | {ipc} | {epochs} | {one:.1f} | {one / epochs:.3f} | {alone:.1f} | "
                    f"{loop:.1f} | {vmap:.1f} | {alone / loop:.2f}× | {alone / vmap:.2f}×",
                    flush=True,
                )


if __name__ == "__main__":
    main()
