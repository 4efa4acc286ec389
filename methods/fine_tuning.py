"""What the fine-tuning methods (minimax, ims3) share: their schedule's settings (`FineTuneSettings`), DiT's
training loss on the Backbone protocol, and the DDIM inversion that IMS3 differentiates through. A helper module:
it registers no method."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from harness.core.identity import NEVER
from harness.models.generators.sampling import ddim_timesteps, respaced_schedule

from .base import FineTuning


@dataclass(frozen=True)
class FineTuneSettings:
    """The schedule every fine-tuning method shares (`FineTuning`), at the Minimax reference's values."""

    fine_tune: bool = True
    epochs: int = 8
    fine_tune_batch_size: int = 8
    lr: float = 1e-3
    ema_decay: float = 0.9999
    class_dropout: float = 0.1
    checkpoint_every: int = field(default=500, metadata=NEVER)  # how often it saves, not what it trains
    max_steps: int | None = None  # None: every epoch; a cap for budgets smaller than an epoch
    fine_tune_seed: int = 0

    def fine_tuning(self, objective: dict) -> FineTuning | None:
        if not self.fine_tune:
            return None
        return FineTuning(
            self.epochs,
            self.fine_tune_batch_size,
            self.lr,
            self.ema_decay,
            self.class_dropout,
            self.checkpoint_every,
            tuple(sorted(objective.items())),
            self.max_steps,
            self.fine_tune_seed,
        )

    def check(self) -> None:
        for name in ("epochs", "fine_tune_batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps: must be at least 1 or null, got {self.max_steps}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay: must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.class_dropout < 1:
            raise ValueError(f"class_dropout: must be in [0, 1), got {self.class_dropout}")


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """−log p(x) of data in [−1, 1] quantised to 256 levels (DiT diffusion_utils.py
    `discretized_gaussian_log_likelihood`), per element."""
    centered, inv_stdv = x - mean, torch.exp(-log_scale)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))
    return -log_probs


def diffusion_loss(
    backbone, x0: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DiT's `training_losses` (MinimaxDiffusion diffusion/gaussian_diffusion.py l.715-790) per image: the noise
    MSE and, for a model that learns its variance (DiT-XL/2), the variational-bound term on the variance
    channels with the noise prediction detached (LEARNED_RANGE, RESCALED_MSE off: DiT's `create_diffusion`
    default). Returns (loss per image, the predicted noise, x_t)."""
    ac = backbone.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)
    x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
    out = backbone.output(x_t, t, labels)
    c = backbone.latent_channels
    eps = out[:, :c]
    loss = (noise - eps).pow(2).flatten(1).mean(1)
    if backbone.learned_variance:
        s = respaced_schedule(backbone.betas, backbone.num_train_timesteps)  # every timestep: the plain chain

        def at(values: torch.Tensor) -> torch.Tensor:
            return values.to(x0.device, torch.float32)[t].view(-1, 1, 1, 1)

        true_mean = at(s.posterior_mean_coef1) * x0 + at(s.posterior_mean_coef2) * x_t
        true_log_var = at(s.posterior_log_variance_clipped)
        x0_pred = (x_t - (1 - ac).sqrt() * eps.detach()) / ac.sqrt()
        model_mean = at(s.posterior_mean_coef1) * x0_pred + at(s.posterior_mean_coef2) * x_t
        frac = (out[:, c : 2 * c] + 1) / 2
        model_log_var = frac * at(s.betas.log()) + (1 - frac) * true_log_var
        kl = 0.5 * (
            -1.0
            + model_log_var
            - true_log_var
            + torch.exp(true_log_var - model_log_var)
            + (true_mean - model_mean).pow(2) * torch.exp(-model_log_var)
        )
        kl = kl.flatten(1).mean(1) / math.log(2.0)
        nll = _discretized_gaussian_nll(x0, model_mean, 0.5 * model_log_var).flatten(1).mean(1) / math.log(2.0)
        loss = loss + torch.where(t == 0, nll, kl)
    return loss, eps, x_t


def predicted_x0(backbone, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    ac = backbone.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1)
    return (x_t - (1 - ac).sqrt() * eps) / ac.sqrt()


def ddim_inversion(backbone, x0: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, grid_steps: int) -> torch.Tensor:
    """Deterministic DDIM inversion of the clean latents `x0` to each image's timestep `t` (IMS3 Eq. 3), with
    gradients through every model call. The path of an image runs through the timesteps of a `grid_steps`-step
    DDIM schedule below its t, then to t itself; each step predicts the noise at the point it leaves (the clean
    latent counts as ᾱ = 1, told timestep 0) and moves the predicted x̂_0 to the next point's ᾱ.

    Each model call is checkpointed: the graph keeps only the latent it was given and runs the call again in
    backward, so a longer path costs a latent per step, not a call's activations (50 kept calls of DiT-XL/2 at
    batch 8 would hold ~250 GB). The recomputation repeats the same operations on the same inputs: the loss and
    its gradients are those of the plain graph, bit for bit on CPU (tests/test_ims3_memory.py)."""
    grid = sorted(g for g in ddim_timesteps(backbone.num_train_timesteps, grid_steps) if g > 0)
    paths = [[g for g in grid if g < int(ti)] + [int(ti)] for ti in t.tolist()]
    ac = backbone.alphas_cumprod.to(x0.device)
    x, previous = x0, [None] * len(paths)
    for k in range(max(len(p) for p in paths)):
        active = torch.tensor([k < len(p) for p in paths], device=x0.device)
        told = torch.tensor([previous[i] or 0 for i in range(len(paths))], device=x0.device)
        a_prev = torch.stack(
            [ac[previous[i]] if previous[i] is not None else ac.new_ones(()) for i in range(len(paths))]
        ).view(-1, 1, 1, 1)
        target = [p[k] if k < len(p) else previous[i] for i, p in enumerate(paths)]
        a_next = torch.stack([ac[target[i]] for i in range(len(paths))]).view(-1, 1, 1, 1)
        eps = checkpoint(backbone.eps, x, told, labels, use_reentrant=False)
        x0_hat = (x - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
        stepped = a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps
        x = torch.where(active.view(-1, 1, 1, 1), stepped, x)
        previous = target
    return x
