"""Teachers: the classifiers methods use to select, score and relabel images.

A `Teacher` takes images in [0, 1] at any size, resizes and normalises them for its network, and gives
logits over the suite's classes (in the suite's class order) or pooled features. For the ImageNet family
it is a timm model pretrained on ImageNet-1k whose 1,000 outputs are picked by WNID — the alignment check
that keeps a class-order mismatch from silently costing 30 points. For datasets without a public model,
`prepare` trains one with `train_teacher`; on the ImageNet subsets, where RDED and CaO2 relabel with a
ResNet-18 trained on the subset itself, `prepare` trains one with `train_recipe_teacher` (the recipe RDED's
observers were trained with) or reads such a checkpoint with `import_teacher_checkpoint`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from harness.core import atomic
from harness.models.augment import augment
from harness.models.students import create_student

# torchvision's normalisation (references/classification/presets.py), which RDED's observers expect
# (RDED synthesize/utils.py:77).
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class Teacher(nn.Module):
    def __init__(
        self, model: nn.Module, input_size: int, in_chans: int, mean, std, class_indices: list[int] | None = None
    ):
        super().__init__()
        self.model, self.input_size, self.in_chans = model, input_size, in_chans
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer(
            "class_indices", torch.tensor(class_indices if class_indices is not None else [], dtype=torch.long)
        )
        self.requires_grad_(False)
        self.eval()

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.mean.device, torch.float32)
        if x.shape[1] != self.in_chans:  # grey data for an RGB teacher, or the reverse
            x = x.expand(-1, self.in_chans, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False
            )
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the suite's classes for images in [0, 1]."""
        logits = self.model(self.prepare_input(x))
        return logits[:, self.class_indices] if len(self.class_indices) else logits

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features for images in [0, 1]."""
        feats = self.model.forward_features(self.prepare_input(x))
        return self.model.forward_head(feats, pre_logits=True)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        return torch.cat([self(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@dataclass(frozen=True)
class TeacherTrainConfig:
    width: int = 64
    epochs: int = 5
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 5e-4
    seed: int = 0

    def __post_init__(self):
        for name in ("width", "epochs", "batch_size", "lr"):
            if not getattr(self, name) > 0:  # NaN fails too
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be ≥ 0, got {self.weight_decay}")


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random shift by up to `pad` pixels and horizontal flip, on a whole batch at once."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def train_teacher(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    arch: str,
    cfg: TeacherTrainConfig,
    out_path: Path,
    progress: bool = True,
    arch_kwargs: dict | None = None,
) -> Teacher:
    """Train a classifier from scratch on uint8 images; saves a state dict + meta to `out_path`.

    `arch_kwargs` are the architecture's own options (e.g. a ResNet's channels); without them the
    architecture gets `width=cfg.width` (the ConvNet family's option)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    in_chans, size = images.shape[1], images.shape[-1]
    mean = [images.float().div(255).mean().item()] * in_chans
    std = [images.float().div(255).std().item()] * in_chans
    arch_kwargs = dict(arch_kwargs) if arch_kwargs else {"width": cfg.width}
    model = create_student(arch, num_classes, in_chans, size, **arch_kwargs)
    teacher = Teacher(model, size, in_chans, mean, std)
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    model.train().requires_grad_(True)
    data = images.float().div(255)
    bar = tqdm(total=total, desc=f"prepare: train teacher {arch}", disable=not progress, mininterval=5)
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(data), generator=gen)
        for i in range(0, len(data), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            x = _augment(data[idx], gen)
            loss = F.cross_entropy(model((x - teacher.mean) / teacher.std), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    teacher.requires_grad_(False).eval()
    save_teacher(teacher, arch, num_classes, out_path, **arch_kwargs)
    return teacher


@dataclass(frozen=True)
class TorchvisionRecipe:
    """How RDED trained its subset observers: "we adapt official Torchvision code to train the observer models
    from scratch" (RDED README, "Pre-trained Models"; its scripts only load them, synthesize/utils.py:227-240).
    The values are torchvision references/classification/train.py's defaults, which its README runs for ResNets
    on 8 GPUs: SGD, step decay, random-resized crop + flip at 224 px, plain cross-entropy."""

    epochs: int = 90  # --epochs 90
    batch_size: int = 256  # -b 32 images per GPU × 8 GPUs
    lr: float = 0.1  # --lr 0.1
    momentum: float = 0.9  # --momentum 0.9
    weight_decay: float = 1e-4  # --wd 1e-4, norms included (--norm-weight-decay None)
    lr_step_size: int = 30  # --lr-scheduler steplr --lr-step-size 30
    lr_gamma: float = 0.1  # --lr-gamma 0.1
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop's scale
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "lr_step_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "lr_gamma"):
            if not getattr(self, name) > 0:  # NaN fails too
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        for name in ("momentum", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be ≥ 0, got {getattr(self, name)}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale: must be [low, high] with 0 < low ≤ high ≤ 1, got {self.crop_scale}")


def train_recipe_teacher(
    images: np.ndarray,
    labels: torch.Tensor,
    num_classes: int,
    arch: str,
    recipe: TorchvisionRecipe,
    input_size: int,
    device="cpu",
    rank: int = 0,
    world: int = 1,
    wrap=None,
    progress: bool = True,
    arch_kwargs: dict | None = None,
) -> Teacher:
    """Train `arch` from scratch on uint8 images (N, C, H, W) with `recipe`; the images are a numpy array so that
    Ray Train workers on one node share one read-only copy.

    Crops are cut from the suite's images (already resized to the suite's size) and resized to `input_size`.
    Data-parallel as the students are (harness/models/training.py): every worker draws the whole batch from the same
    generator and trains on its `rank`-th slice (`wrap` is Ray Train's `prepare_model`), so W workers see the
    batches one process would."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    model = create_student(arch, num_classes, images.shape[1], input_size, **(arch_kwargs or {})).to(device)
    teacher = Teacher(model, input_size, images.shape[1], IMAGENET_MEAN, IMAGENET_STD).to(device)
    model.train().requires_grad_(True)  # before the DDP wrap, which hooks only parameters that need gradients
    net = wrap(model) if wrap is not None else model
    opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, recipe.lr_step_size, recipe.lr_gamma)
    labels = labels.to(device)
    bar = tqdm(
        total=recipe.epochs * math.ceil(len(images) / recipe.batch_size),
        mininterval=5,
        desc=f"[prepare] train teacher {arch}",
        disable=not progress or rank != 0,
    )
    for _ in range(recipe.epochs):
        perm = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), recipe.batch_size):
            idx = perm[i : i + recipe.batch_size]
            if len(idx) < world:
                continue  # a last batch too small to give every worker an image
            x = augment(
                torch.from_numpy(images[idx.numpy()]).to(device).float().div(255), gen, recipe.crop_scale, flip=True
            )[rank::world]
            loss = F.cross_entropy(net(teacher.prepare_input(x)), labels[idx.to(device)][rank::world])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        sched.step()
    bar.close()
    return teacher.requires_grad_(False).eval()


def import_teacher_checkpoint(
    path: Path, arch: str, num_classes: int, input_size: int, out_path: Path, arch_kwargs: dict | None = None
) -> None:
    """A classifier trained on the suite's classes elsewhere, saved as a ddbench teacher file at `out_path`.

    Reads torchvision's reference checkpoints ({"model": state_dict, "args": ...}: RDED's observers, loaded
    there by synthesize/utils.py:237-240), ddbench's own teacher files and bare state dicts. Its outputs must be
    the suite's classes in the suite's order; a wrong class count or architecture is a ValueError of one line."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # torchvision's checkpoints keep their args
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path} cannot be read as a checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    meta = raw if isinstance(raw, dict) and "state_dict" in raw and "arch" in raw else {}
    if meta and meta["arch"] != arch:
        raise ValueError(f"{path} holds a {meta['arch']} teacher, not {arch}")
    state = raw.get("model", raw.get("state_dict", raw)) if isinstance(raw, dict) else raw
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path} holds no state dict (expected torchvision's {{'model': ...}}, ddbench's teacher "
            f"file or a bare state dict)"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel / DDP
    kwargs = dict(meta.get("kwargs", arch_kwargs or {}))
    size = meta.get("input_size", input_size)
    model = create_student(arch, num_classes, meta.get("in_chans", 3), size, **kwargs)
    head = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1] + ".weight"
    if head not in state:
        raise ValueError(f"{path} is not a {arch} checkpoint: it has no {head}")
    outputs = state[head].shape[0]
    if outputs != num_classes:
        raise ValueError(
            f"{path} has {outputs} outputs but the suite has {num_classes} classes: a subset teacher's "
            f"outputs must be the suite's classes, in the suite's order"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} is not a {arch} checkpoint: {str(e).splitlines()[1].strip()}") from None
    teacher = Teacher(
        model, size, meta.get("in_chans", 3), meta.get("mean", IMAGENET_MEAN), meta.get("std", IMAGENET_STD)
    )
    save_teacher(teacher, arch, num_classes, out_path, **kwargs)


