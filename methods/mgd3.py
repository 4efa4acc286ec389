"""mgd3: Mode-Guided Dataset Distillation using Diffusion Models (Chan-Santiago et al., ICML 2025), training-free.

Per class, three stages on the suite's pretrained DiT:
- Mode discovery: k-means with IPC clusters on the class's VAE latents; each centre is one mode m_k.
- Mode guidance: sample k starts from noise and, at each of DiT's ancestral (DDPM) steps, adds
  λ·σ_t·(m_k − x̂_0) to the step's posterior mean, pulling its current estimate of the clean latent toward its
  mode (x_{t−1} = μ_t + λσ_t(m_k − x̂_0) + σ_t z, x̂_0 and μ_t from the guided noise).
- Stop guidance: the mode term is applied only while the respaced step index is above `stop_t` (of 50 steps,
  indices 49 … 26), and the rest of the chain is plain guided DDPM, which removes the term's artifacts.

No code of the authors is stored (their project page, jachansantiago.github.io/mode-guided-distillation, links
none that the index holds). The sampler is read from AyushRoy2001/ManifoldGD (CVPR 2026), which is built on
MGD3's code and keeps its sampler: `sample_mode_guidance.py` (the MGD3 script: `--mode_guidance_scale` 0.1,
`--stop_t`, `--cfg-scale` 4.0, `--num-sampling-steps` 50, DDPM, k-means with IPC clusters on the class's VAE
latents) and `diffusion/gaussian_diffusion.py` l.895-903 (the mode term: −(x̂_0 − m)·λ·exp(½ log σ²_t) while
t > stop_t, an RBF kernel of bandwidth 1), run by `scripts/*_mgd.sh` with `T_SG=25` of `T=50` steps. The
ManifoldGD-only manifold term (l.906-920) is not MGD3's and is left out. Differences from that code:
- The modes are the k-means centres of the VAE posterior means (the harness encodes deterministically); the
  script clusters its own VAE features (`tsne_plots.get_features_per_class`, not in the repository).
- k-means' seed is drawn from the task's generator (the script fixes random_state = 0): every random number of a
  ddbench method comes from its task.
- Each image's step noise comes from its own seed (as `diffusion`'s DDPM), so the batch size changes no image.

Defaults (pinned by tests/test_contract.py):
    mode_guidance_scale = 0.1   ManifoldGD sample_mode_guidance.py: --mode_guidance_scale default 0.1
    stop_t = 25                 ManifoldGD scripts/nette_mgd.sh, woof_mgd.sh: T_SG=25 (--stop_t)
    cfg_scale = 4.0             sample_mode_guidance.py: --cfg-scale default 4.0 (DiT's)
    steps = 50                  scripts/*_mgd.sh: T=50 (--num-sampling-steps)
    batch_size = 50             memory only: images sampled at once
    fixed_variance = "large"    DiT's FIXED_LARGE (β) where a backbone does not learn its variance; DiT-XL/2 does
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.cluster import KMeans

from harness.models.generators.sampling import ddpm_posterior, fit_to_backbone, respaced_schedule

from .base import ClassTask, Method, Work, evaluations_per_step, fit_to_task, real_as_float
from .registry import register_method, register_variant


@dataclass(frozen=True)
class MGD3Config:
    mode_guidance_scale: float = 0.1
    # The respaced step index (steps − 1 … 0) at and below which the mode term is off.
    stop_t: int = 25
    cfg_scale: float = 4.0
    steps: int = 50
    batch_size: int = 50
    # The step variance of a backbone that does not learn it (DiT-XL/2 does, and ignores this): "large", β (DiT's
    # FIXED_LARGE), or "small", the posterior's β̃ (FIXED_SMALL). At 25 steps β leaves visible noise in the pixel
    # DiT's images (σ 0.15 against β̃'s 0.01 at the last noisy step; docs/decisions.md).
    fixed_variance: str = "large"

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.stop_t < self.steps:
            raise ValueError(f"stop_t: must be in [0, steps) = [0, {self.steps}), got {self.stop_t}")
        if self.fixed_variance not in ("large", "small"):
            raise ValueError(f"fixed_variance: must be 'large' or 'small', got {self.fixed_variance!r}")
        if self.mode_guidance_scale < 0:
            raise ValueError(f"mode_guidance_scale: must be at least 0, got {self.mode_guidance_scale}")


def mode_centres(latents: torch.Tensor, k: int, random_state: int) -> torch.Tensor:
    """The k modes of a class: the k-means centres (sklearn's KMeans, n_init "auto", as the MGD3 script runs it) of
    the flattened latents, in the latents' shape."""
    if len(latents) < k:
        raise ValueError(f"{len(latents)} latents cannot make {k} modes")
    flat = latents.detach().flatten(1).cpu().double().numpy()
    km = KMeans(n_clusters=k, random_state=random_state, n_init="auto").fit(flat)
    return torch.from_numpy(km.cluster_centers_).to(latents.dtype).view(k, *latents.shape[1:])


@torch.no_grad()
def mode_guided_ddpm(
    backbone,
    noise: torch.Tensor,
    label: int,
    modes: torch.Tensor,
    steps: int,
    cfg_scale: float,
    mode_guidance_scale: float,
    stop_t: int,
    generators: list[torch.Generator],
    small_variance: bool = False,
) -> torch.Tensor:
    """DiT's guided DDPM from `noise` with MGD3's mode term: while the respaced index i > stop_t, each image's step
    adds λ·σ_i·(m − x̂_0) toward its own mode m (`modes`, one per image). Step noise is drawn on the CPU from
    `generators`, one per image. Returns latents."""
    schedule = respaced_schedule(backbone.betas, steps)
    labels = torch.as_tensor(label, device=noise.device).long().expand(noise.shape[0])
    x, modes = noise, modes.to(noise.device, noise.dtype)
    for i in reversed(range(steps)):
        mean, x0, log_variance = ddpm_posterior(backbone, schedule, x, i, labels, cfg_scale, small_variance)
        if log_variance is None:  # i = 0: the mean, no noise and (stop_t ≥ 0) no mode term
            x = mean
            continue
        sigma = (0.5 * log_variance).exp()
        step = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(x.device, x.dtype)
        x = mean + sigma * step
        if i > stop_t:
            x = x + mode_guidance_scale * sigma * (modes - x0)
    return x


@register_method
class MGD3(Method):
    name = "mgd3"
    # On the harness's pixel DiT: its guidance 2.0 and 25 steps (as `diffusion` on the fashion board), the stop at
    # the same fraction of the chain as the reference's 25 of 50 (12 of 25: the mode term on 12 steps of 25); the
    # posterior's variance β̃, as DiT-XL/2's learned variance nears it, instead of β's noise left in the images.
    generator_defaults = {"pixel-dit": {"cfg_scale": 2.0, "steps": 25, "stop_t": 12, "fixed_variance": "small"}}
    Config = MGD3Config
    needs = frozenset({"backbone", "real_images"})
    stage_batches = {"encode": "batch_size", "sample": "batch_size", "decode": "batch_size"}
    # Two steps with the stop at 0: one step under the mode term, the last without.
    rehearsal_settings = {"steps": 2, "stop_t": 0}
    # Around the reference's λ 0.1, the guidance, and the stop over [0, 24]: valid on a 25-step chain as on a
    # 50-step one (the reference's 25 of 50 lies one above; 24 guides one step more).
    search_space = {
        "mode_guidance_scale": ("log", 0.01, 1.0),
        "stop_t": ("int", 0, 24),
        "cfg_scale": ("float", 1.0, 10.0),
    }

    @classmethod
    def work(cls, config, ipc, real_per_class):
        return Work(backbone=ipc * config.steps * evaluations_per_step(config.cfg_scale), vae=real_per_class + ipc)

    @classmethod
    def real_images_needed(cls, config, ipc):
        return ipc  # k-means makes IPC modes

    @torch.no_grad()
    def encode_real(self, task: ClassTask) -> torch.Tensor:
        """Latents of the class's real images (the VAE's posterior mean)."""
        bb, step = self.backbone, self.config.batch_size
        real = fit_to_backbone(real_as_float(task.real), bb)
        return torch.cat([bb.encode(real[i : i + step].to(self.device)).cpu() for i in range(0, len(real), step)])

    def _draws(self, task: ClassTask) -> tuple[int, torch.Tensor, list[int]]:
        # Every draw up front on the CPU: k-means' seed, the noise bank, one step-noise seed per image.
        gen = task.generator()
        random_state = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        noise = torch.randn((task.ipc, *self.backbone.latent_shape), generator=gen)
        seeds = torch.randint(0, 2**62, (task.ipc,), generator=gen).tolist()
        return random_state, noise, seeds

    def modes(self, task: ClassTask) -> torch.Tensor:
        """The class's IPC modes (mode discovery)."""
        random_state, _, _ = self._draws(task)
        return mode_centres(self.encode_real(task), task.ipc, random_state)

    @torch.no_grad()
    def distill_class(self, task: ClassTask) -> torch.Tensor:
        cfg, bb = self.config, self.backbone
        random_state, noise, seeds = self._draws(task)
        with self.stage("encode", record=False):
            latents = self.encode_real(task)
        # Mode discovery is k-means on the CPU (sklearn): no named stage, as D4M's, since the rehearsal's stages are
        # the ones with device work to measure.
        modes = mode_centres(latents, task.ipc, random_state)
        out = []
        for i in range(0, task.ipc, cfg.batch_size):
            part = slice(i, i + cfg.batch_size)
            with self.stage("sample", record=False):
                z = mode_guided_ddpm(
                    bb,
                    noise[part].to(self.device),
                    task.condition,
                    modes[part],
                    cfg.steps,
                    cfg.cfg_scale,
                    cfg.mode_guidance_scale,
                    cfg.stop_t,
                    [torch.Generator().manual_seed(int(s)) for s in seeds[part]],
                    cfg.fixed_variance == "small",
                )
            with self.stage("decode", record=False):
                out.append(bb.decode(z).cpu())
        return fit_to_task(torch.cat(out), task)


# Stop guidance ablated: the mode term on every step but the last. A generator's defaults never override a
# variant's own (harness/config/coerce.py), so on the pixel DiT too it stops at 0, not mgd3's 12 of 25; its search
# leaves the stop out, or a search would switch it back on. Its draws are its own (unpaired, as d3hr's).
register_variant(
    "mgd3-no-stop",
    MGD3,
    stop_t=0,
    search_space={k: v for k, v in MGD3.search_space.items() if k != "stop_t"},
    doc="mgd3 with the mode term kept to the end of the chain: stop guidance ablated.",
)
