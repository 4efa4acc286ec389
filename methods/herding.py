"""herding: greedy selection whose running feature mean tracks the class mean (Welling, 2009).

Features are the teacher's pooled penultimate features, L2-normalised, as in the coreset baselines of the
dataset-distillation literature.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import register_method
from .base import ClassTask, Method, real_as_float, teacher_features


def herding_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` points chosen by herding, in the order chosen."""
    mu = features.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(features), dtype=torch.bool)
    for i in range(k):
        # The next point makes the mean of the chosen set closest to the class mean.
        cand = (running.unsqueeze(0) + features) / (i + 1)
        dist = (cand - mu).norm(dim=1)
        dist[~available] = float("inf")
        j = int(dist.argmin())
        chosen.append(j)
        available[j] = False
        running += features[j]
    return torch.tensor(chosen, dtype=torch.long)


@dataclass(frozen=True)
class HerdingConfig:
    normalize: bool = True


@register_method
class Herding(Method):
    name = "herding"
    Config = HerdingConfig
    uses_teacher = True

    def distill_class(self, task: ClassTask) -> torch.Tensor:
        images = real_as_float(task.real)
        feats = teacher_features(self.teacher, images.to(self.device)).cpu()
        feats = F.normalize(feats, dim=1) if self.config.normalize else feats
        return images[herding_order(feats, task.ipc)]
