"""Reading a backbone rather than sampling from it, over the Backbone protocol: how much a class condition lowers
the denoising loss of real latents (the zero-shot diffusion classifier of Li et al. 2023, which patch selection
calls R(z|c)), and DIFT-style intermediate features (Tang et al. 2023). Both batch images, windows and noise
draws into as few transformer calls as `batch_size` allows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def noised(backbone, latents: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The forward process x_t = √ᾱ_t·z + √(1−ᾱ_t)·ε: latents (B, C, H, W), timesteps (B,), noise (B, C, H, W)."""
    a = backbone.alphas_cumprod.to(latents.device)[timesteps].view(-1, 1, 1, 1)
    return a.sqrt() * latents + (1 - a).sqrt() * noise


@torch.no_grad()
def loss_gap_map(
    backbone,
    latents: torch.Tensor,
    labels: torch.Tensor | int,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    batch_size: int = 64,
) -> torch.Tensor:
    """E over the draws of L_t(z, ε, c) − L_t(z, ε, ∅) per latent position: (B, H, W).

    latents (B, C, H, W); labels (B,) or one class (c; ∅ is `backbone.null_class`); timesteps (B, N) integer
    training timesteps; noise (B, N, C, H, W). Draw n of image b is used for both conditions. L_t is the squared
    error of the predicted noise, averaged over channels at each position, so that a window's loss is the mean
    of the map over it. `batch_size` bounds the transformer's batch (each draw costs two rows)."""
    b, n = timesteps.shape
    device = latents.device
    labels = torch.as_tensor(labels, device=device).long().expand(b)
    flat_t = timesteps.reshape(-1).to(device)
    flat_noise = noise.reshape(b * n, *noise.shape[2:]).to(device)
    owner = torch.arange(b, device=device).repeat_interleave(n)
    gap = torch.zeros((b, *latents.shape[-2:]), device=device)
    step = max(1, batch_size // 2)
    for a in range(0, b * n, step):
        rows = slice(a, min(b * n, a + step))
        who, t, eps = owner[rows], flat_t[rows], flat_noise[rows]
        x_t = noised(backbone, latents[who], t, eps)
        null = torch.full_like(labels[who], backbone.null_class)
        pred = backbone.eps(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels[who], null]))
        err = (pred - torch.cat([eps, eps])).pow(2).mean(1)
        k = len(who)
        gap.index_add_(0, who, err[:k] - err[k:])
    return gap / n


def window_means(maps: torch.Tensor, window: int | None) -> torch.Tensor:
    """Each (H, W) map averaged over every `window` × `window` square at stride 1: (B, H−w+1, W−w+1); None: over
    the whole map, (B,)."""
    if window is None:
        return maps.mean((-2, -1))
    return F.avg_pool2d(maps[:, None], window, stride=1)[:, 0]


def representativeness(
    backbone,
    latents: torch.Tensor,
    labels: torch.Tensor | int,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    window: int | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """R(z|c) = E_{t,ε}[L_t(z, ε, c) − L_t(z, ε, ∅)] of each latent (window None: (B,)) or of each of its
    `window`-sized square windows ((B, H−w+1, W−w+1)), from the draws `timesteps` (B, N) and `noise`
    (B, N, C, H, W). Negative where the condition helps the denoiser."""
    return window_means(loss_gap_map(backbone, latents, labels, timesteps, noise, batch_size), window)


@torch.no_grad()
def dift_features(
    backbone,
    latents: torch.Tensor,
    labels: torch.Tensor | int,
    timestep: int,
    noise: torch.Tensor,
    block: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """DIFT-style descriptors (B, width): each latent noised to `timestep` with each of its noise draws
    (B, E, C, H, W), the activations after transformer block `block` under its class `labels`, averaged over the
    E draws (DIFT's ensemble) and over the tokens."""
    b, e = noise.shape[:2]
    device = latents.device
    labels = torch.as_tensor(labels, device=device).long().expand(b)
    owner = torch.arange(b, device=device).repeat_interleave(e)
    flat_noise = noise.reshape(b * e, *noise.shape[2:]).to(device)
    out = None
    for a in range(0, b * e, batch_size):
        rows = slice(a, min(b * e, a + batch_size))
        who = owner[rows]
        t = torch.full((len(who),), timestep, device=device, dtype=torch.long)
        feats = backbone.block_features(
            noised(backbone, latents[who], t, flat_noise[rows]), t, labels[who], block
        ).mean(1)
        out = torch.zeros((b, feats.shape[1]), device=device) if out is None else out
        out.index_add_(0, who, feats)
    return out / e
