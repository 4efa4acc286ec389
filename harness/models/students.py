"""Student architectures, every one created by `timm.create_model`: the field's own ConvNet-D, ResNetAP-10 and
instance-norm ResNet-18 are registered into timm's registry here so they are created the same way.

`create_student` is the one place where grey images and small inputs are adapted.
"""

from __future__ import annotations

import math

import timm
import torch
from timm.models import register_model
from torch import nn

# What timm's create_model hands every model entry point besides the model's own options.
TIMM_FACTORY_ARGS = frozenset({"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"})


def _reject_unknown_options(model: str, factory_args: dict) -> None:
    """The field's models take timm's factory arguments and ignore them; any other option is a misspelt one
    (`widht: 8` would otherwise silently build the default width)."""
    unknown = sorted(set(factory_args) - TIMM_FACTORY_ARGS)
    if unknown:
        raise TypeError(f"{model} got unexpected options: {', '.join(unknown)}")


def _pooled(x: torch.Tensor) -> torch.Tensor:
    """2×2 windows averaged as PyTorch's CPU kernel does, bit for bit: ((a + b) + c) + d in the input's opmath type
    (fp32 for bf16 / fp16), + 0 (the kernel's sum starts at +0, so a window of −0 gives +0), then ÷ 4; an odd last
    row or column dropped (floor mode)."""
    v = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    total = v[..., 0::2, 0::2].to(torch.promote_types(x.dtype, torch.float32)) + v[..., 0::2, 1::2]
    total += v[..., 1::2, 0::2]
    total += v[..., 1::2, 1::2]
    return total.add_(0.0).div_(4).to(x.dtype)


