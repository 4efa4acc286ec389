"""adaptive-sampling: adaptive sampling with Bayesian optimisation and repulsion (Jeong et al., AAAI 2026).

Algorithm 1 of the paper, per class, over the Backbone protocol:

1. Random real seed images of the class, in mini-batches of `seed_batch_size` (§4.1: "random samples from
   the original dataset are selected and used as initialization points").
2. Per mini-batch I, Bayesian optimisation (BoTorch: a `SingleTaskGP` surrogate, `UpperConfidenceBound`
   acquisition maximised by `optimize_acqf`) over the guidance scale β and the denoising strength γ. Each
   candidate is scored on a proxy sampler with half the full sampler's denoising steps (§4.2) by the
   teacher-guided fidelity f(β, γ) = −KL(T(I) ‖ T(G)) (Eq. 5).
3. The best observed (β*, γ*) (Alg. 1 line 14) regenerates the mini-batch with the full sampler and
   repulsion (Eq. 6): at every reverse step each latent is pushed by −η_t·λ·Σ_{j≠i} ∇_{z_i} k(z_i, z_j) with
   an RBF kernel k, η_t = β_t / √(1 − ᾱ_t).
4. The mini-batches accumulate until IPC.

The paper uses a text-to-image latent diffusion model with label prompts; here the class condition is the
backbone's class label and guidance runs against its null class (DESIGN §3). β is the harness's guidance
scale (diffusers' `guidance_scale`, ε_null + β·(ε_c − ε_null)); the paper's Eq. 3 writes the same guidance
as ε_c + β'(ε_c − ε_null), i.e. β' = β − 1. γ follows diffusers' img2img strength convention
(harness.models.generators.sampling.img2img). The sampler is the harness's DDIM (η = 0): Eq. 6 is written for a
DDPM step, and its repulsion term is applied here after each DDIM step with the η_t of the DDPM step that
spans the same two timesteps (`Repulsion`).

The paper's code is not public; what it leaves open (search box, BO budget, κ, kernel bandwidth, λ, seed
mini-batch size, how seeds are chosen) is chosen in the config below and argued in docs/adaptive-sampling.md.
`adaptive-sampling-no-repulsion` (BO, λ = 0) and `adaptive-sampling-fixed` (no BO: repulsion at the config's
fixed (β, γ)) are the ablations; all three draw the same seeds and noise.

Defaults (pinned by tests/test_contract.py):
    steps = 50                   diffusers' img2img default, the paper's LDM pipeline; the BO proxy takes half (§4.2)
    bo = True                    Alg. 1
    cfg_scale_min = 1.0          docs/adaptive-sampling.md (the paper gives no box)
    cfg_scale_max = 10.0         the same
    strength_min = 0.5           the same
    strength_max = 0.9           the same
    bo_init = 3                  docs/decisions.md: 3 Sobol points …
    bo_iterations = 3            … then 3 GP-UCB proposals, …
    proxy_batch_size = 1         … each scoring 1 seed of the mini-batch: BO ≈ 23 % of the FLOPs (Table 5: 26 %)
    ucb_kappa = 2.0              §3.2 UCB = m + κσ; κ from docs/adaptive-sampling.md
    cfg_scale = 8.0              the fixed ablation: D4M's reference setting
    strength = 0.7               the same
    repulsion = True             Eq. 6
    repulsion_weight = 100.0     docs/adaptive-sampling.md (λ for DiT-XL/2 latents)
    bandwidth_scale = 1.0        SVGD's median heuristic, unscaled
    seed_batch_size = 10         §4.1 mini-batches of seed images; docs/adaptive-sampling.md
    teacher_batch_size = 256     memory only
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from harness.core.identity import WHEN_SET
from harness.models.generators.sampling import fit_to_backbone, img2img, img2img_start

from .base import ClassTask, Method, PaperGenerator, Work, draw_real, fit_to_task, real_as_float, teacher_logits
from .registry import register_method, register_variant


@dataclass(frozen=True)
class AdaptiveSamplingConfig:
    # Full sampler: 50 DDIM steps, the default of the diffusers img2img pipelines the paper's LDM and its
    # baseline D4M run with; the BO proxy takes half (steps // 2, §4.2).
    steps: int = 50
    # The BO search box. β over [1, 10]: from no guidance up past D4M's 8 (SD's usual 7.5), spanning DiT's
    # usual 1.5–4 as well. γ over [0.5, 0.9]: the fidelity objective alone always prefers the smallest γ (a
    # copy of the seed has KL 0), so the lower bound decides how novel the images are; from γ = 0.5 on, 96 %
    # of the samples lie farther from their seed than the seed from its nearest other real image (measured on
    # Fashion-MNIST, docs), while at 0.3 94 % are closer: near-copies. Above 0.9 the seed is almost gone.
    bo: bool = True
    cfg_scale_min: float = 1.0
    cfg_scale_max: float = 10.0
    strength_min: float = 0.5
    strength_max: float = 0.9
    # BO budget per mini-batch, set so that BO's share of the FLOPs of distilling a class at DiT-XL/2-256 size
    # matches Table 5's 26 % (0.7 of 2.7 s per image) within ±5 points (docs/decisions.md, pinned by
    # tests/test_adaptive_sampling.py): 3 scrambled-Sobol initial points, then 3 GP-UCB proposals, each proxy
    # run (half the steps, §4.2) scoring the first `proxy_batch_size` seeds of the mini-batch — the seeds are a
    # uniform draw, so those are a uniform subsample of I and f on them estimates Eq. 5's mini-batch fidelity.
    # 22.6 % with γ priced at the box's middle, 28.5 % with γ* at its lower edge. The proxy on the whole
    # mini-batch (Alg. 1's letter) cannot reach 26 %: one half-step proxy run of I costs ~half a full run, so
    # 26 % would be 0.7 evaluations per mini-batch. `proxy_batch_size` enters a set's identity only when set off
    # 1, so that the fixed variant (no BO) keeps its key; the family's revision 1 tells the BO sets scored on one
    # seed from the earlier whole-batch ones.
    bo_init: int = 3
    bo_iterations: int = 3
    proxy_batch_size: int = field(default=1, metadata=WHEN_SET)
    # UCB(x) = m(x) + κ·σ(x) (§3.2); BoTorch's `beta` is κ². κ = 2: the best of κ ∈ {1, 2, 3} on 40 random 2-D
    # objectives at the earlier budget of 10 points (mean regret 0.049 / 0.032 / 0.098; docs).
    ucb_kappa: float = 2.0
    # (β, γ) when `bo` is off (the fixed ablation): D4M's reference setting, the fixed strategy the paper
    # contrasts with.
    cfg_scale: float = 8.0
    strength: float = 0.7
    # Repulsion (Eq. 6). The RBF bandwidth σ is the median heuristic of SVGD (σ² = med‖z_i − z_j‖² /
    # (2 log(n + 1)), recomputed every step on the current latents) times `bandwidth_scale`: the latents'
    # scale shrinks as noise is removed and differs between latent spaces, so no fixed σ suits them all.
    # λ multiplies the raw kernel gradient, whose size relative to the latents' spread falls as 1 / (d·s²)
    # (d the latent dimension, s the typical per-element distance between two latents): 100 for DiT-XL/2's
    # 4×32×32 SD-VAE latents carries over the λ = 3 measured best on Fashion-MNIST's 28×28 pixels (docs).
    repulsion: bool = True
    repulsion_weight: float = 100.0
    bandwidth_scale: float = 1.0
    # Seed images per mini-batch (|I| = m_seed): 10, so IPC 10 is one BO run whose images all repel each
    # other, and IPC 50 adapts (β, γ) to five seed batches.
    seed_batch_size: int = 10
    # Memory knob only: teacher batches.
    teacher_batch_size: int = 256

    def __post_init__(self):
        if not 1.0 <= self.cfg_scale_min <= self.cfg_scale_max:
            raise ValueError("need 1 <= cfg_scale_min <= cfg_scale_max")
        if not 0 < self.strength_min <= self.strength_max <= 1:
            raise ValueError("need 0 < strength_min <= strength_max <= 1")
        if not 0 <= self.strength <= 1:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if self.steps < 2:
            raise ValueError("steps must be at least 2 (the proxy sampler takes half)")
        if self.bo_init < 1 or self.bo_iterations < 0 or self.ucb_kappa < 0 or self.proxy_batch_size < 1:
            raise ValueError("bo_init and proxy_batch_size must be >= 1, bo_iterations >= 0 and ucb_kappa >= 0")
        if self.repulsion_weight < 0 or self.bandwidth_scale <= 0:
            raise ValueError("repulsion_weight must be >= 0 and bandwidth_scale > 0")
        if self.seed_batch_size < 1 or self.teacher_batch_size < 1:
            raise ValueError("batch sizes must be at least 1")


# ---- teacher-guided fidelity (Eq. 5) ----


def teacher_log_probs(teacher, images01: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """log T(x) over all the teacher's outputs (`teacher_logits`): a pretrained ImageNet-1k teacher's soft
    label of a Woof image includes the breeds outside the suite, which is what the paper's teacher predicts."""
    return teacher_logits(teacher, images01, batch_size).log_softmax(1)


