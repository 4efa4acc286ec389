"""Augmentation of training batches, batched on the device: random-resized crop and flip as one affine grid per
batch, colour jitter, PCA lighting noise, RDED's patch shuffling, CutMix and MixUp, and the test-time resize and
centre crop. Each draws from the generator it is given, in a fixed order, so a seed's augmentation stream is the
same alone or beside other seeds."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# ITU-R 601 luma, the grey of torchvision's rgb_to_grayscale and of the reference's Grayscale (Minimax
# misc/utils.py l.231–237): contrast and saturation blend towards it.
LUMA = (0.299, 0.587, 0.114)
# The principal components of ImageNet's RGB pixels (AlexNet's lighting noise), from Minimax data.py l.319–325.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
JITTER_ORDERS = ("fixed", "random")


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def jitter_colours(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """Brightness, contrast and saturation by per-image `factors` [n, 3] (1 = unchanged), no clipping.

    `order` [n, 3] gives each image's sequence of the three (0 brightness, 1 contrast, 2 saturation); None is
    brightness → contrast → saturation. Contrast blends with the mean grey of the image, saturation with each
    pixel's grey (both luma for RGB, as torchvision and the reference do); saturation needs colour."""

    def brightness(v, f):
        return v * f

    def contrast(v, f):
        mean = _grey(v).mean(dim=(1, 2, 3), keepdim=True)
        return (v - mean) * f + mean

    def saturation(v, f):
        return (v - _grey(v)) * f + _grey(v) if v.shape[1] == 3 else v

    ops = (brightness, contrast, saturation)
    f = factors.to(x.device).view(-1, 3, 1, 1, 1)
    if order is None:
        for k, op in enumerate(ops):
            x = op(x, f[:, k])
        return x
    order, rows = order.to(x.device), torch.arange(len(x), device=x.device)
    for step in range(3):
        x = torch.stack([op(x, f[:, k]) for k, op in enumerate(ops)])[order[:, step], rows]
    return x


def pca_lighting(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """AlexNet's lighting noise: add Σ_j eigvec[:, j] · alpha_j · eigval_j to every RGB pixel (alpha [n, 3])."""
    eigval = torch.tensor(IMAGENET_EIGVAL, dtype=x.dtype, device=x.device)
    eigvec = torch.tensor(IMAGENET_EIGVEC, dtype=x.dtype, device=x.device)
    shift = (alpha.to(x.device, x.dtype) * eigval) @ eigvec.T
    return x + shift.view(-1, 3, 1, 1)


def augment(
    x: torch.Tensor,
    gen: torch.Generator,
    rrc_scale,
    flip: bool,
    color_jitter: float = 0.0,
    size: int | None = None,
    lighting: float = 0.0,
    jitter_order: str = "fixed",
    clip: bool = True,
) -> torch.Tensor:
    """Random-resized crop (resampled to `size` × `size`, None: the images' own size) + flip as one affine grid
    for the batch; then, per image, colour jitter (in `jitter_order`: "fixed" brightness → contrast →
    saturation, or "random", a fresh order per image) and PCA lighting noise of standard deviation `lighting`
    (RGB only), clipped to [0, 1] when `clip`."""
    n = x.shape[0]

    def uniform(lo, hi):
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    area = uniform(*rrc_scale)
    ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    cx, cy = uniform(-1, 1) * (1 - w), uniform(-1, 1) * (1 - h)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
    out_shape = list(x.shape) if size is None else [n, x.shape[1], size, size]
    grid = F.affine_grid(theta.to(x.device), out_shape, align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if color_jitter > 0:
        j = color_jitter
        # Drawn in this order (saturation only for colour images) so that the fixed order's stream is unchanged.
        factors = [uniform(1 - j, 1 + j), uniform(1 - j, 1 + j)]
        factors.append(uniform(1 - j, 1 + j) if x.shape[1] == 3 else torch.ones(n))
        order = torch.argsort(torch.rand(n, 3, generator=gen), dim=1) if jitter_order == "random" else None
        x = jitter_colours(x, torch.stack(factors, 1), order)
    if lighting > 0 and x.shape[1] == 3:
        x = pca_lighting(x, torch.randn(n, 3, generator=gen) * lighting)
    return x.clamp(0, 1) if clip and (color_jitter > 0 or lighting > 0) else x


def resize_center_crop(x: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """torchvision's Resize(resize) then CenterCrop(crop) on a batch: the shorter side to `resize` (bilinear,
    antialiased; the longer side in proportion, rounded down), then the centre `crop` × `crop`."""
    h, w = x.shape[-2:]
    if min(h, w) != resize:
        short, long = min(h, w), max(h, w)
        new = (resize, int(resize * long / short))
        h, w = new if h <= w else new[::-1]
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    if crop > min(h, w):
        raise ValueError(f"a centre crop of {crop} from {h}×{w} images: the resize must be at least the crop")
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return x[..., top : top + crop, left : left + crop]


def shuffle_patches(x: torch.Tensor, factor: int, gen: torch.Generator) -> torch.Tensor:
    """RDED's ShufflePatches: cut each image into `factor` vertical strips and shuffle them, then the same
    with horizontal strips (a permutation per image)."""
    if factor <= 1:
        return x
    n, _, h, w = x.shape
    for dim, size in ((3, w), (2, h)):
        edges = [i * (size // factor) for i in range(factor)] + [size]
        strips = [x.narrow(dim, a, b - a) for a, b in zip(edges[:-1], edges[1:])]
        order = torch.argsort(torch.rand(n, factor, generator=gen), dim=1)
        out = [torch.cat([strips[j][i : i + 1] for j in order[i].tolist()], dim) for i in range(n)]
        x = torch.cat(out, 0)
    return x


def cutmix(x: torch.Tensor, y: torch.Tensor | None, num_classes: int, gen: torch.Generator, beta: float):
    """CutMix (Yun et al. 2019): paste a box from a shuffled batch; soft targets by pasted area."""
    n, _, hgt, wid = x.shape
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen))).beta(beta, beta))
    perm = torch.randperm(n, generator=gen).to(x.device)
    cut = math.sqrt(1 - lam)
    ch, cw = int(hgt * cut), int(wid * cut)
    cy, cx = int(torch.randint(0, hgt, (1,), generator=gen)), int(torch.randint(0, wid, (1,), generator=gen))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, hgt)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, wid)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    if y is None:
        return x, None
    lam = 1 - (y1 - y0) * (x1 - x0) / (hgt * wid)
    onehot = F.one_hot(y, num_classes).float()
    return x, lam * onehot + (1 - lam) * onehot[perm]


def mixup(x: torch.Tensor, gen: torch.Generator, alpha: float) -> torch.Tensor:
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen))).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    return lam * x + (1 - lam) * x[perm]
