"""igd: Influence-Guided Diffusion (Chen et al., ICLR 2025) — a training-free guidance term in DiT's sampler that
steers each sample towards a high training influence and away from the class's earlier samples.

Per class (reference: mchen725/DD_IGD sample.py / sample_mp.py, the scripts sample_mp.sh and
sample_mp_minimax.sh):

1. The class's real gradient: the mean gradient of the surrogate's cross-entropy over `grad_ipc` real images
   of the class, w.r.t. all of the surrogate's parameters (sample.py `get_grads`: chunks of 50, averaged).
2. The images are sampled one at a time (sample.py: `batch_size = 1`) by DiT's sampler. At the steps of the
   guidance window [`low`, `high`] the step's mean moves along ∇_{x_t} G (DiT's `cond_fn`), with
   G = gm_scale · I(x̂_0) − dev_scale · max_m cos(x̂_0, m), where x̂_0 is the clean latent the DiT predicts
   from x_t (G is differentiated through the DiT's noise prediction and the VAE decoder):
   - the influence term I: the cosine similarity between the surrogate's gradient on the decoded x̂_0 (labelled
     as the class) and the class's real gradient (TracIn with the cosine, as the paper's influence guidance);
   - the deviation term: the largest cosine similarity of x̂_0 to the class's last `memory_size` finished
     latents (sample.py: `pseudo_memory_c`, 64 latest, oldest dropped first).
3. Each finished latent joins the memory; the latents are decoded.

The surrogate is the suite's teacher at its trained weights (docs/decisions.md, "IGD"): the reference trains a
ConvNet-6 for 50 epochs and uses four checkpoints of its trajectory; the window's positions are counted on the
reference's 50-step chain and carried to the config's `steps` (docs/decisions.md). `igd` samples the suite's
DiT (the seeds' "DiT-IGD" rows); `igd-minimax` samples Minimax's fine-tuned DiT (the same fine-tune `minimax`
makes: the same settings) at sample_mp_minimax.sh's scales.

Defaults (pinned by tests/test_contract.py): DD_IGD's (sample_mp.sh, sample.py) and Minimax's fine-tune settings
    cfg_scale = 4.0                 sample.py `--cfg-scale` default 4.0
    steps = 50                      sample.py `--num-sampling-steps` default 50
    batch_size = 1                  sample.py `batch_size = 1`: each image sees every earlier one in the memory
    sampler = "ddpm"                sample.py: DiT's `p_sample_loop`
    fine_tune = False               sample_mp.sh: the pretrained DiT-XL/2 (`--ckpt pretrained_models/...`)
    epochs = 8                      minimax's (igd-minimax samples minimax's fine-tuned DiT)
    fine_tune_batch_size = 8        minimax's
    lr = 0.001                      minimax's
    ema_decay = 0.9999              minimax's
    class_dropout = 0.1             minimax's
    checkpoint_every = 500          minimax's
    max_steps = None                minimax's
    fine_tune_seed = 0              minimax's
    lambda_pos = 0.002              minimax's
    lambda_neg = 0.008              minimax's
    memory_size = 64                sample.py `--memory-size` default 64 (and minimax's fine-tune memory)
    gm_scale = 5.0                  sample_mp.sh `k=5` (`--gm-scale`)
    dev_scale = 120.0               sample_mp.sh `gamma=120` (`--dev-scale`)
    low = 30                        sample_mp.sh `low=30`
    high = 45                       sample_mp.sh `high=45`
    grad_ipc = 200                  sample_mp.sh `gi=200` (`--grad-ipc`)
    real_batch_size = 50            sample.py `get_grads`: `gap = 50`
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from harness.models.generators.sampling import ddim_step, ddim_timesteps, ddpm_step, respaced_schedule

from .base import ClassTask, Work, draw_real, evaluations_per_step, fit_to_task, real_as_float
from .minimax import Minimax, MinimaxConfig, cosine_matrix
from .registry import register_method, register_variant

# The chain the reference's window is counted on (sample_mp.sh runs `--num-sampling-steps` at its default 50).
REFERENCE_STEPS = 50
# Teacher evaluations of one guided step, a backward pass counting two (methods.base.Work): the forward, the
# parameter gradient kept for differentiation (2), and the backward through both (2 × 3).
TEACHER_EVALUATIONS_PER_GUIDED_STEP = 9


@dataclass(frozen=True)
class IGDConfig(MinimaxConfig):
    batch_size: int = 1
    fine_tune: bool = False
    gm_scale: float = 5.0
    dev_scale: float = 120.0
    low: int = 30
    high: int = 45
    grad_ipc: int = 200
    real_batch_size: int = 50

    def __post_init__(self):
        MinimaxConfig.__post_init__(self)
        if not 0 <= self.low <= self.high:
            raise ValueError(f"low, high: the window needs 0 <= low <= high, got [{self.low}, {self.high}]")
        for name in ("grad_ipc", "real_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("gm_scale", "dev_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be at least 0, got {getattr(self, name)}")


def guided_positions(config: IGDConfig) -> list[int]:
    """The chain positions (0 = the last step, to the clean sample; `steps` − 1 = the first, from noise) the
    guidance runs at: those whose place on the reference's 50-step chain lies in [low, high]."""
    return [i for i in range(config.steps) if config.low <= i * REFERENCE_STEPS / config.steps <= config.high]


