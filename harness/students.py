"""Student architectures. Every student comes from `timm.create_model`; the field's own ConvNet-D and
ResNetAP-10 are registered into timm's registry here so they are created the same way.

`create_student` is the one place where grey images and small inputs are adapted.
"""
from __future__ import annotations

import timm
import torch
from torch import nn
from timm.models import register_model


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instancenorm":  # the field's ConvNet default: GroupNorm with one group per channel
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class ConvNet(nn.Module):
    """ConvNet-D of the dataset-distillation literature: D × [conv3x3 → norm → ReLU → avgpool2]."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, img_size: int = 32, depth: int = 3,
                 width: int = 128, norm: str = "instancenorm", **_):
        super().__init__()
        layers, c, size = [], in_chans, img_size
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), _norm(norm, width), nn.ReLU(inplace=True),
                       nn.AvgPool2d(2, 2)]
            c, size = width, size // 2
        self.features = nn.Sequential(*layers)
        self.num_features = width * size * size
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def convnet3(pretrained: bool = False, **kwargs) -> ConvNet:
    return ConvNet(depth=kwargs.pop("depth", 3), **kwargs)


@register_model
def convnet4(pretrained: bool = False, **kwargs) -> ConvNet:
    return ConvNet(depth=kwargs.pop("depth", 4), **kwargs)


@register_model
def convnet6(pretrained: bool = False, **kwargs) -> ConvNet:
    return ConvNet(depth=kwargs.pop("depth", 6), **kwargs)


# Models that take their input size as an argument (the rest adapt through global pooling).
_SIZED = ("convnet", "vit_", "swin_", "deit_")


def is_student(name: str) -> bool:
    return name in timm.list_models()


def create_student(name: str, num_classes: int, in_chans: int, img_size: int, **kwargs) -> nn.Module:
    """Build `name` from timm's registry for `in_chans`-channel `img_size` inputs."""
    if any(name.startswith(p) for p in _SIZED):
        kwargs.setdefault("img_size", img_size)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
