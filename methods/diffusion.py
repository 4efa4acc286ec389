"""diffusion: plain class-conditional sampling with classifier-free guidance — the papers' "DiT" baseline.

Defaults are the baseline's as the Minimax / IMS3 tables ran it: DDIM, 50 steps, guidance 4.0.

Defaults (pinned by tests/test_contract.py):
    cfg_scale = 4.0       the DiT rows of the Minimax and IMS3 tables
    steps = 50            the same rows (DDIM)
    batch_size = 50       memory only: images sampled at once
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.backbones.sampling import ddim_sample

from .base import ClassTask, Method, Work, guided
from .registry import register_method


@dataclass(frozen=True)
class DiffusionConfig:
    cfg_scale: float = 4.0
    steps: int = 50
    batch_size: int = 50


def fit_to_task(images: torch.Tensor, task: ClassTask) -> torch.Tensor:
    """Backbone output → the suite's channels and size."""
    if images.shape[1] != task.channels:
        images = images.mean(1, keepdim=True) if task.channels == 1 else images.expand(-1, task.channels, -1, -1)
    if images.shape[-1] != task.image_size:
        images = F.interpolate(images, size=(task.image_size, task.image_size), mode="bilinear",
                               antialias=True, align_corners=False).clamp(0, 1)
    return images


@register_method
class Diffusion(Method):
    name = "diffusion"
    Config = DiffusionConfig
    needs = frozenset({"backbone"})

    @classmethod
    def work(cls, config, ipc, real_per_class):
        return Work(backbone=ipc * config.steps * guided(config.cfg_scale), vae=ipc)

    @torch.no_grad()
    def distill_class(self, task: ClassTask) -> torch.Tensor:
        bb, cfg = self.backbone, self.config
        # The noise bank is drawn on the CPU so the same seed gives the same images on any device.
        noise = torch.randn((task.ipc, *bb.latent_shape), generator=task.generator())
        out = []
        for i in range(0, task.ipc, cfg.batch_size):
            z = ddim_sample(bb, noise[i:i + cfg.batch_size].to(self.device), task.condition, cfg.steps, cfg.cfg_scale)
            out.append(bb.decode(z).cpu())
        return fit_to_task(torch.cat(out), task)
