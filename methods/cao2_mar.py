"""cao2-mar: CaO2 extended to MAR (seed 000 §3.5, Eq. 6; §4.6 "Integration with MAR", App. 6, Tab. 5): a pool of
2 × IPC MAR samples, CaO2's objective-guided selection (OSS) on them with the suite's teacher, then the
condition-aware latent optimisation on MAR (`methods.cao2.optimise_mar_latents`: random token masks of ratio at most
0.25 in place of noise, the zero label embedding in place of φ, 100 Adam steps at lr 1e-4 with the L∞ term), decoded
once at the end. Sampling is `mar`'s (methods/mar.py), with per-image generators from the task's seed.

A file of its own beside cao2.py, not a second config in it: one module, one method and one pinned `Defaults` block
(tests/test_contract.py reads the module's docstring), and this method samples another kind of backbone
(`backbone_kind = "mar"`); its stages are cao2.py's functions (`selector_scores`, `oss_select`,
`optimise_mar_latents`), so a reader of cao2.py finds the MAR path there.

Selection: "from a 2 × IPC image pool, we select the most confident correct samples" (§4.6), at every IPC (Tab. 5
runs 10 and 50): the teacher's top-1 must be the class, ranked by p(class | x), a shortfall filled at random from
the rest (§3.2, as cao2.py). The authors' MAR script keeps instead the IPC samples whose teacher softmax changes least
between the last two AR steps (mar_imagenet1k.py l.101–130); the paper's text is followed (docs/decisions.md).

Defaults (pinned by tests/test_contract.py):
    num_iter = 32             §4.6 / Tab. 5: MAR-Base with 32 autoregressive steps
    steps = 100               §4.6: 100 denoising steps per autoregressive step
    cfg = 2.9                 CaO2 mar/run_imagenet1k_ipc10.sh l.13 (--cfg 2.9; the paper states none)
    temperature = 1.0         the same line
    cfg_schedule = "linear"   the same line
    oss = True                §4.6: select from the pool
    pool_factor = 2           §4.6: a 2 × IPC pool (mar_imagenet1k.py l.98: batch_size = ipc * 2)
    clo = True                §3.5, Eq. 6
    iterations = 100          §4.6: 100 steps (mar_imagenet1k.py l.139: range(100))
    lr = 0.0001               §4.6: learning rate 0.0001 (the script's Adam has 6e-4, l.138)
    linf_weight = 10.0        §4.1: λ = 10 (mar_imagenet1k.py l.132: lambda_linf = 10)
    max_mask_ratio = 0.25     §4.6: 0.25 max masking ratio (mar_imagenet1k.py l.133)
    condition = "zero"        §3.5, App. 6: the zero label embedding
    batch_size = 50           memory only: images sampled, decoded and scored at once
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import ClassTask, Method, Work, fit_to_task
from .cao2 import MAR_CONDITIONS, optimise_mar_latents, oss_select, selector_scores
from .mar import CFG_SCHEDULES, decode_latents, image_generators, mar_latents, mar_sampling_work
from .registry import register_method


@dataclass(frozen=True)
class CaO2MARConfig:
    num_iter: int = 32
    steps: int = 100
    cfg: float = 2.9
    temperature: float = 1.0
    cfg_schedule: str = "linear"
    oss: bool = True
    pool_factor: int = 2
    clo: bool = True
    iterations: int = 100
    lr: float = 1e-4
    linf_weight: float = 10.0
    max_mask_ratio: float = 0.25
    condition: str = "zero"
    batch_size: int = 50

    def __post_init__(self):
        for name in ("num_iter", "steps", "batch_size", "pool_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.iterations < 0:
            raise ValueError(f"iterations: must be ≥ 0, got {self.iterations}")
        if self.lr <= 0:
            raise ValueError(f"lr: must be positive, got {self.lr}")
        if not 0 < self.max_mask_ratio <= 1:
            raise ValueError(f"max_mask_ratio: must be in (0, 1], got {self.max_mask_ratio}")
        if not self.cfg >= 0:  # as every guidance scale (harness/config/checks.py): 0 unconditional, 1 plain
            raise ValueError(f"cfg: a guidance scale must be ≥ 0, got {self.cfg}")
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"cfg_schedule: must be one of {', '.join(CFG_SCHEDULES)}, got {self.cfg_schedule!r}")
        if self.condition not in MAR_CONDITIONS:
            raise ValueError(f"condition: must be one of {', '.join(MAR_CONDITIONS)}, got {self.condition!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature: must be positive, got {self.temperature}")


@register_method
class CaO2MAR(Method):
    name = "cao2-mar"
    Config = CaO2MARConfig
    needs = frozenset({"backbone", "teacher"})
    backbone_kind = "mar"
    # CLO optimises one image at a time, as the reference does (optimise_mar_latents).
    stage_batches = {"sample": "batch_size", "decode": "batch_size", "select": "batch_size", "clo": 1}
    rehearsal_settings = {"num_iter": 2, "steps": 1, "pool_factor": 1, "iterations": 1}
    # Around the paper's values: guidance 2.9 (the script), m = 2 (§4.6), lr 1e-4, λ = 10, R = 0.25.
    search_space = {
        "cfg": ("float", 1.0, 6.0),
        "pool_factor": ("int", 1, 4),
        "lr": ("log", 1e-5, 1e-2),
        "linf_weight": ("log", 1.0, 100.0),
        "max_mask_ratio": ("float", 0.05, 0.5),
    }

    @classmethod
    def work(cls, config, ipc, real_per_class):
        pool = ipc * config.pool_factor if config.oss else ipc
        clo = config.clo and config.iterations
        # A CLO iteration is one transformer pass and the head on the masked tokens, forward and backward: priced as
        # three AR steps (an upper bound: an AR step's unit also holds its head's denoising steps).
        return Work(
            backbone=mar_sampling_work(config, pool) + (ipc * config.iterations * 3 if clo else 0),
            vae=pool + (ipc if clo else 0),
            teacher=pool if config.oss else 0,
        )

    def distill_class(self, task: ClassTask) -> torch.Tensor:
        bb, cfg = self.backbone, self.config
        # Every draw up front, in a fixed order, whatever the switches say: the pool's generators (the first IPC
        # without OSS), the fill order, then one CLO generator per kept image.
        gen = task.generator()
        bank = task.ipc * cfg.pool_factor
        pool_generators = image_generators(gen, bank)[: bank if cfg.oss else task.ipc]
        fill_order = torch.randperm(bank, generator=gen)
        clo_generators = image_generators(gen, task.ipc)

        latents = mar_latents(self, task.condition, pool_generators, cfg)
        images = None
        if cfg.oss:
            images = decode_latents(self, latents, cfg.batch_size)
            with self.stage("select", record=False):
                p, correct = selector_scores(self.teacher, fit_to_task(images, task).to(self.device), task.label)
            keep = oss_select(p, correct, task.ipc, True, fill_order[fill_order < len(latents)])
            latents, images = latents[keep.to(latents.device)], images[keep]
        if cfg.clo and cfg.iterations:
            with self.stage("clo", record=False):
                latents = optimise_mar_latents(
                    bb,
                    latents,
                    task.condition,
                    clo_generators,
                    iterations=cfg.iterations,
                    lr=cfg.lr,
                    linf_weight=cfg.linf_weight,
                    max_mask_ratio=cfg.max_mask_ratio,
                    condition=cfg.condition,
                )
            images = None
        if images is None:
            images = decode_latents(self, latents, cfg.batch_size)
        return fit_to_task(images, task)
