"""ims3: IMS3 (seed 003) — Inversion-Matching fine-tuning, then Selective Subgroup Sampling (S3).

IM (§4.1, Eqs. 4-7; the equations were lost from the text, docs/decisions.md and DESIGN.md §6 give the reading):
DiffFit fine-tuning on L_diff + α · (1 − cos(x_t, x̃_t)), where x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε is the forward-noised
latent and x̃_t the deterministic DDIM inversion of x_0 to the same t through the model being trained, with the
gradient through every model call of the inversion.

S3 (§4.2, Eqs. 8-11): each class samples G candidate subgroups of IPC images; a frozen encoder (the suite's
teacher, ResNet-18 on the ImageNet suites as the paper) embeds them, L2-normalised, and each subgroup's centroid
μ_c^g and the class's real centroid r_c are formed. One subgroup per class is chosen jointly, minimising
    Σ_c [ −a · cos(μ_c^{g_c}, r_c) + b · Σ_{c' ≠ c} cos(μ_c^{g_c}, μ_{c'}^{g_{c'}}) ]
by greedy search (`greedy_subgroups`). The choice needs every class's candidates: the harness runs it once they
are all made (`select_across_classes`).

Defaults (pinned by tests/test_contract.py): the paper's (§5.1) on Minimax's code, whose schedule it keeps
    cfg_scale = 4.0                 sample.py l.99 (`--cfg-scale`)
    steps = 50                      sample.py l.100 (`--num-sampling-steps`)
    batch_size = 50                 memory only: images sampled at once
    sampler = "ddpm"                sample.py: DiT's `p_sample_loop` over 50 respaced steps
    fine_tune = True                fine-tune before sampling (False: the suite's backbone as it is)
    epochs = 8                      §5.1: 8 epochs (as Minimax's run.sh)
    fine_tune_batch_size = 8        §5.1: mini-batch 8
    lr = 0.001                      train_dit.py l.189: AdamW, lr 1e-3, weight decay 0
    ema_decay = 0.9999              train_dit.py l.36 `update_ema`; samples come from the EMA (download.py `find_model`)
    class_dropout = 0.1             models.py l.225: DiT's class_dropout_prob in training
    checkpoint_every = 500          train_dit.py l.353 `--ckpt-every`
    max_steps = None                every epoch; a cap for budgets smaller than an epoch
    fine_tune_seed = 0              train_dit.py l.349 `--global-seed`
    im_weight = 0.002               §5.1: "the balancing coefficient in Eq. 7 is set to 0.002"
    inversion_steps = 50            the DDIM grid of the sampler's 50 steps (the paper gives none)
    groups = 5                      DESIGN.md §5 (G; the paper selects it per dataset)
    real_weight = 0.4               DESIGN.md §5 (a, the weight on proximity to the real centroid)
    separation_weight = 0.9         DESIGN.md §5 (b, the weight on separation from other classes)
    centroid_real = None            every training image of the class (Fig. 4: more real images, better)
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.models.generators.sampling import sample

from .base import (
    TEACHER_BATCH,
    ClassTask,
    FineTuneObjective,
    Work,
    evaluations_per_step,
    fit_to_task,
    real_as_float,
    teacher_features,
)
from .diffusion import Diffusion, DiffusionConfig
from .fine_tuning import FineTuneSettings, ddim_inversion, diffusion_loss
from .registry import register_method, register_variant


@dataclass(frozen=True)
class IMS3Config(FineTuneSettings, DiffusionConfig):
    sampler: str = "ddpm"
    im_weight: float = 0.002
    inversion_steps: int = 50
    groups: int = 5
    real_weight: float = 0.4
    separation_weight: float = 0.9
    centroid_real: int | None = None

    def __post_init__(self):
        DiffusionConfig.__post_init__(self)
        self.check()
        if self.groups < 1:
            raise ValueError(f"groups: must be at least 1, got {self.groups}")
        if self.inversion_steps < 1:
            raise ValueError(f"inversion_steps: must be at least 1, got {self.inversion_steps}")
        if self.centroid_real is not None and self.centroid_real < 1:
            raise ValueError(f"centroid_real: must be at least 1 or null, got {self.centroid_real}")


def cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − cos(a, b) per item, each flattened."""
    return 1 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


