"""Deterministic DDIM (η = 0) over the Backbone protocol, with classifier-free guidance, and image-to-image;
and DiT's own sampler, respaced DDPM with the model's learned variance.

Written over the backbone's schedule rather than through a diffusers scheduler object so that methods can start
from any timestep (image-to-image), step one image set at a time and hook into each step (repulsion)
without the scheduler's internal state getting in the way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Descending timesteps, evenly spaced from 0 ("leading" spacing, as DiT's sampler uses)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"DDIM steps must be in [1, {num_train_timesteps}], got {steps}")
    stride = num_train_timesteps // steps
    return list(range(0, stride * steps, stride))[::-1]


@torch.no_grad()
def ddim_sample(
    backbone,
    x: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    cfg_scale: float,
    start_t: int | None = None,
    step_hook: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run the reverse process from latents `x` at `start_t` (default: pure noise at T) to t = 0.

    `step_hook(x, i, t)` may return a modified `x` after each step (used by repulsion-style methods).
    Returns latents; `backbone.decode` turns them into images.
    """
    ts = ddim_timesteps(backbone.num_train_timesteps, steps)
    if start_t is not None:
        ts = [t for t in ts if t <= start_t]
    labels = torch.as_tensor(labels, device=x.device).long().expand(x.shape[0])
    for i, t in enumerate(ts):
        x = ddim_step(backbone, x, t, ts[i + 1] if i + 1 < len(ts) else None, labels, cfg_scale)
        if step_hook is not None:
            x = step_hook(x, i, t)
    return x


# A guidance function of a sampler step: given the step's input x (requiring grad) and the clean sample x̂_0 the
# step predicts from it (still in x's graph), the gradient w.r.t. x of the objective the samples should climb.
CondFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_step(
    backbone,
    x: torch.Tensor,
    t: int,
    t_prev: int | None,
    labels: torch.Tensor,
    cfg_scale: float,
    cond_fn: CondFn | None = None,
) -> torch.Tensor:
    """One deterministic DDIM step (η = 0) from timestep `t` to `t_prev` (None: to the clean end).

    `cond_fn`: classifier guidance in the score form DDIM takes it (Dhariwal & Nichol 2021, Alg. 2; DiT's
    `condition_score`): ε ← ε − √(1 − ᾱ_t)·∇_x G, G differentiated through the denoiser's x̂_0."""
    ac = backbone.alphas_cumprod.to(x.device)
    a_t = ac[t]
    a_prev = ac[t_prev] if t_prev is not None else torch.ones((), device=x.device)
    with torch.enable_grad() if cond_fn is not None else contextlib.nullcontext():
        if cond_fn is not None:
            x = x.detach().requires_grad_(True)
        eps = backbone.eps_cfg(x, torch.tensor(t, device=x.device), labels, cfg_scale)
        if cond_fn is not None:
            gradient = cond_fn(x, (x - (1 - a_t).sqrt() * eps) / a_t.sqrt())
            x, eps = x.detach(), eps.detach() - (1 - a_t).sqrt() * gradient
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    if backbone.clip_sample:
        x0 = x0.clamp(-1, 1)
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def img2img_timesteps(num_train_timesteps: int, steps: int, strength: float) -> list[int]:
    """The DDIM timesteps an image-to-image run of `strength` takes, descending.

    diffusers' img2img convention (`get_timesteps` of its img2img pipelines): of the `steps`-step schedule,
    the last int(steps · strength) timesteps run, so the start t0 is the schedule's timestep that `strength`
    selects (t0 ≈ γ·T rounded down to the schedule) rather than γ·T itself; strength 0 runs none."""
    if not 0 <= strength <= 1:
        raise ValueError(f"img2img strength must be in [0, 1], got {strength}")
    ts = ddim_timesteps(num_train_timesteps, steps)
    run = min(int(steps * strength), steps)
    return ts[steps - run :]