def _spread(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The gradient of `_pooled` for an input of `shape`: each window's grad ÷ 4 (+ 0, as the kernel adds it to a
    zeroed tensor) in all four of its pixels, zero in a dropped row or column; a bf16 tensor is divided in fp32
    and rounded, as there. Built from `grad`, so that it is batched where the gradient is (vmap, jacrev); in the
    default memory format (an input's format cannot be asked under vmap, and a gradient may take any)."""
    h, w = shape[-2] // 2 * 2, shape[-1] // 2 * 2
    quarter = (grad / 4).add_(0.0)
    out = grad.new_empty(shape) if (h, w) == shape[-2:] else grad.new_zeros(shape)
    out[..., 0:h:2, 0:w:2] = quarter
    out[..., 0:h:2, 1:w:2] = quarter
    out[..., 1:h:2, :w] = out[..., 0:h:2, :w]
    return out


class _Pool2x2(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return _pooled(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        return _Spread2x2.apply(grad, ctx.saved_tensors[0])

    @staticmethod
    def jvp(ctx, tangent):  # linear: the derivative is the pooling itself, as PyTorch's forward-mode rule has it
        return _pooled(tangent)


class _Spread2x2(torch.autograd.Function):
    """Its own Function so that a second derivative (IGD's influence guidance differentiates a gradient) is the
    pooling again, as PyTorch's avg_pool2d_backward has it, and so bitwise the same too."""

    generate_vmap_rule = True

    # The input rides along as a tensor, for its shape only: a torch.Size argument is taken apart as a pytree by
    # forward-mode transforms (torch.func.hessian) and fails there.
    @staticmethod
    def forward(grad, like):
        return _spread(grad, like.shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.shape = inputs[1].shape

    @staticmethod
    def backward(ctx, grad):
        return _Pool2x2.apply(grad), None

    @staticmethod
    def jvp(ctx, tangent, *_):
        return _spread(tangent, ctx.shape)


class AvgPool2x2(nn.AvgPool2d):
    """`nn.AvgPool2d(2, 2)`, the same numbers bit for bit (forward, gradient, second derivative and forward-mode
    derivative; tested), in a quarter (fp32) to two fifths (bf16) of the time on a CPU: PyTorch's CPU kernels for
    it loop per window (forward) and zero-fill then scatter (backward), ~25 % of a ConvNet-3 training step at
    28 px in fp32 and ~40 % in bf16 (docs/performance.md). Other devices, and inputs PyTorch's kernel would
    refuse or treat specially (not floating point, not 3-D or 4-D, a side under 2, settings changed after
    construction), take PyTorch's kernel."""

    def __init__(self):
        super().__init__(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and x.is_floating_point()
            and x.dim() in (3, 4)
            and min(x.shape[-2:]) >= 2
            and (self.kernel_size, self.stride, self.padding, self.ceil_mode) == (2, 2, 0, False)
            and self.divisor_override is None
        ):
            return _Pool2x2.apply(x)
        return super().forward(x)


def with_torchs_pooling(model: nn.Module) -> nn.Module:
    """`model` with PyTorch's own nn.AvgPool2d(2, 2) wherever AvgPool2x2 stands (in place; returned): the module
    as the field's scripts build it, for a like-for-like comparison of loops (perf/eval_throughput.py) and for
    the tests that pin AvgPool2x2 to it."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, AvgPool2x2):
                setattr(module, name, nn.AvgPool2d(2, 2))
    return model


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

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int = 32,
        depth: int = 3,
        width: int = 128,
        norm: str = "instancenorm",
        **factory_args,
    ):
        super().__init__()
        _reject_unknown_options("ConvNet", factory_args)
        layers, c, size = [], in_chans, img_size
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), _norm(norm, width), nn.ReLU(inplace=True)]
            if size >= 2:  # a deep ConvNet on small images stops pooling at 1×1 rather than failing
                layers.append(AvgPool2x2())
                size //= 2
            c = width
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


def _avg_pool(size: int) -> nn.Module:
    return AvgPool2x2() if size == 2 else nn.AvgPool2d(size) if size > 1 else nn.Identity()


class _APBlock(nn.Module):
    """ResNet basic block whose downsampling is average pooling after a stride-1 conv (IDC's ResNetAP)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none")
        self.norm1 = _norm(norm, c_out)
        self.pool = _avg_pool(stride)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=norm == "none")
        self.norm2 = _norm(norm, c_out)
        self.shortcut = nn.Identity()
        if stride > 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, bias=norm == "none"),
                _avg_pool(stride),
                _norm(norm, c_out),
            )

    def forward(self, x):
        out = self.pool(torch.relu(self.norm1(self.conv1(x))))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNetAP(nn.Module):
    """ResNetAP-D of IDC / Minimax, the default student of Minimax's training recipe. The stem follows the input
    size as in the reference: ≤64 px no pooling, ≤128 px a 2×2 average pool, larger a 7×7 conv + 4×4 pool."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int = 224,
        blocks=(1, 1, 1, 1),
        width: int = 64,
        norm: str = "instancenorm",
        **factory_args,
    ):
        super().__init__()
        _reject_unknown_options("ResNetAP", factory_args)
        kernel, pool = (3, 1) if img_size <= 64 else (3, 2) if img_size <= 128 else (7, 4)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, kernel, padding=kernel // 2, bias=norm == "none"),
            _norm(norm, width),
            nn.ReLU(inplace=True),
            _avg_pool(pool),
        )
        stages, c = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            for j in range(n):
                stages.append(_APBlock(c, c_out, 2 if (i > 0 and j == 0) else 1, norm))
                c = c_out
        self.stages = nn.Sequential(*stages)
        self.num_features, self.num_classes = c, num_classes
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():  # the reference's He init of convs, unit norms
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))

    def forward_features(self, x):
        return self.stages(self.stem(x))

    def forward_head(self, x, pre_logits: bool = False):
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model
def resnetap10(pretrained: bool = False, **kwargs) -> ResNetAP:
    return ResNetAP(blocks=(1, 1, 1, 1), **kwargs)


class ChannelInstanceNorm(nn.GroupNorm):
    """Instance norm as the field writes it, `nn.GroupNorm(C, C)`: one group per channel, affine (Minimax
    train_models/resnet.py:17, the same in CaO2), built from the channel count as timm's `norm_layer` is."""

    def __init__(self, num_channels: int, **kwargs):
        super().__init__(num_channels, num_channels, **kwargs)


@register_model
def resnet18_instancenorm(pretrained: bool = False, **kwargs) -> timm.models.ResNet:
    """The ResNet-18 of Minimax's training recipe (Minimax `train.py -n resnet --depth 18`, CaO2 run.sh:35-36
    `eval.py -n resnet --depth 18 --norm_type instance`): torchvision's layout (7×7/2 stem + 3×3/2 max-pool,
    2-2-2-2 basic blocks, 1×1 strided projection shortcuts, global average pool) with instance norm instead of
    batch norm, and every norm starting at weight 1 (train_models/resnet.py:190-192; timm would zero the last
    norm of each block)."""
    return timm.models.resnet.resnet18(
        pretrained, **{"norm_layer": ChannelInstanceNorm, "zero_init_last": False, **kwargs}
    )


def is_student(name: str) -> bool:
    return name in timm.list_models()


def create_student(name: str, num_classes: int, in_chans: int, img_size: int, **kwargs) -> nn.Module:
    """Build `name` from timm's registry for `in_chans`-channel `img_size` inputs.

    The one place where inputs are adapted: models that take their size get it; ViTs on ≤64 px images use
    4-pixel patches; timm ResNets on ≤64 px images get the field's small-input stem (3×3 conv, stride 1, no
    max-pool), as CIFAR-style ResNet-18 has it. Grey input is a one-channel first conv (`in_chans`).
    """
    if name.startswith(("convnet", "resnetap", "vit_", "swin_", "deit_")):
        kwargs.setdefault("img_size", img_size)
    if name.startswith(("vit_", "deit_")) and img_size <= 64:
        kwargs.setdefault("patch_size", 4)
    if name.startswith("swin_") and img_size <= 64:
        kwargs.setdefault("patch_size", 2)
        kwargs.setdefault("window_size", 4)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if isinstance(model, timm.models.ResNet) and img_size <= 64:
        # The stem's output width, also where the stem is a deep (Sequential) one.
        width = [m for m in model.conv1.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        model.conv1 = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model
