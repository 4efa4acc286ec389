"""mar: plain MAR sampling (Li et al. 2024), the "MAR" row of CaO2's Table 5: IPC images per class from the suite's MAR
backbone (`backbone_kind = "mar"`), one per-image generator each (its generation order and noise), drawn from the
task's seed, so an image does not depend on the batch it is sampled in.

The paper (seed 000 §4.6 "Integration with MAR", Tab. 5; the issue's §4.3) states MAR-Base with 32 autoregressive
steps of 100 denoising steps and no guidance scale; the authors' MAR script runs `--cfg 2.9 --cfg_schedule linear
--temperature 1.0` (hatchetProject/CaO2 mar/run_imagenet1k_ipc10.sh l.13), which is also MAR-B's evaluation setting in
LTH14/mar's README: those are the defaults here.

Defaults (pinned by tests/test_contract.py):
    num_iter = 32             §4.6 / Tab. 5: MAR-Base with 32 autoregressive steps
    steps = 100               §4.6: 100 denoising steps per autoregressive step
    cfg = 2.9                 CaO2 mar/run_imagenet1k_ipc10.sh l.13 (--cfg 2.9; the paper states none); LTH14/mar MAR-B
    temperature = 1.0         the same line (--temperature 1.0)
    cfg_schedule = "linear"   the same line (--cfg_schedule linear)
    batch_size = 50           memory only: images sampled at once
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import ClassTask, Method, Work, evaluations_per_step, fit_to_task
from .registry import register_method

CFG_SCHEDULES = ("linear", "constant")


@dataclass(frozen=True)
class MARSamplingConfig:
    num_iter: int = 32
    steps: int = 100
    cfg: float = 2.9
    temperature: float = 1.0
    cfg_schedule: str = "linear"
    batch_size: int = 50

    def __post_init__(self):
        for name in ("num_iter", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not self.cfg >= 0:  # as every guidance scale (harness/config/checks.py): 0 unconditional, 1 plain
            raise ValueError(f"cfg: a guidance scale must be ≥ 0, got {self.cfg}")
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"cfg_schedule: must be one of {', '.join(CFG_SCHEDULES)}, got {self.cfg_schedule!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature: must be positive, got {self.temperature}")


def image_generators(gen: torch.Generator, n: int) -> list[torch.Generator]:
    """`n` per-image generators seeded from `gen`'s next draws (one 62-bit seed each)."""
    return [torch.Generator().manual_seed(s) for s in torch.randint(0, 2**62, (n,), generator=gen).tolist()]


@torch.no_grad()
def mar_latents(method: Method, condition: int, generators, config) -> torch.Tensor:
    """MAR latents, one per generator, sampled `config.batch_size` at a time in the method's "sample" stage."""
    bb, step, out = method.backbone, config.batch_size, []
    for i in range(0, len(generators), step):
        with method.stage("sample", record=False):
            out.append(
                bb.sample(
                    condition,
                    generators[i : i + step],
                    num_iter=config.num_iter,
                    steps=config.steps,
                    cfg=config.cfg,
                    temperature=config.temperature,
                    cfg_schedule=config.cfg_schedule,
                )
            )
    return torch.cat(out)


@torch.no_grad()
def decode_latents(method: Method, latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = []
    for i in range(0, len(latents), batch_size):
        with method.stage("decode", record=False):
            out.append(method.backbone.decode(latents[i : i + batch_size]).cpu())
    return torch.cat(out)


def mar_sampling_work(config, images: int) -> float:
    """Backbone work of sampling `images` images, in the MAR generator's unit (`flops()`: one AR step of one
    image): AR steps × images, doubled by guidance (the conditional and the fake-class pass)."""
    return images * config.num_iter * evaluations_per_step(config.cfg)


@register_method
class MARSampling(Method):
    name = "mar"
    Config = MARSamplingConfig
    needs = frozenset({"backbone"})
    backbone_kind = "mar"
    stage_batches = {"sample": "batch_size", "decode": "batch_size"}
    # Two AR steps (one reveals every token at once, leaving the encoder only the buffer), one denoising step.
    rehearsal_settings = {"num_iter": 2, "steps": 1}
    # Around the scripts' guidance 2.9 and temperature 1.0 (MAR's README sweeps both).
    search_space = {"cfg": ("float", 1.0, 6.0), "temperature": ("float", 0.8, 1.2)}

    @classmethod
    def work(cls, config, ipc, real_per_class):
        return Work(backbone=mar_sampling_work(config, ipc), vae=ipc)

    def distill_class(self, task: ClassTask) -> torch.Tensor:
        generators = image_generators(task.generator(), task.ipc)
        latents = mar_latents(self, task.condition, generators, self.config)
        return fit_to_task(decode_latents(self, latents, self.config.batch_size), task)
