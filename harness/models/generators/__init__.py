"""The Backbone protocol: one interface over every diffusion generator a method may use.

A backbone maps images in [0, 1] to latents and back (identity for pixel-space models), predicts the noise
`eps(x_t, t, labels)` for integer class labels where `null_class` means "no condition", and carries the
noise schedule (`alphas_cumprod`, `num_train_timesteps`). Methods only ever talk to this interface, so a
method written for DiT-XL/2 runs unchanged on the harness's own pixel DiT.
"""
from __future__ import annotations

from harness.models.generators.dit import DiTBackbone, load_dit_backbone
from harness.models.generators.sampling import SAMPLERS, ddim_sample, ddim_timesteps, ddpm_sample, respaced_timesteps, sample

__all__ = ["DiTBackbone", "load_dit_backbone", "SAMPLERS", "ddim_sample", "ddim_timesteps", "ddpm_sample",
           "respaced_timesteps", "sample"]
