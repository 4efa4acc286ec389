"""CLO throughput: CaO2's latent optimisation of one class's images in one batch vs one image at a time (the
reference's loop), on the suite's backbone. Prints images/s of each and the ratio, and checks that both give
the same latents.

    python perf/clo_throughput.py [--suite fashion-mnist] [--out runs] [--images 10] [--iterations 20]

An image/s figure counts an image once it has had all `--iterations` Adam steps (CaO2 runs 100; fewer keep a
CPU run short, and throughput per step does not depend on the count).
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from harness.config.loader import load_suite  # noqa: E402
from harness.models.data import load_real_data  # noqa: E402
from harness.stages.prepare import Prepared, backbone_conditions, prepare_backbone  # noqa: E402
from methods.cao2 import optimise_latents  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--suite", default="fashion-mnist")
    p.add_argument("--profile", default="leaderboard", help="the suite profile that lists cao2")
    p.add_argument("--out", default="runs", type=Path, help="where the suite's prepared models are cached")
    p.add_argument("--images", type=int, default=10, help="images of one class (the IPC)")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (a CPU distill actor has one)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    suite = load_suite(args.suite, args.profile)
    cfg = suite.method_config("cao2")
    real = load_real_data(suite.data)
    source, h = prepare_backbone(suite, real, args.out)
    # Only the backbone is prepared: the teacher fields stay empty (CLO alone never reads the teacher).
    prepared = Prepared(
        list(real.classes),
        suite.backbone,
        source,
        h,
        backbone_conditions(suite, real.classes),
        suite.teacher,
        "",
        "",
        None,
        None,
    )
    bb = prepared.load_backbone(args.device)

    g = torch.Generator().manual_seed(0)
    n, shape = args.images, bb.latent_shape
    latents = torch.randn((n, *shape), generator=g).to(args.device)
    noise = torch.randn((n, *shape), generator=g).to(args.device)
    t_max = max(1, round(bb.num_train_timesteps * cfg.t_max_fraction))
    ts = torch.randint(1, t_max + 1, (args.iterations, n), generator=g)
    label = torch.tensor(bb.null_class)

    def timed(fn):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    optimise_latents(bb, latents[:1], label, noise[:1], ts[:2, :1], cfg.lr, cfg.linf_weight)  # warm-up
    batched, t_batched = timed(lambda: optimise_latents(bb, latents, label, noise, ts, cfg.lr, cfg.linf_weight))
    single, t_single = timed(
        lambda: torch.cat(
            [
                optimise_latents(
                    bb, latents[i : i + 1], label, noise[i : i + 1], ts[:, i : i + 1], cfg.lr, cfg.linf_weight
                )
                for i in range(n)
            ]
        )
    )
    diff = (batched - single).abs().max().item()

    where = f"{args.device}" + (f", {args.threads} thread(s) of {os.cpu_count()} cores" if args.device == "cpu" else "")
    print(
        f"\nCLO on suite {suite.name}: {n} images × {args.iterations} Adam steps, latents {tuple(shape)}, "
        f"{where}, torch {torch.__version__}"
    )
    print(f"{'one image at a time':>22}: {n / t_single:8.2f} images/s  ({t_single:.1f} s)")
    print(f"{'one batch of ' + str(n):>22}: {n / t_batched:8.2f} images/s  ({t_batched:.1f} s)")
    print(f"{'batched / one at a time':>22}: {t_single / t_batched:8.2f}×   (largest latent difference {diff:.1e})")


if __name__ == "__main__":
    main()
