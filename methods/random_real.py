"""random-real: IPC real training images of the class, drawn uniformly without replacement.

The reference point of every score: DD-Ranking compares a method against a same-IPC random real subset.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import register_method
from .base import ClassTask, Method, real_as_float


@dataclass(frozen=True)
class RandomRealConfig:
    pass


@register_method
class RandomReal(Method):
    name = "random-real"
    Config = RandomRealConfig

    def distill_class(self, task: ClassTask) -> torch.Tensor:
        if len(task.real) < task.ipc:
            raise ValueError(f"class {task.key} has {len(task.real)} real images, fewer than IPC {task.ipc}")
        pick = torch.randperm(len(task.real), generator=task.generator())[: task.ipc]
        return real_as_float(task.real[pick])