def save_teacher(teacher: Teacher, arch: str, num_classes: int, path: Path, **kwargs) -> None:
    atomic.torch_save(
        {
            "arch": arch,
            "kwargs": kwargs,
            "num_classes": num_classes,
            "in_chans": teacher.in_chans,
            "input_size": teacher.input_size,
            "mean": teacher.mean.flatten().tolist(),
            "std": teacher.std.flatten().tolist(),
            "state_dict": teacher.model.state_dict(),
        },
        path,
    )


def load_trained_teacher(path: Path, device="cpu") -> Teacher:
    meta = torch.load(path, map_location="cpu", weights_only=True)
    model = create_student(meta["arch"], meta["num_classes"], meta["in_chans"], meta["input_size"], **meta["kwargs"])
    model.load_state_dict(meta["state_dict"])
    return Teacher(model, meta["input_size"], meta["in_chans"], meta["mean"], meta["std"]).to(device)


def load_timm_teacher(
    arch: str, weights: str | None, suite_classes: list[str], model_classes: list[str], input_size: int, device="cpu"
) -> Teacher:
    """A timm model pretrained on ImageNet-1k, its outputs picked by WNID for the suite's classes.

    `weights` is a hub tag/id (e.g. "timm/resnet18.tv_in1k") or a local file; offline users pass a file.
    """
    import timm

    missing = [k for k in suite_classes if k not in model_classes]
    if missing:
        raise ValueError(
            f"teacher {arch} has no output for classes {missing[:5]} (of {len(missing)}): "
            f"its class list does not cover the suite's WNIDs"
        )
    if weights and Path(weights).is_file():
        model = timm.create_model(
            arch, pretrained=True, num_classes=len(model_classes), pretrained_cfg_overlay={"file": str(weights)}
        )
    elif weights:  # a timm name with its pretrained tag, e.g. resnet18.tv_in1k (from the hub, or its cache)
        if weights.split(".")[0] != arch:
            raise ValueError(f"teacher weights {weights!r} are not for architecture {arch!r}")
        model = timm.create_model(weights, pretrained=True, num_classes=len(model_classes))
    else:
        raise ValueError(f"teacher {arch}: no weights given (a timm tag like {arch}.tv_in1k or a local file)")
    cfg = model.pretrained_cfg
    index = {k: i for i, k in enumerate(model_classes)}
    return Teacher(
        model,
        input_size,
        3,
        list(cfg.get("mean", (0.485, 0.456, 0.406))),
        list(cfg.get("std", (0.229, 0.224, 0.225))),
        class_indices=[index[k] for k in suite_classes],
    ).to(device)


@torch.no_grad()
def accuracy(teacher: Teacher, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    correct = 0
    for i in range(0, len(images_u8), batch_size):
        pred = teacher(images_u8[i : i + batch_size].float().div(255)).argmax(1)
        correct += (pred == labels[i : i + batch_size].to(pred.device)).sum().item()
    return correct / max(1, len(images_u8))