def parameter_gradient(teacher, params: dict, images01: torch.Tensor, label: int, create_graph: bool):
    """The gradient of the teacher's mean cross-entropy on `images01` (labelled `label`) w.r.t. `params`, as one
    flat vector."""
    logits = functional_call(teacher, params, (images01,))
    target = torch.full((len(images01),), label, dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits.float(), target)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    return torch.cat([g.reshape(-1) for g in grads])


@register_method
class IGD(Minimax):
    name = "igd"
    Config = IGDConfig
    needs = frozenset({"backbone", "teacher", "real_images"})
    stage_batches = {
        "real-gradients": "real_batch_size",
        "sample": "batch_size",
        "guidance": "batch_size",
        "decode": "batch_size",
        "fine-tune": "fine_tune_batch_size",
    }
    # Three steps put one position in the window (2 · 50/3 ≈ 33) and the others outside it: every stage runs once.
    # Two real images make the real gradient's batches (its memory per image is the slope over batches 1 and 2).
    rehearsal_settings = {"steps": 3, "grad_ipc": 2}
    # Around the reference's scales (k 5–10, γ 100–120), an order of magnitude either way.
    search_space = {"gm_scale": ("log", 0.5, 50.0), "dev_scale": ("log", 10.0, 1200.0)}

    @classmethod
    def work(cls, config, ipc, real_per_class):
        per_step = evaluations_per_step(config.cfg_scale)
        guided = len(guided_positions(config))
        return Work(
            # Every step's forward; a guided step's backward through the DiT as well.
            backbone=ipc * per_step * (config.steps + 2 * guided),
            # The final decode; a guided step's decode of x̂_0 and its backward.
            vae=ipc * (1 + 3 * guided),
            # The real gradient once per class (forward and backward), the influence at every guided step.
            teacher=3 * min(config.grad_ipc, real_per_class) + ipc * guided * TEACHER_EVALUATIONS_PER_GUIDED_STEP,
        )

    def surrogate_parameters(self) -> dict:
        """The teacher's parameters, detached copies that take gradients (the shared teacher is left frozen)."""
        return {n: p.detach().requires_grad_(True) for n, p in self.teacher.named_parameters()}

    def real_gradient(self, task: ClassTask, params: dict, gen: torch.Generator) -> torch.Tensor:
        """The mean parameter gradient over `grad_ipc` real images of the class (all of them where it has fewer),
        in batches of `real_batch_size`, each batch weighted by its size."""
        cfg = self.config
        chosen = draw_real(task, gen, min(cfg.grad_ipc, len(task.real)))
        images = real_as_float(task.real[chosen])
        total = None
        for batch in images.split(cfg.real_batch_size):
            with self.stage("real-gradients"), torch.enable_grad():
                g = parameter_gradient(self.teacher, params, batch.to(self.device), task.label, create_graph=False)
            total = g * len(batch) if total is None else total + g * len(batch)
        return total / len(images)

    def guidance(self, task: ClassTask, params: dict, real_gradient: torch.Tensor, memory: torch.Tensor | None):
        """The cond_fn of a guided step: ∇_x of gm_scale · I(x̂_0) − dev_scale · max cos(x̂_0, memory), per image."""
        cfg, bb = self.config, self.backbone

        def cond_fn(x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
            images = fit_to_task(bb.decode(x0), task)
            objective = x0.new_zeros(())
            for image in images:  # a per-image parameter gradient: the reference samples one image at a time
                g = parameter_gradient(self.teacher, params, image[None], task.label, create_graph=True)
                objective = objective + cfg.gm_scale * F.cosine_similarity(g, real_gradient, dim=0)
            if memory is not None and cfg.dev_scale > 0:
                objective = objective - cfg.dev_scale * cosine_matrix(x0, memory.to(x0)).max(dim=1).values.sum()
            return torch.autograd.grad(objective, x)[0].detach()

        return cond_fn

    def sample_batch(self, task, noise, seeds, params, real_gradient, memory) -> torch.Tensor:
        cfg, bb = self.config, self.backbone
        guided = set(guided_positions(cfg))
        cond_fn = self.guidance(task, params, real_gradient, memory)
        labels = torch.full((noise.shape[0],), task.condition, dtype=torch.long, device=self.device)
        x = noise.to(self.device)
        if cfg.sampler == "ddpm":
            schedule = respaced_schedule(bb.betas, cfg.steps)
            generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
            for i in reversed(range(cfg.steps)):
                step_noise = torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]) if i else None
                with self.stage("guidance" if i in guided else "sample", record=i in guided):
                    step_cond = cond_fn if i in guided else None
                    x = ddpm_step(bb, schedule, x, i, labels, cfg.cfg_scale, step_noise, step_cond)
        else:
            ts = ddim_timesteps(bb.num_train_timesteps, cfg.steps)
            for j, t in enumerate(ts):
                i = cfg.steps - 1 - j
                with self.stage("guidance" if i in guided else "sample", record=i in guided):
                    x = ddim_step(
                        bb,
                        x,
                        t,
                        ts[j + 1] if j + 1 < len(ts) else None,
                        labels,
                        cfg.cfg_scale,
                        cond_fn if i in guided else None,
                    )
        return x.detach()

    def distill_class(self, task: ClassTask) -> torch.Tensor:
        cfg, bb = self.config, self.backbone
        # Every draw up front, on the CPU, in a fixed order: the noise bank, the step seeds, the real images.
        gen = task.generator()
        noise = torch.randn((task.ipc, *bb.latent_shape), generator=gen)
        seeds = torch.randint(0, 2**62, (task.ipc,), generator=gen).tolist()
        params = self.surrogate_parameters()
        real_gradient = self.real_gradient(task, params, gen)
        memory, out = None, []
        for i in range(0, task.ipc, cfg.batch_size):
            with torch.no_grad():
                z = self.sample_batch(
                    task, noise[i : i + cfg.batch_size], seeds[i : i + cfg.batch_size], params, real_gradient, memory
                )
            memory = z if memory is None else torch.cat([memory, z])[-cfg.memory_size :]
            with self.stage("decode", record=False), torch.no_grad():
                out.append(bb.decode(z).cpu())
        return fit_to_task(torch.cat(out), task)


# IGD on Minimax's fine-tuned DiT, at the scales sample_mp_minimax.sh runs it with (k = 10, γ = 100).
register_variant(
    "igd-minimax",
    IGD,
    fine_tune=True,
    gm_scale=10.0,
    dev_scale=100.0,
    doc="igd on minimax's fine-tuned DiT (the same fine-tune minimax samples), at sample_mp_minimax.sh's scales.",
)
