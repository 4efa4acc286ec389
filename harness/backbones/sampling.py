"""Deterministic DDIM (η = 0) over the Backbone protocol, with classifier-free guidance, and image-to-image.

Written over `alphas_cumprod` rather than through a diffusers scheduler object so that methods can start
from any timestep (image-to-image), step one image set at a time and hook into each step (repulsion)
without the scheduler's internal state getting in the way.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Descending timesteps, evenly spaced from 0 ("leading" spacing, as DiT's sampler uses)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"DDIM steps must be in [1, {num_train_timesteps}], got {steps}")
    stride = num_train_timesteps // steps
    return list(range(0, stride * steps, stride))[::-1]


@torch.no_grad()
def ddim_sample(backbone, x: torch.Tensor, labels: torch.Tensor, steps: int, cfg_scale: float,
                start_t: int | None = None,
                step_hook: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None) -> torch.Tensor:
    """Run the reverse process from latents `x` at `start_t` (default: pure noise at T) to t = 0.

    `step_hook(x, i, t)` may return a modified `x` after each step (used by repulsion-style methods).
    Returns latents; `backbone.decode` turns them into images.
    """
    ac = backbone.alphas_cumprod.to(x.device)
    ts = ddim_timesteps(backbone.num_train_timesteps, steps)
    if start_t is not None:
        ts = [t for t in ts if t <= start_t]
    labels = torch.as_tensor(labels, device=x.device).long().expand(x.shape[0])
    for i, t in enumerate(ts):
        a_t = ac[t]
        a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=x.device)
        eps = backbone.eps_cfg(x, torch.tensor(t, device=x.device), labels, cfg_scale)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if backbone.clip_sample:
            x0 = x0.clamp(-1, 1)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        if step_hook is not None:
            x = step_hook(x, i, t)
    return x


def img2img_timesteps(num_train_timesteps: int, steps: int, strength: float) -> list[int]:
    """The DDIM timesteps an image-to-image run of `strength` takes, descending.

    diffusers' img2img convention (`get_timesteps` of its img2img pipelines): of the `steps`-step schedule,
    the last int(steps · strength) timesteps run, so the start t0 is the schedule's timestep that `strength`
    selects (t0 ≈ γ·T rounded down to the schedule) rather than γ·T itself; strength 0 runs none."""
    if not 0 <= strength <= 1:
        raise ValueError(f"img2img strength must be in [0, 1], got {strength}")
    ts = ddim_timesteps(num_train_timesteps, steps)
    run = min(int(steps * strength), steps)
    return ts[steps - run:]


def img2img_start(backbone, latents: torch.Tensor, noise: torch.Tensor, strength: float,
                  steps: int) -> tuple[torch.Tensor, list[int]]:
    """The latents an image-to-image run starts from and the timesteps it then takes.

    The clean latents are noised to the first timestep t0 by the forward process (z_t0 = √ᾱ·z0 + √(1−ᾱ)·ε),
    as diffusers' `add_noise` does. At strength 1 the start is the noise alone: diffusers would keep a
    √ᾱ_t0-weighted trace of the image there (0.008 for a linear schedule at t = 980), but strength 1 is meant
    as plain sampling (the adaptive-sampling paper's fixed t0 = T), and this way it equals `ddim_sample` from
    the same noise exactly."""
    ts = img2img_timesteps(backbone.num_train_timesteps, steps, strength)
    if not ts:
        return latents, ts
    if strength >= 1:
        return noise.to(latents.device, latents.dtype), ts
    a = backbone.alphas_cumprod.to(latents.device)[ts[0]]
    return a.sqrt() * latents + (1 - a).sqrt() * noise.to(latents.device, latents.dtype), ts


@torch.no_grad()
def img2img(backbone, labels: torch.Tensor | int, noise: torch.Tensor, strength: float, cfg_scale: float,
            steps: int, images: torch.Tensor | None = None, latents: torch.Tensor | None = None,
            step_hook: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None) -> torch.Tensor:
    """Image-to-image (SDEdit): noise the inputs to the timestep `strength` selects, reverse with DDIM and
    classifier-free guidance `cfg_scale` (class condition `labels` against the backbone's null class), decode.

    Give either `images` in [0, 1] (encoded here) or `latents` (e.g. D4M's k-means centres). `noise` (same
    shape as the latents) is drawn by the caller on the CPU, so a run is deterministic on any device.
    Strength 0 runs no step and returns the input images unchanged (decoded `latents`); strength 1 is plain
    sampling from `noise`. `step_hook` is `ddim_sample`'s. Returns images in [0, 1]."""
    if (images is None) == (latents is None):
        raise ValueError("img2img takes either images or latents")
    if images is not None:
        if strength == 0:
            return images.clone()
        latents = backbone.encode(images)
    x, ts = img2img_start(backbone, latents, noise, strength, steps)
    if ts:
        x = ddim_sample(backbone, x, labels, steps, cfg_scale, start_t=ts[0], step_hook=step_hook)
    return backbone.decode(x)


def fit_to_backbone(images: torch.Tensor, backbone) -> torch.Tensor:
    """Images in [0, 1] → the backbone's channels and size (a grey suite on an RGB VAE, a 28 px suite on a
    32 px model), the inverse of what methods do to the backbone's outputs for the suite."""
    if images.shape[1] != backbone.image_channels:
        images = (images.expand(-1, backbone.image_channels, -1, -1) if images.shape[1] == 1
                  else images.mean(1, keepdim=True))
    if images.shape[-1] != backbone.image_size or images.shape[-2] != backbone.image_size:
        images = F.interpolate(images, size=(backbone.image_size, backbone.image_size), mode="bilinear",
                               antialias=True, align_corners=False).clamp(0, 1)
    return images