def img2img_start(
    backbone, latents: torch.Tensor, noise: torch.Tensor, strength: float, steps: int
) -> tuple[torch.Tensor, list[int]]:
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
def img2img(
    backbone,
    labels: torch.Tensor | int,
    noise: torch.Tensor,
    strength: float,
    cfg_scale: float,
    steps: int,
    images: torch.Tensor | None = None,
    latents: torch.Tensor | None = None,
    step_hook: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
) -> torch.Tensor:
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
        images = (
            images.expand(-1, backbone.image_channels, -1, -1) if images.shape[1] == 1 else images.mean(1, keepdim=True)
        )
    if images.shape[-1] != backbone.image_size or images.shape[-2] != backbone.image_size:
        images = F.interpolate(
            images,
            size=(backbone.image_size, backbone.image_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        ).clamp(0, 1)
    return images


def respaced_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """The training timesteps a `steps`-step respaced DDPM keeps, ascending: DiT's
    `space_timesteps(T, str(steps))` with its one section (facebookresearch/DiT diffusion/respace.py l.41-62),
    `steps` points spread evenly over [0, T − 1], both ends included, each rounded half to even."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"DDPM steps must be in [1, {num_train_timesteps}], got {steps}")
    stride = 1 if steps == 1 else (num_train_timesteps - 1) / (steps - 1)
    kept, position = [], 0.0
    for _ in range(steps):  # accumulated, as the reference does, so that ties round the same way
        kept.append(round(position))
        position += stride
    return kept


@dataclass(frozen=True)
class RespacedSchedule:
    """A respaced diffusion (DiT's `SpacedDiffusion`, respace.py l.73-87): the kept timesteps and the betas
    that take the kept ᾱ from one to the next, with the posterior q(x_{i−1} | x_i, x_0) of that chain
    (gaussian_diffusion.py l.174-201), all float64."""

    timesteps: list[int]  # training timesteps, ascending; the model is told these
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor


def respaced_schedule(train_betas: torch.Tensor, steps: int) -> RespacedSchedule:
    timesteps = respaced_timesteps(len(train_betas), steps)
    train_ac = torch.cumprod(1 - train_betas.double().cpu(), 0)
    ac = train_ac[timesteps]
    ac_prev = torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
    betas = 1 - ac / ac_prev
    posterior_variance = betas * (1 - ac_prev) / (1 - ac)
    # The posterior variance is 0 at the chain's first step: its log is clipped to the next step's (a one-step
    # chain has no step that adds noise, so none).
    clipped = (
        torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
        if steps > 1
        else torch.empty(0, dtype=betas.dtype)
    )
    return RespacedSchedule(
        timesteps,
        betas,
        ac,
        posterior_variance,
        clipped,
        betas * ac_prev.sqrt() / (1 - ac),
        (1 - ac_prev) * (1 - betas).sqrt() / (1 - ac),
    )


def ddpm_posterior(
    backbone,
    schedule: RespacedSchedule,
    x: torch.Tensor,
    i: int,
    labels: torch.Tensor,
    cfg_scale: float,
    small_variance: bool = False,
    cond_fn: CondFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The parts of one ancestral step from position `i` of `schedule` (the model told timestep
    `schedule.timesteps[i]`) to i − 1, as DiT's `p_mean_variance` forms them (gaussian_diffusion.py l.254-332):
    the posterior mean, x̂_0 from the guided noise, and the log variance — which a model with learned variance
    (LEARNED_RANGE) interpolates in log space between the posterior's β̃ (its output −1) and β (+1), and that is
    β otherwise (FIXED_LARGE, DiT's `learn_sigma=False`), or with `small_variance` the posterior's β̃ (FIXED_SMALL,
    DDPM's other choice); None at i = 0, where no noise is added. A method that adds a term to the step (MGD3's mode
    guidance) reads them here.

    `cond_fn`: classifier guidance as DiT's `p_sample` takes its `cond_fn` (`condition_mean`): the
    mean moved by the step's variance times ∇_x G, G differentiated through the denoiser's x̂_0."""

    def at(values: torch.Tensor) -> torch.Tensor:  # float64 terms cast once, as DiT's `_extract_into_tensor`
        return values[i].to(x.device, torch.float32)

    c = backbone.latent_channels
    ac = schedule.alphas_cumprod
    gradient = None
    with torch.enable_grad() if cond_fn is not None else contextlib.nullcontext():
        if cond_fn is not None:
            x = x.detach().requires_grad_(True)
        out = backbone.guided_output(x, torch.tensor(schedule.timesteps[i], device=x.device), labels, cfg_scale)
        if cond_fn is not None:
            gradient = cond_fn(x, at((1 / ac).sqrt()) * x - at((1 / ac - 1).sqrt()) * out[:, :c])
            x, out = x.detach(), out.detach()
    eps = out[:, :c]
    x0 = at((1 / ac).sqrt()) * x - at((1 / ac - 1).sqrt()) * eps
    if backbone.clip_sample:
        x0 = x0.clamp(-1, 1)
    mean = at(schedule.posterior_mean_coef1) * x0 + at(schedule.posterior_mean_coef2) * x
    if i == 0 and gradient is None:
        return mean, x0, None
    if len(schedule.timesteps) == 1:  # a one-step chain: its one β (no posterior to clip to)
        log_variance = at(schedule.betas.log()).expand_as(x)
    elif backbone.learned_variance:
        frac = (out[:, c : 2 * c] + 1) / 2
        log_variance = frac * at(schedule.betas.log()) + (1 - frac) * at(schedule.posterior_log_variance_clipped)
    elif small_variance:  # FIXED_SMALL: β̃, its log clipped at i = 1 as DiT's posterior_log_variance_clipped
        log_variance = at(schedule.posterior_log_variance_clipped).expand_as(x)
    elif i == 0:  # FIXED_LARGE's first variance is the posterior's next: `np.append(posterior_variance[1], betas[1:])`
        log_variance = schedule.posterior_variance[1].log().to(x.device, torch.float32).expand_as(x)
    else:  # FIXED_LARGE is β from the second step on
        log_variance = at(schedule.betas.log()).expand_as(x)
    if gradient is not None:
        # DiT's `condition_mean` moves the mean by the step's variance (`p_mean_var["variance"]`) times ∇G.
        mean = mean + log_variance.exp() * gradient
    return mean, x0, None if i == 0 else log_variance


def ddpm_step(
    backbone,
    schedule: RespacedSchedule,
    x: torch.Tensor,
    i: int,
    labels: torch.Tensor,
    cfg_scale: float,
    noise: torch.Tensor | None,
    cond_fn: CondFn | None = None,
) -> torch.Tensor:
    """One ancestral step from position `i` of `schedule` to i − 1, as DiT's `p_sample` takes it
    (gaussian_diffusion.py l.376-417): the posterior mean (moved by `cond_fn`'s guidance where given) plus the
    step's noise at `ddpm_posterior`'s variance. `noise` is x's shape; at i = 0 no noise is added (and None is
    allowed)."""
    mean, _, log_variance = ddpm_posterior(backbone, schedule, x, i, labels, cfg_scale, cond_fn=cond_fn)
    if log_variance is None:
        return mean
    return mean + (0.5 * log_variance).exp() * noise.to(x.device, x.dtype)


@torch.no_grad()
def ddpm_sample(
    backbone,
    x: torch.Tensor,
    labels: torch.Tensor | int,
    steps: int,
    cfg_scale: float,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """DiT's default sampler (sample.py: `create_diffusion(str(steps))`, `p_sample_loop`, `clip_denoised=False`):
    ancestral DDPM over `steps` respaced timesteps from the noise `x` at T, with classifier-free guidance
    `cfg_scale`. Each step's noise is drawn on the CPU from `generators`, one per image, so an image's samples do
    not depend on the batch it is drawn in, nor on the device. Returns latents."""
    if len(generators) != x.shape[0]:
        raise ValueError(f"ddpm_sample takes one generator per image: {len(generators)} for {x.shape[0]}")
    schedule = respaced_schedule(backbone.betas, steps)
    labels = torch.as_tensor(labels, device=x.device).long().expand(x.shape[0])
    for i in reversed(range(steps)):
        noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]) if i > 0 else None
        x = ddpm_step(backbone, schedule, x, i, labels, cfg_scale, noise)
    return x


SAMPLERS = ("ddim", "ddpm")


def sample(
    backbone,
    x: torch.Tensor,
    labels: torch.Tensor | int,
    steps: int,
    cfg_scale: float,
    sampler: str = "ddim",
    seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """The reverse process a method's `sampler` setting names: deterministic DDIM, or DiT's DDPM with each image's
    step noise drawn from its own seed in `seeds`. Returns latents."""
    if sampler == "ddim":
        return ddim_sample(backbone, x, labels, steps, cfg_scale)
    if sampler == "ddpm":
        if seeds is None or len(seeds) != x.shape[0]:
            raise ValueError("the ddpm sampler takes one seed per image")
        return ddpm_sample(
            backbone, x, labels, steps, cfg_scale, [torch.Generator().manual_seed(int(s)) for s in seeds]
        )
    raise ValueError(f"sampler: must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
