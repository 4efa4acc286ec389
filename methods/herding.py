"""herding: greedy selection whose running feature mean tracks the class mean (Welling, 2009).

Features are the teacher's pooled penultimate features, L2-normalised, as in the coreset baselines of the
dataset-distillation literature.

Defaults (pinned by tests/test_contract.py):
    normalize = True      L2-normalised features (above)
"""

from __future__ import annotations

import torch

from .base import FeatureSelection
from .registry import register_method


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


@register_method
class Herding(FeatureSelection):
    name = "herding"
    order = staticmethod(herding_order)
