"""The Backbone protocol: one interface over every diffusion generator a method may use.

A backbone maps images in [0, 1] to latents and back (identity for pixel-space models), predicts the noise
`eps(x_t, t, labels)` for integer class labels where `null_class` means "no condition", and carries the
noise schedule (`alphas_cumprod`, `num_train_timesteps`) and the rate at which its training dropped labels to
`null_class` (`class_dropout`). Methods only ever talk to this interface, so a
method written for DiT-XL/2 runs unchanged on the harness's own pixel DiT.

Importing the package imports every module in it, which registers its kinds of generator (registry.py): adding
a kind is adding its file (docs/extending.md), with no list here to keep in step.
"""

from __future__ import annotations

import importlib
import pkgutil

from harness.models.generators.dit import DiTBackbone, load_dit_backbone
from harness.models.generators.registry import generator_for, get_generator, list_generators, register_generator
from harness.models.generators.sampling import (
    SAMPLERS,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    respaced_timesteps,
    sample,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "DiTBackbone",
    "load_dit_backbone",
    "SAMPLERS",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "respaced_timesteps",
    "sample",
    "generator_for",
    "get_generator",
    "list_generators",
    "register_generator",
]
