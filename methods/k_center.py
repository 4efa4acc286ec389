"""k-center: greedy farthest-point selection on teacher features (Sener & Savarese, 2018).

The first centre is the point nearest the class mean, so the selection needs no random start and is the
same for the same features.

Defaults (pinned by tests/test_contract.py):
    normalize = True      L2-normalised features, as herding
"""

from __future__ import annotations

import torch

from .base import FeatureSelection
from .registry import register_method


def k_center_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of `k` greedy k-center points, in the order chosen."""
    first = int((features - features.mean(0)).norm(dim=1).argmin())
    chosen = [first]
    nearest = (features - features[first]).norm(dim=1)
    for _ in range(k - 1):
        j = int(nearest.argmax())
        chosen.append(j)
        nearest = torch.minimum(nearest, (features - features[j]).norm(dim=1))
    return torch.tensor(chosen, dtype=torch.long)


@register_method
class KCenter(FeatureSelection):
    name = "k-center"
    order = staticmethod(k_center_order)
