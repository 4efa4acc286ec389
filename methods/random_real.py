"""random-real: IPC real training images of the class, drawn uniformly without replacement.

The reference point of every score: DD-Ranking compares a method against a same-IPC random real subset.

Defaults (pinned by tests/test_contract.py): none; the draw is the class's shard seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import ClassTask, Method, Work, draw_real, real_as_float
from .registry import register_method


@dataclass(frozen=True)
class RandomRealConfig:
    pass


@register_method
class RandomReal(Method):
    name = "random-real"
    Config = RandomRealConfig
    random_baseline = True

    @classmethod
    def work(cls, config, ipc, real_per_class):
        return Work()

    def distill_class(self, task: ClassTask) -> torch.Tensor:
        return real_as_float(task.real[draw_real(task, task.generator())])
