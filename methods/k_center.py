"""k-center: greedy farthest-point selection on teacher features (Sener & Savarese, 2018).

The first centre is the point nearest the class mean, so the selection needs no random start and is the
same for the same features.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import register_method
from .base import ClassTask, Method, real_as_float, teacher_features


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


@dataclass(frozen=True)
class KCenterConfig:
    normalize: bool = True


@register_method
class KCenter(Method):
    name = "k-center"
    Config = KCenterConfig
    uses_teacher = True

    def distill_class(self, task: ClassTask) -> torch.Tensor:
        images = real_as_float(task.real)
        feats = teacher_features(self.teacher, images.to(self.device)).cpu()
        feats = F.normalize(feats, dim=1) if self.config.normalize else feats
        return images[k_center_order(feats, task.ipc)]
