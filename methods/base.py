"""What every method is: a config dataclass with the paper's defaults and a per-class distillation step.

Methods are plain torch. They receive the backbone (Backbone protocol), the teacher and the real images of
one class, and return that class's IPC images in [0, 1]. Orchestration (which class runs where, caching,
writing) lives in harness/, so a method can be run and tested on its own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass
class ClassTask:
    label: int            # index in the suite's class list
    key: str              # class key (WNID or name)
    ipc: int              # images to return
    seed: int             # derived from (suite seed, method, config, IPC, class): same task → same images
    real: torch.Tensor | None  # uint8 (N, C, H, W) training images of this class; None if the method needs none
    num_classes: int
    image_size: int       # the suite's image size; returned images must have it
    channels: int
    # The backbone's label for this class: for a DiT pretrained on ImageNet-1k its ImageNet index (a Woof
    # breed is not label 0 there); for a backbone trained on the suite, `label`.
    condition: int | None = None

    def __post_init__(self):
        if self.condition is None:
            self.condition = self.label

    def generator(self, device="cpu") -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)


class Method:
    name: ClassVar[str]
    Config: ClassVar[type]
    uses_backbone: ClassVar[bool] = False
    uses_teacher: ClassVar[bool] = False
    uses_real: ClassVar[bool] = True
    # Ranges the hyperparameter-search stage may explore, by config field: ("float" | "log" | "int", low, high)
    # or ("choice", [values]). Empty: nothing to search.
    search_space: ClassVar[dict[str, tuple]] = {}

    def __init__(self, config=None, backbone=None, teacher=None, device: str | torch.device = "cpu"):
        self.config = config if config is not None else self.Config()
        if self.uses_backbone and backbone is None:
            raise ValueError(f"method {self.name} needs a diffusion backbone")
        if self.uses_teacher and teacher is None:
            raise ValueError(f"method {self.name} needs a teacher")
        self.backbone, self.teacher, self.device = backbone, teacher, torch.device(device)
        # Seconds a method spends in its named stages (e.g. {"bo": 3.2}) during one distill_class call; the
        # harness clears it before each class and records it with the shard's cost.
        self.stage_seconds: dict[str, float] = {}

    def distill_class(self, task: ClassTask) -> torch.Tensor:
        """Return `task.ipc` images of class `task.label`, float in [0, 1], shape (ipc, C, H, W)."""
        raise NotImplementedError

    @classmethod
    def needs_teacher_val_accuracy(cls, config) -> bool:
        """Whether `prepare` must measure the teacher on the validation split for this config (it is then
        `teacher.val_accuracy`); off by default, because on ImageNet-1k that costs a pass over 50,000 images."""
        return False

    @classmethod
    def seed_identity(cls, config) -> tuple[str, dict] | None:
        """None: a class's draws are seeded by this method and its whole config. Ablation variants of one
        method return the same (family, config) so that they draw the same noise and differ only in the
        stage they switch off, as the paper's ablation table runs them from one noise bank."""
        return None

    @classmethod
    def config_dict(cls, config) -> dict:
        return dataclasses.asdict(config)


def real_as_float(real: torch.Tensor) -> torch.Tensor:
    return real.float().div(255)


@torch.no_grad()
def teacher_features(teacher, images01: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([teacher.features(images01[i:i + batch_size]) for i in range(0, len(images01), batch_size)])


@torch.no_grad()
def teacher_logits(teacher, images01: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The teacher's logits (float, CPU) over all its outputs. A pretrained ImageNet-1k teacher is read over all
    1,000, as the papers' selectors and soft-label teachers (torchvision's ResNet-18) are: a Woof sample the
    teacher calls a breed outside the suite is not "correct" just because that breed is not a suite class.
    A suite-trained teacher's outputs are the suite's classes."""
    full = len(teacher.class_indices) > 0
    return torch.cat([(teacher.model(teacher.prepare_input(x)) if full else teacher(x)).float().cpu()
                      for x in images01.split(batch_size)])


def teacher_output_index(teacher, label: int) -> int:
    """Which of `teacher_logits`' columns is the suite's class `label`."""
    return int(teacher.class_indices[label]) if len(teacher.class_indices) > 0 else label
