"""Deterministic DDIM (η = 0) over the Backbone protocol, with classifier-free guidance.

Written over `alphas_cumprod` rather than through a diffusers scheduler object so that methods can start
from any timestep (image-to-image), step one image set at a time and hook into each step (repulsion)
without the scheduler's internal state getting in the way.
"""
from __future__ import annotations

from typing import Callable

import torch


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