class InversionMatching(FineTuneObjective):
    def __init__(self, config: IMS3Config):
        self.config = config

    def loss(self, backbone, x0, labels, classes, generator):
        t = self.draw_timesteps(len(x0), backbone.num_train_timesteps, generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        per_image, _, x_t = diffusion_loss(backbone, x0, labels, t, noise)
        diff = per_image.mean()
        if self.config.im_weight == 0:
            return diff, {"diffusion": float(diff.detach())}
        inverted = ddim_inversion(backbone, x0, labels, t, self.config.inversion_steps)
        im = cosine_loss(x_t, inverted).mean()
        return diff + self.config.im_weight * im, {
            "diffusion": float(diff.detach()),
            "inversion_matching": float(im.detach()),
        }


def s3_objective(choice: tuple[int, ...], centroids: torch.Tensor, real: torch.Tensor, a: float, b: float) -> float:
    """Eq. 10 for one subgroup per class: `centroids` (C, G, D) and `real` (C, D), both L2-normalised."""
    chosen = centroids[torch.arange(len(choice)), torch.tensor(choice)]
    sims = chosen @ chosen.T
    return float(-a * (chosen * real).sum(1).sum() + b * (sims.sum() - sims.diagonal().sum()))


def greedy_subgroups(centroids: torch.Tensor, real: torch.Tensor, a: float, b: float) -> list[int]:
    """Eq. 11 by greedy search: class by class, the subgroup that best fits the real centroid and the subgroups
    already chosen; then sweeps in which each class re-chooses against all the others, until none changes.
    Each move lowers Eq. 10, so it ends, at a choice no single class can improve."""
    n_classes, n_groups, _ = centroids.shape
    proximity = -a * torch.einsum("cgd,cd->cg", centroids, real)

    def cost(c: int, g: int, others: dict[int, int]) -> float:
        # Class c's own term and its share of the pair terms, which count each pair from both sides.
        return float(
            proximity[c, g] + 2 * b * sum(float(centroids[c, g] @ centroids[o, h]) for o, h in others.items() if o != c)
        )

    choice: dict[int, int] = {}
    for c in range(n_classes):
        choice[c] = min(range(n_groups), key=lambda g: cost(c, g, choice))
    changed = True
    while changed:
        changed = False
        for c in range(n_classes):
            best = min(range(n_groups), key=lambda g: (cost(c, g, choice), g != choice[c]))
            if best != choice[c]:
                choice[c], changed = best, True
    return [choice[c] for c in range(n_classes)]


def brute_force_subgroups(centroids: torch.Tensor, real: torch.Tensor, a: float, b: float) -> list[int]:
    """Eq. 11 exactly, over all G^C choices: for tests on tiny cases."""
    n_classes, n_groups, _ = centroids.shape
    return list(
        min(
            itertools.product(range(n_groups), repeat=n_classes), key=lambda ch: s3_objective(ch, centroids, real, a, b)
        )
    )


@register_method
class IMS3(Diffusion):
    name = "ims3"
    # On the harness's pixel DiT: sampled like `diffusion` there (DDIM, 25 steps, guidance 2.0).
    generator_defaults = {"pixel-dit": {"cfg_scale": 2.0, "steps": 25, "sampler": "ddim"}}
    Config = IMS3Config
    # Every variant asks for the teacher and the real images, S3's or not: what a set needs enters its identity, and
    # the variants must share their seeds (`paired_switches`) for IM-only to be IMS3's first subgroup.
    needs = frozenset({"backbone", "teacher", "real_images"})
    paired_switches = ("fine_tune", "groups")
    stage_batches = {**Diffusion.stage_batches, "fine-tune": "fine_tune_batch_size", "s3": TEACHER_BATCH}
    # The inversion's length is compute, not memory: each of its model calls is checkpointed, so a step's peak does
    # not grow with it (tests/test_ims3_memory.py). The rehearsal measures the memory slope over batches at this
    # length and the full length at the first batch only (a full-path step of DiT-XL/2 takes minutes on a CPU).
    rehearsal_slope_settings = {"inversion_steps": 1}

    @classmethod
    def rehearsal_config(cls, config, batch):
        # Two subgroups are the fewest that S3 chooses between; a variant with one keeps its one.
        return dataclasses.replace(super().rehearsal_config(config, batch), groups=min(config.groups, 2))

    @classmethod
    def real_images_needed(cls, config, ipc):
        return 1

    @classmethod
    def fine_tuning(cls, config):
        return config.fine_tuning(
            {"loss": "inversion-matching", "im_weight": config.im_weight, "inversion_steps": config.inversion_steps}
        )

    @classmethod
    def fine_tune_objective(cls, config):
        return InversionMatching(config)

    @classmethod
    def selects_across_classes(cls, config):
        return config.groups > 1

    @classmethod
    def candidates_per_class(cls, config, ipc):
        return config.groups * ipc

    @classmethod
    def work(cls, config, ipc, real_per_class):
        n = config.groups * ipc
        teacher = n + (real_per_class if config.centroid_real is None else min(config.centroid_real, real_per_class))
        return Work(
            backbone=n * config.steps * evaluations_per_step(config.cfg_scale),
            vae=n,
            teacher=teacher if config.groups > 1 else 0,
        )

    @torch.no_grad()
    def distill_class(self, task: ClassTask) -> torch.Tensor:
        """The class's G candidate subgroups, one after another; each subgroup's noise is drawn after the one
        before, so subgroup 0 is what `groups: 1` draws."""
        bb, cfg = self.backbone, self.config
        gen = task.generator()
        out = []
        for _ in range(cfg.groups):
            noise = torch.randn((task.ipc, *bb.latent_shape), generator=gen)
            seeds = torch.randint(0, 2**62, (task.ipc,), generator=gen).tolist() if cfg.sampler == "ddpm" else None
            for i in range(0, task.ipc, cfg.batch_size):
                with self.stage("sample", record=False):
                    z = sample(
                        bb,
                        noise[i : i + cfg.batch_size].to(self.device),
                        task.condition,
                        cfg.steps,
                        cfg.cfg_scale,
                        cfg.sampler,
                        seeds[i : i + cfg.batch_size] if seeds else None,
                    )
                with self.stage("decode", record=False):
                    out.append(bb.decode(z).cpu())
        return fit_to_task(torch.cat(out), task)

    @torch.no_grad()
    def select_across_classes(self, tasks, candidates):
        cfg = self.config

        def embed(images: torch.Tensor) -> torch.Tensor:
            return F.normalize(teacher_features(self.teacher, images.to(self.device)).float().cpu(), dim=1)

        with self.stage("s3"):
            centroids, real = [], []
            for task, images in zip(tasks, candidates):
                feats = embed(images).view(cfg.groups, task.ipc, -1)
                centroids.append(F.normalize(feats.mean(1), dim=1))
                pool = (
                    task.real
                    if cfg.centroid_real is None
                    else task.real[torch.randperm(len(task.real), generator=task.generator())[: cfg.centroid_real]]
                )
                real.append(F.normalize(embed(real_as_float(pool)).mean(0), dim=0))
            choice = greedy_subgroups(torch.stack(centroids), torch.stack(real), cfg.real_weight, cfg.separation_weight)
        return [torch.arange(g * task.ipc, (g + 1) * task.ipc) for g, task in zip(choice, tasks)]


register_variant(
    "ims3-im-only",
    IMS3,
    groups=1,
    doc="IMS3's inversion-matching fine-tune, sampled plainly (the paper's Table 4 '+ IM').",
)
register_variant(
    "ims3-s3-only",
    IMS3,
    fine_tune=False,
    doc="IMS3's selective subgroup sampling from the base model (the paper's Table 4 '+ S3').",
)
