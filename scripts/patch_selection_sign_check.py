"""Which end of R(z|c) is "most typical"? Patch selection's Eq. 5 says the lowest R, its Algorithm 1 the highest.

    OMP_NUM_THREADS=1 python scripts/patch_selection_sign_check.py [--suite fashion-mnist] [--per-class 200]

Scores `--per-class` real training images of every class with the suite's backbone (R from `--draws` (t, ε)
pairs, t ∼ U(0.1, 0.7), the same pairs for c and ∅, whole images) and reports the suite teacher's accuracy and
mean true-class probability on the `--top` lowest-R and the `--top` highest-R images of each class, and the
Spearman correlation of R with the teacher's true-class cross-entropy. With `--patch-fraction` below 1 it scores
windows of that fraction of the side instead and compares, image by image, the lowest-R window with the
highest-R window of the same image (each cut out and resized to the image size for the teacher).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.config.loader import load_suite  # noqa: E402
from harness.models.data import load_real_data  # noqa: E402
from harness.models.generators.sampling import fit_to_backbone  # noqa: E402
from harness.models.generators.scoring import loss_gap_map, representativeness, window_means  # noqa: E402
from harness.stages.prepare import prepare  # noqa: E402


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def window_ends(backbone, images, latents, label, t, noise, fraction):
    """Each image's lowest-R and highest-R window, cut out and resized to the image: (B, C, H, W) twice, and their
    R (B, 2)."""
    window = max(1, round(fraction * backbone.latent_size))
    r = window_means(loss_gap_map(backbone, latents, label, t, noise, batch_size=256), window).flatten(1).double()
    size, scale = images.shape[-1], images.shape[-1] / backbone.latent_size
    side = min(size, round(window * scale))
    ends = []
    for pick in (r.argmin(1), r.argmax(1)):
        top = ((pick // (backbone.latent_size - window + 1)).double() * scale).round().long().clamp(max=size - side)
        left = ((pick % (backbone.latent_size - window + 1)).double() * scale).round().long().clamp(max=size - side)
        ends.append(
            torch.cat(
                [
                    F.interpolate(
                        images[i : i + 1, :, a : a + side, b : b + side],
                        size=(size, size),
                        mode="bilinear",
                        antialias=True,
                        align_corners=False,
                    )
                    for i, (a, b) in enumerate(zip(top.tolist(), left.tolist()))
                ]
            ).clamp(0, 1)
        )
    return ends[0], ends[1], torch.stack([r.min(1).values, r.max(1).values], 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="fashion-mnist")
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patch-fraction", type=float, default=1.0)
    args = p.parse_args()
    suite = load_suite(args.suite)
    real = load_real_data(suite.data)
    prepared = prepare(suite, real, Path(tempfile.mkdtemp()), check=False, methods=["patch-selection"])
    backbone, teacher = prepared.load_backbone(), prepared.load_teacher()
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    low, high, r_all, ce_all = [], [], [], []
    print(f"{'class':<14} {'acc low-R':>9} {'acc high-R':>10} {'p low-R':>8} {'p high-R':>9} {'mean R':>9}")
    for label, key in enumerate(real.classes):
        images = real.train.class_images(label)
        images = images[torch.randperm(len(images), generator=gen)[: args.per_class]].float() / 255
        latents = backbone.encode(fit_to_backbone(images, backbone))
        t = torch.rand((len(images), args.draws), generator=gen, dtype=torch.float64) * 0.6 + 0.1
        t = (t * backbone.num_train_timesteps).long()
        noise = torch.randn((len(images), args.draws, *backbone.latent_shape), generator=gen)
        if args.patch_fraction < 1:
            lo_img, hi_img, r = window_ends(
                backbone, images, latents, prepared.conditions[label], t, noise, args.patch_fraction
            )
            with torch.no_grad():
                p_lo, p_hi = teacher(lo_img).double().softmax(1), teacher(hi_img).double().softmax(1)
            low.append(((p_lo.argmax(1) == label).double().mean(), p_lo[:, label].mean()))
            high.append(((p_hi.argmax(1) == label).double().mean(), p_hi[:, label].mean()))
            r_all.append(torch.cat([r[:, 0], r[:, 1]]))
            ce_all.append(-torch.cat([p_lo[:, label], p_hi[:, label]]).clamp_min(1e-12).log())
        else:
            r = representativeness(backbone, latents, prepared.conditions[label], t, noise, batch_size=256).double()
            with torch.no_grad():
                prob = teacher(images).double().softmax(1)
            correct = (prob.argmax(1) == label).double()
            order = r.argsort()
            lo, hi = order[: args.top], order[-args.top :]
            low.append((correct[lo].mean(), prob[lo, label].mean()))
            high.append((correct[hi].mean(), prob[hi, label].mean()))
            r_all.append(r)
            ce_all.append(-prob[:, label].clamp_min(1e-12).log())
        print(
            f"{key[:14]:<14} {low[-1][0]:9.1%} {high[-1][0]:10.1%} {low[-1][1]:8.3f} {high[-1][1]:9.3f} "
            f"{r.mean():9.5f}",
            flush=True,
        )
    lo_acc, lo_p = (float(torch.stack(x).mean()) for x in zip(*low))
    hi_acc, hi_p = (float(torch.stack(x).mean()) for x in zip(*high))
    rho = sum(spearman(r, ce) for r, ce in zip(r_all, ce_all)) / len(r_all)
    print(f"{'all':<14} {lo_acc:9.1%} {hi_acc:10.1%} {lo_p:8.3f} {hi_p:9.3f}")
    print(
        f"mean per-class Spearman(R, teacher cross-entropy) = {rho:+.3f}; "
        f"{args.per_class} images per class, {args.draws} draws, top {args.top}; "
        f"{time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