def fidelity(log_p_real: torch.Tensor, log_p_gen: torch.Tensor) -> float:
    """f = −KL(T(I) ‖ T(G)) for a mini-batch: the KL of each generated image's soft label from its own seed's,
    averaged over the mini-batch (G_i is generated from I_i; a KL of batch-averaged labels would score a batch
    whose images swapped classes as perfect)."""
    kl = (log_p_real.exp() * (log_p_real - log_p_gen)).sum(1)
    return -float(kl.mean())


# ---- repulsion (Eq. 6) ----


def median_bandwidth(z: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """σ² of the RBF kernel by SVGD's median heuristic: med_{i≠j}‖z_i − z_j‖² / (2 log(n + 1)), so that a
    typical pair has k = 1/(n + 1) and Σ_j k stays near 1 whatever the batch size. Returned detached."""
    flat = z.detach().flatten(1)
    n = len(flat)
    sq = (flat[:, None] - flat[None]).pow(2).sum(-1)
    off = sq[~torch.eye(n, dtype=torch.bool, device=z.device)]
    med = off.median().clamp_min(torch.finfo(flat.dtype).tiny)
    return scale**2 * med / (2 * math.log(n + 1))


def rbf_repulsion_grad(z: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """Σ_{j≠i} ∇_{z_i} k(z_i, z_j) for k(x, y) = exp(−‖x − y‖² / (2σ²)), every i at once, with σ² fixed:
    −Σ_j k_ij (z_i − z_j) / σ²."""
    flat = z.flatten(1)
    diff = flat[:, None] - flat[None]  # (n, n, d): z_i − z_j
    k = torch.exp(-diff.pow(2).sum(-1) / (2 * sigma2))  # k_ii = 1, but its z_i − z_i term is 0
    return (-(k[..., None] * diff).sum(1) / sigma2).view_as(z)


class Repulsion:
    """The repulsion term of Eq. 6 as a `ddim_sample` step hook.

    Eq. 6 is a DDPM step with the noise prediction ε̃ replaced by ε̃ + λ·Σ_j ∇k: z_{t−1} = [z_t − η_t ε̃ −
    η_t λ Σ_j ∇k(z_t)] / √α_t + σ_t ξ. The DDIM step (η = 0) here replaces the stochastic DDPM step, and the
    repulsion term stays as written: after the step from t to t_prev, each latent moves by
    −(η_t / √α_t)·λ·Σ_j ∇_{z_i} k(z_{i,t}, z_{j,t}), where α_t = ᾱ_t / ᾱ_{t_prev} and β_t = 1 − α_t are the
    DDPM quantities of that (strided) step and η_t = β_t / √(1 − ᾱ_t) (the paper's "effective DDPM step").
    The kernel is evaluated at the step's input latents z_t, as in Eq. 6, which the hook remembers (it is
    built with the run's start latents and timesteps)."""

    def __init__(
        self,
        start: torch.Tensor,
        timesteps: list[int],
        alphas_cumprod: torch.Tensor,
        weight: float,
        bandwidth_scale: float = 1.0,
    ):
        self.prev, self.timesteps, self.weight, self.bandwidth_scale = start, list(timesteps), weight, bandwidth_scale
        self.ac = alphas_cumprod.to(start.device)

    def coefficient(self, i: int) -> torch.Tensor:
        """η_t / √α_t of step i (from timesteps[i] to the next, or to the clean image after the last)."""
        a_t = self.ac[self.timesteps[i]]
        a_prev = self.ac[self.timesteps[i + 1]] if i + 1 < len(self.timesteps) else torch.ones_like(a_t)
        alpha = a_t / a_prev
        eta = (1 - alpha) / (1 - a_t).sqrt()
        return eta / alpha.sqrt()

    def __call__(self, x: torch.Tensor, i: int, t: int) -> torch.Tensor:
        if t != self.timesteps[i]:
            raise RuntimeError(f"repulsion hook built for timestep {self.timesteps[i]} at step {i}, called at {t}")
        if len(x) > 1 and self.weight > 0:
            z = self.prev
            grad = rbf_repulsion_grad(z, median_bandwidth(z, self.bandwidth_scale))
            x = x - self.coefficient(i) * self.weight * grad
        self.prev = x
        return x


# ---- Bayesian optimisation ----


@dataclass
class BOResult:
    best: tuple[float, ...]
    best_value: float
    points: torch.Tensor  # (n, d) in the search box, in evaluation order
    values: torch.Tensor  # (n,)


def bayes_opt(
    objective: Callable[..., float],
    bounds: list[tuple[float, float]],
    n_init: int,
    n_iter: int,
    kappa: float,
    seed: int,
    num_restarts: int = 4,
    raw_samples: int = 128,
) -> BOResult:
    """Maximise a black-box `objective(*x)` over the box `bounds` with GP-UCB, and return the best observed point.

    The GP (BoTorch's `SingleTaskGP`, Matérn-5/2 ARD kernel, inferred noise, standardised outputs) works on
    the box scaled to the unit cube. `n_init` scrambled-Sobol points, then `n_iter` points that each maximise
    UCB = m + κσ (`optimize_acqf`). Deterministic for a `seed`: the Sobol draw and the acquisition's random
    starts are seeded from it, and anything else BoTorch draws comes from a forked, seeded global RNG."""
    # Imported here: BoTorch takes over a second to import, which every `import methods` (each Ray worker,
    # each CLI call) would otherwise pay for one method.
    from botorch.acquisition import UpperConfidenceBound
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from botorch.optim import optimize_acqf
    from botorch.utils.sampling import draw_sobol_samples
    from gpytorch.mlls import ExactMarginalLogLikelihood

    dtype = torch.float64  # BoTorch's models are meant for double precision
    box = torch.tensor(bounds, dtype=dtype).T  # (2, d): lows, highs
    unit = torch.stack([torch.zeros(box.shape[1], dtype=dtype), torch.ones(box.shape[1], dtype=dtype)])

    def evaluate(u: torch.Tensor) -> float:
        return float(objective(*(box[0] + u * (box[1] - box[0])).tolist()))

    # Gradients on even under a caller's no_grad: fitting the GP and maximising the acquisition need them.
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        us = draw_sobol_samples(bounds=unit, n=n_init, q=1, seed=seed).squeeze(1)
        ys = torch.tensor([evaluate(u) for u in us], dtype=dtype)
        for it in range(n_iter):
            gp = SingleTaskGP(us, ys[:, None], outcome_transform=Standardize(m=1))
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
            acq = UpperConfidenceBound(gp, beta=kappa**2)
            cand, _ = optimize_acqf(
                acq,
                bounds=unit,
                q=1,
                num_restarts=num_restarts,
                raw_samples=raw_samples,
                options={"seed": seed + 1 + it},
            )
            u = cand.detach().squeeze(0)
            us = torch.cat([us, u[None]])
            ys = torch.cat([ys, torch.tensor([evaluate(u)], dtype=dtype)])
    points = box[0] + us * (box[1] - box[0])
    best = int(torch.argmax(ys))
    return BOResult(tuple(points[best].tolist()), float(ys[best]), points, ys)


# ---- the method ----

# The BO budget the variants' shared seed key was first made with (`AdaptiveSampling.seed_identity`).
SEED_KEY_BUDGET = {"bo_init": 4, "bo_iterations": 6}
BUDGET_FIELDS = ("bo_init", "bo_iterations", "proxy_batch_size")


def mini_batches(ipc: int, seed_batch_size: int) -> list[int]:
    """The sizes of a class's seed mini-batches at `ipc`."""
    return [min(seed_batch_size, ipc - lo) for lo in range(0, ipc, seed_batch_size)]


@register_method
class AdaptiveSampling(Method):
    name = "adaptive-sampling"
    # On the harness's pixel DiT: 25 steps, guidance searched over [1, 4] (past 4 it loses its diversity), the fixed
    # point at D4M's (2.0, 0.7) there, and repulsion λ = 3 for its 1 × 28 × 28 images (100 is for DiT-XL/2's
    # 4 × 32 × 32 latents; λ = 30 broke the images): docs/adaptive-sampling.md.
    generator_defaults = {"pixel-dit": {"steps": 25, "cfg_scale_max": 4.0, "cfg_scale": 2.0, "repulsion_weight": 3.0}}
    Config = AdaptiveSamplingConfig
    needs = frozenset({"backbone", "teacher", "real_images"})
    # adaptive-sampling, -no-repulsion and -fixed with otherwise equal settings draw the same seed images,
    # the same noise and the same BO seeds: the ablation rows differ only in the stage switched off.
    paired_switches = ("bo", "repulsion")
    # Its guidance box (1–10) and the fixed variant's 8 are Stable Diffusion scales, as D4M's (docs/adaptive-
    # sampling.md): on a DiT the suite's unset ones are mapped (methods/base.py map_guidance; 10 → 5.15, 8 → 4.23).
    paper_generator = PaperGenerator("Stable Diffusion v1.5, as D4M", "stable-diffusion", 7.5)
    guidance_fields = ("cfg_scale_min", "cfg_scale_max", "cfg_scale")
    # 1 (issue 25): the BO proxy scores `proxy_batch_size` seeds of each mini-batch instead of all of them, so the
    # BO variants' images change under unchanged settings. The fixed variant runs no BO and cancels it.
    revision = 1
    # The BO budget is not searched: it is set by the paper's cost share (Table 5), which a search on accuracy
    # alone would trade away.
    # "generate" is the full image-to-image run with repulsion and its decode; "bo" holds its proxies' runs.
    stage_batches = {"encode": "seed_batch_size", "bo": "seed_batch_size", "generate": "seed_batch_size"}
    # Two steps (the full run takes one at strength ≥ 0.5; the proxy's one step runs none at strength < 1, so a proxy
    # evaluation is its decode and the teacher); two Sobol points and one GP-UCB proposal: a BO round.
    rehearsal_settings = {"steps": 2, "bo_init": 2, "bo_iterations": 1}
    search_space = {
        "repulsion_weight": ("log", 0.3, 1000.0),
        "bandwidth_scale": ("log", 0.5, 2.0),
        "seed_batch_size": ("int", 5, 25),
        "ucb_kappa": ("float", 0.5, 3.0),
        "strength_min": ("float", 0.3, 0.7),
    }

    @classmethod
    def bo_work(cls, config, ipc: int) -> Work:
        """What BO costs one class at `ipc` (none without BO): per seed mini-batch, the teacher's soft labels of
        the seeds the proxy scores, then bo_init + bo_iterations proxy runs over them — guided img2img at half
        the steps, a VAE decode and a teacher pass per image. The proxies' strengths spread over the search
        box: priced at its middle."""
        if not config.bo:
            return Work()
        strength = (config.strength_min + config.strength_max) / 2
        runs = config.bo_init + config.bo_iterations
        scored = sum(min(config.proxy_batch_size, n) for n in mini_batches(ipc, config.seed_batch_size))
        per_run = int(config.steps // 2 * strength) * 2  # guided: always two evaluations
        return Work(backbone=scored * runs * per_run, vae=scored * runs, teacher=scored * (runs + 1))

    @classmethod
    def work(cls, config, ipc, real_per_class):
        # BO picks the strength per seed batch: the plan prices the middle of its range.
        strength = (config.strength_min + config.strength_max) / 2 if config.bo else config.strength
        full = int(config.steps * strength) * 2  # guided: always two evaluations
        bo = cls.bo_work(config, ipc)
        # Each seed encoded once and each image decoded once, beside BO's.
        return Work(backbone=ipc * full + bo.backbone, vae=2 * ipc + bo.vae, teacher=bo.teacher)

    @classmethod
    def seed_identity(cls, config):
        """The draws (seed images, noise, one BO seed per mini-batch) do not depend on the BO budget, so the key
        the three variants share holds the budget it was first made with, whatever the config's: a budget change
        keeps every variant's draws, and the fixed variant's images."""
        family, fields = super().seed_identity(config)
        fields = {k: v for k, v in fields.items() if k not in BUDGET_FIELDS}
        return family, {**fields, **SEED_KEY_BUDGET}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The (β, γ) each mini-batch of the last `distill_class` was sampled at: what BO chose, for inspection.
        self.last_choices: list[tuple[float, float]] = []

    def _draws(self, task: ClassTask) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Every random draw up front on the CPU, in a fixed order: which real images seed the class, one
        noise per image (shared by the proxy and the full sampler, so the BO objective is a deterministic
        function of (β, γ) and the proxy sees the noise the full run will), one BO seed per mini-batch."""
        gen = task.generator()
        seeds = draw_real(task, gen)
        noise = torch.randn((task.ipc, *self.backbone.latent_shape), generator=gen)
        batches = math.ceil(task.ipc / self.config.seed_batch_size)
        bo_seeds = torch.randint(0, 2**31 - 1, (batches,), generator=gen).tolist()
        return seeds, noise, bo_seeds

    @torch.no_grad()
    def _generate(
        self,
        task: ClassTask,
        latents: torch.Tensor,
        noise: torch.Tensor,
        cfg_scale: float,
        strength: float,
        steps: int,
        repulsion: bool,
    ) -> torch.Tensor:
        bb, cfg = self.backbone, self.config
        hook = None
        if repulsion:
            start, ts = img2img_start(bb, latents, noise, strength, steps)
            hook = Repulsion(start, ts, bb.alphas_cumprod, cfg.repulsion_weight, cfg.bandwidth_scale)
        images = img2img(bb, task.condition, noise, strength, cfg_scale, steps, latents=latents, step_hook=hook)
        return fit_to_task(images.cpu(), task)

    def distill_class(self, task: ClassTask) -> torch.Tensor:
        bb, cfg = self.backbone, self.config
        seeds, noise, bo_seeds = self._draws(task)
        real = real_as_float(task.real[seeds])
        proxy_steps = cfg.steps // 2
        bounds = [(cfg.cfg_scale_min, cfg.cfg_scale_max), (cfg.strength_min, cfg.strength_max)]
        self.last_choices = []
        out = []
        for b, lo in enumerate(range(0, task.ipc, cfg.seed_batch_size)):
            seed_images = real[lo : lo + cfg.seed_batch_size]
            with torch.no_grad(), self.stage("encode", record=False):
                latents = bb.encode(fit_to_backbone(seed_images, bb).to(self.device))
            z_noise = noise[lo : lo + cfg.seed_batch_size].to(self.device)
            if cfg.bo:
                with self.stage("bo"):
                    # The proxy scores the mini-batch's first seeds: a uniform subsample, as the seeds are a uniform
                    # draw.
                    k = cfg.proxy_batch_size
                    log_p_real = teacher_log_probs(self.teacher, seed_images[:k], cfg.teacher_batch_size)

                    # The batch's proxy inputs bound as defaults: the objective reads this batch's, not the loop's.
                    def objective(beta: float, gamma: float, lat=latents[:k], noise=z_noise[:k], ref=log_p_real):
                        proxy = self._generate(task, lat, noise, beta, gamma, proxy_steps, repulsion=False)
                        return fidelity(ref, teacher_log_probs(self.teacher, proxy, cfg.teacher_batch_size))

                    result = bayes_opt(objective, bounds, cfg.bo_init, cfg.bo_iterations, cfg.ucb_kappa, bo_seeds[b])
                    beta, gamma = result.best
            else:
                beta, gamma = cfg.cfg_scale, cfg.strength
            self.last_choices.append((beta, gamma))
            with self.stage("generate", record=False):
                out.append(self._generate(task, latents, z_noise, beta, gamma, cfg.steps, repulsion=cfg.repulsion))
        return torch.cat(out)


register_variant(
    "adaptive-sampling-no-repulsion",
    AdaptiveSampling,
    repulsion=False,
    doc="Ablation: BO-chosen (β*, γ*) per seed mini-batch, the full sampler without repulsion (λ = 0).",
    search_space={
        k: v for k, v in AdaptiveSampling.search_space.items() if k not in ("repulsion_weight", "bandwidth_scale")
    },
)
# The fixed variant runs no BO: neither the budget nor the family's revision 1 (a change to the BO proxy) decides
# its images, so it keeps the budget fields and the revision its sets were keyed with.
register_variant(
    "adaptive-sampling-fixed",
    AdaptiveSampling,
    bo=False,
    bo_init=SEED_KEY_BUDGET["bo_init"],
    bo_iterations=SEED_KEY_BUDGET["bo_iterations"],
    revision=-1,
    doc="Ablation: no BO; every mini-batch sampled at the config's fixed (β, γ) with repulsion.",
    search_space={
        "cfg_scale": ("float", 1.0, 10.0),
        "strength": ("float", 0.5, 0.9),
        **{k: AdaptiveSampling.search_space[k] for k in ("repulsion_weight", "bandwidth_scale", "seed_batch_size")},
    },
)
register_variant(
    "adaptive-sampling-sd",
    AdaptiveSampling,
    backbone_kind="stable-diffusion",
    doc="Adaptive sampling on Stable Diffusion v1.5, its paper's unaligned case (seed 004 Table 3, after D4M): the "
    "guidance box 1–10 unmapped; the suite's backbones.stable-diffusion.",
)
