"""Evaluation protocols: how a student is trained on a distilled set. The one registry of them.

A protocol is an object: its dataclass fields are the recipe a suite may set (`protocols.<name>:` in YAML,
hashed into every result row's key; see WHEN_SET), and its methods supply what the training loop in
harness/models/training.py asks for — epochs and batch size for an IPC, the optimiser and schedule, one augmented batch
with its targets, the loss, whether the teacher must relabel each batch, the student's input size and the
test images' resize and crop. The loop has no branch on a protocol's
name; the leaderboard, the cross-architecture study and the suite checker find protocols here by what they
declare (`labels`, `augmented`, `reference`, `ranked`), never by name. Adding a protocol is one class here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.core.identity import NEVER, WHEN_SET, config_hash, identity_fields
from harness.models.augment import JITTER_ORDERS, augment, cutmix, mixup, resize_center_crop, shuffle_patches

_REGISTRY: dict[str, type[Protocol]] = {}


def register_protocol(cls):
    if cls.name in _REGISTRY:
        raise ValueError(f"protocol {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get_protocol(name: str) -> type[Protocol]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown protocol {name!r}; known: {', '.join(_REGISTRY)}") from None


def list_protocols() -> list[str]:
    return list(_REGISTRY)


# A student's arithmetic (`precision`); None: the device's (`Protocol.on_device`).
PRECISIONS = (None, "fp32", "bf16")


def by_ipc(table: dict[int, int], ipc: int, beyond: int) -> int:
    """The value of the first IPC bound ≥ `ipc` in `table`, or `beyond` above all of them."""
    return next((table[bound] for bound in sorted(table) if ipc <= bound), beyond)


class Protocol:
    """What every protocol declares. Subclasses are dataclasses; only their fields are part of the identity."""

    name: ClassVar[str]
    # "hard": trains on the set's labels; "soft": on the teacher's outputs for every augmented batch.
    labels: ClassVar[str]
    augmented: ClassVar[bool] = True
    # The recipe of the full-data reference row and of DD-Ranking's HLR (hard label recovery).
    reference: ClassVar[bool] = False
    # Whether the protocol competes in "best of protocols" (how the papers report a setting); a diagnostic
    # run that only feeds a score (DD-Ranking's no-augmentation run) does not.
    ranked: ClassVar[bool] = True

    # The side of the student's square input (None: the images' own) and the side the test images' shorter side
    # is resized to before their centre crop to it (None: the input size). Fields of the protocols that set them.
    input_size: int | None = None
    test_resize: int | None = None

    # Recipe fields a search may tune for one student (`--search <protocol>`), as a method's `search_space`.
    search_space: ClassVar[dict[str, tuple]] = {}

    def for_student(self, student: str) -> Protocol:
        """The recipe `student` trains under: this one with its `per_student` settings for the student applied,
        and the other students' left out, so that a recipe searched for one student changes no other's identity."""
        per_student = getattr(self, "per_student", {})
        return dataclasses.replace(self, **per_student.get(student, {}), per_student={}) if per_student else self

    def search_point(self, student: str) -> dict:
        """The searched fields' values `student` trains with now: a protocol search's first trial."""
        recipe = self.for_student(student)
        return {name: getattr(recipe, name) for name in self.search_space}

    def _check_per_student(self):
        fields = {f.name for f in dataclasses.fields(self)} - {"per_student"}
        for student, overrides in self.per_student.items():
            unknown = sorted(set(overrides) - fields)
            if unknown:
                raise ValueError(f"per_student: {student}: {', '.join(unknown)} is not a field of the recipe")
            dataclasses.replace(self, **overrides, per_student={})  # the recipe's own checks, on the student's values

    @property
    def needs_teacher(self) -> bool:
        return self.labels == "soft"

    def identity_fields(self) -> dict:
        """Every field of the recipe, less the fields added later (WHEN_SET) that are at their default; fp32 named
        explicitly is the default too (every row made before `precision` existed is fp32)."""
        fields = identity_fields(self)
        if fields.get("precision") == "fp32":
            del fields["precision"]
        return fields

    def on_device(self, device: str) -> Protocol:
        """This recipe as a trial on `device` ("cpu", "cuda") runs it, and so as its rows are keyed: a precision
        left to the device (None) is bf16 autocast on CUDA, where it roughly halves a student's time, and fp32 on a
        CPU: bf16 is 1.7-2.2× faster on a CPU with AVX-512 BF16 but emulated (slow) on one without, and making it
        the default would re-key every committed CPU row (docs/performance.md); a suite opts in with `bf16`."""
        if getattr(self, "precision", "fp32") is None and str(device).startswith("cuda"):
            return dataclasses.replace(self, precision="bf16")
        return self

    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype the student (and the teacher that relabels for it) computes in under autocast; None: fp32."""
        return torch.bfloat16 if getattr(self, "precision", None) == "bf16" else None

    def _check_precision(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: must be fp32, bf16 or null (the device's), got {self.precision!r}")

    def identity(self) -> str:
        """The protocol hash of result rows: the hash of `identity_fields()`."""
        return config_hash(self.identity_fields())

    def train_size(self, image_size: int) -> int:
        """The side of the images the student trains on, and so is built for."""
        return self.input_size or image_size

    def test_view(self, x: torch.Tensor) -> torch.Tensor:
        """Test images in [0, 1] as the student sees them: resized, then centre-cropped to the input size."""
        if self.input_size is None and self.test_resize is None:
            return x
        size = self.train_size(x.shape[-1])
        return resize_center_crop(x, self.test_resize or size, size)

    def _check_sizes(self):
        for name in ("input_size", "test_resize"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}: must be a positive number of pixels or null, got {getattr(self, name)}")
        if self.test_resize is not None and self.input_size is None:
            # The crop is the input size; without one it would be the image's own side, larger than the resize.
            raise ValueError("test_resize: needs input_size, the side of the centre crop it is resized for")
        if self.input_size and self.test_resize and self.test_resize < self.input_size:
            raise ValueError(
                f"test_resize: must be at least input_size ({self.input_size}) for the centre crop "
                f"to it, got {self.test_resize}"
            )

    def _check_numbers(self, positive=(), non_negative=(), tables=(), fractions=()):
        """`field: why` for a number out of range, so the suite names the field: `positive` fields > 0,
        `non_negative` ≥ 0, `tables` IPC → count mappings with positive IPCs and counts, `fractions` in [0, 1]."""
        for name in positive:  # written `not x > 0`, so that NaN (every comparison false) fails too
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: must be ≥ 0, got {getattr(self, name)}")
        for name in tables:
            if any(k < 1 or v < 1 for k, v in getattr(self, name).items()):
                raise ValueError(f"{name}: every IPC and every count must be at least 1, got {getattr(self, name)}")
        for name in fractions:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")

    def epochs_for(self, ipc: int) -> int:
        return by_ipc(self.epochs, ipc, self.epochs_beyond)

    def batch_size_for(self, ipc: int, num_classes: int, images: int) -> int:
        raise NotImplementedError

    def optimizer(
        self, param_groups: Callable[[bool, float], list[dict]], student: str, num_classes: int
    ) -> torch.optim.Optimizer:
        """`param_groups(no_decay_on_bias_and_norm, weight_decay)` gives the student's parameters."""
        raise NotImplementedError

    def scheduler(self, opt: torch.optim.Optimizer, epochs: int):
        raise NotImplementedError

    def batch(
        self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One training batch of images in [0, 1] and its targets (None where the teacher gives them)."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One seed's loss; `target` is the batch's targets, or the teacher's logits of the batch."""
        raise NotImplementedError

    def full_data(self, epochs: int, batch_size: int, patience: int | None = None, drops: int = 2) -> Protocol:
        """This recipe over a whole training split, for at most `epochs` (the full-data reference row): asked of
        the `reference` protocol only. With `patience`, it trains until validation accuracy stops improving."""
        raise NotImplementedError(f"{self.name} is not a reference recipe")

    def plateau_rule(self) -> tuple[int, int, float] | None:
        """(patience, drops, factor) where training follows validation accuracy instead of a fixed schedule:
        after `patience` epochs without a new best the lr is multiplied by `factor`; after `drops` such drops
        the next plateau ends training, and the best epoch's weights are the student. None: the schedule."""
        return None


def _sgd_epochs() -> dict[int, int]:
    # Minimax argument.py: 1 → 3000, ≤10 → 2000, ≤50 → 1500, ≤200 → 1000, ≤500 → 500, else 300.
    return {1: 3000, 10: 2000, 50: 1500, 200: 1000, 500: 500}


@dataclass
class SGDRecipe(Protocol):
    """The SGD recipe of Minimax / CaO2 (Minimax train.py) on the set's own labels, which the hard-label runs
    share: SGD with momentum, multistep ×0.2 at 2/3 and 5/6 of training, a fixed batch size."""

    labels: ClassVar[str] = "hard"

    # Epochs by IPC: the first key >= IPC applies, `epochs_beyond` above every key.
    epochs: dict[int, int] = field(default_factory=_sgd_epochs)
    epochs_beyond: int = 300
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: list[float] = field(default_factory=lambda: [2 / 3, 5 / 6])  # fractions of training
    gamma: float = 0.2
    student_kwargs: dict[str, dict] = field(default_factory=dict)  # per student, e.g. {convnet3: {width: 64}}
    # Above `many_classes` classes (ImageNet-1k) the reference trains at lr 0.1, weight decay 1e-4 and a batch of
    # at least 128 (Minimax argument.py l.294–301, `if args.nclass > 100`); its epochs are the IPC's as ever.
    many_classes: int = field(default=100, metadata=WHEN_SET)
    many_classes_lr: float = field(default=0.1, metadata=WHEN_SET)
    many_classes_weight_decay: float = field(default=1e-4, metadata=WHEN_SET)
    many_classes_batch_size: int = field(default=128, metadata=WHEN_SET)
    input_size: int | None = field(default=None, metadata=WHEN_SET)
    test_resize: int | None = field(default=None, metadata=WHEN_SET)
    # The full-data row trains until validation accuracy stops improving (`plateau_rule`); None: the schedule.
    plateau_patience: int | None = field(default=None, metadata=WHEN_SET)
    plateau_drops: int = field(default=2, metadata=WHEN_SET)
    # Settings for one student (e.g. {resnetap10: {lr: 0.03}}), as a protocol search on validation chose them.
    per_student: dict[str, dict] = field(default_factory=dict, metadata=WHEN_SET)
    # How the student's arithmetic runs (issue 29; docs/decisions.md "GPU fast paths for students"). `precision`
    # None follows the device (`on_device`: bf16 autocast on CUDA, fp32 elsewhere); "fp32" or "bf16" force one.
    # Autocast keeps fp32 master weights and the teacher relabels in the same precision. A bf16 row's protocol
    # hash holds it; fp32 is every row made before the field and hashes as they did. Channels-last (None: on
    # CUDA) and torch.compile change the order of floating-point sums, not the recipe: in no identity.
    precision: str | None = field(default=None, metadata=WHEN_SET)
    channels_last: bool | None = field(default=None, metadata=NEVER)
    compile: bool = field(default=False, metadata=NEVER)
    search_space: ClassVar[dict[str, tuple]] = {"lr": ("log", 1e-3, 1e-1)}

    def __post_init__(self):
        self._check_sizes()
        self._check_numbers(
            positive=(
                "epochs_beyond",
                "batch_size",
                "lr",
                "gamma",
                "many_classes",
                "many_classes_lr",
                "many_classes_batch_size",
            ),
            non_negative=("momentum", "weight_decay", "many_classes_weight_decay"),
            tables=("epochs",),
        )
        self._check_precision()
        if any(not 0 < m <= 1 for m in self.milestones):
            raise ValueError(f"milestones: must be fractions of training in (0, 1], got {self.milestones}")
        self._check_per_student()

    def plateau_rule(self):
        return None if self.plateau_patience is None else (self.plateau_patience, self.plateau_drops, self.gamma)

    def batch_size_for(self, ipc: int, num_classes: int, images: int) -> int:
        if num_classes > self.many_classes:
            return max(self.batch_size, self.many_classes_batch_size)  # argument.py l.301: max(128, batch_size)
        return self.batch_size

    def optimizer(self, param_groups, student: str, num_classes: int) -> torch.optim.Optimizer:
        many = num_classes > self.many_classes
        return torch.optim.SGD(
            param_groups(False, 0.0),
            lr=self.many_classes_lr if many else self.lr,
            momentum=self.momentum,
            weight_decay=self.many_classes_weight_decay if many else self.weight_decay,
        )

    def scheduler(self, opt, epochs: int):
        return torch.optim.lr_scheduler.MultiStepLR(opt, [int(m * epochs) for m in self.milestones], self.gamma)

    def batch(self, x, y, gen, num_classes):
        size = self.train_size(x.shape[-1])
        return resize_center_crop(x, size, size), F.one_hot(y, num_classes).float()

    def loss(self, logits, target):
        return torch.sum(-target * F.log_softmax(logits, -1), -1).mean()

    def full_data(self, epochs: int, batch_size: int, patience: int | None = None, drops: int = 2) -> Protocol:
        return dataclasses.replace(
            self, epochs={}, epochs_beyond=epochs, batch_size=batch_size, plateau_patience=patience, plateau_drops=drops
        )


@register_protocol
@dataclass
class HardLabel(SGDRecipe):
    """The hard-label recipe of Minimax / CaO2: the SGD recipe with CutMix, random-resized crop, flip, colour
    jitter and lighting noise. The suite's reference: the full-data row and DD-Ranking's HLR train with it."""

    name: ClassVar[str] = "hard-label"
    reference: ClassVar[bool] = True

    cutmix_beta: float = 1.0
    cutmix_prob: float = 1.0  # the reference's mix_p for ImageNet (it uses 0.5 for MNIST-like data)
    rrc_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    flip: bool = True
    color_jitter: float = 0.4
    # PCA lighting noise (AlexNet's, on ImageNet's RGB components): the standard deviation of its weights; 0 is
    # off. Minimax data.py l.319 uses 0.1 for ImageNet.
    lighting: float = field(default=0.0, metadata=WHEN_SET)
    # "fixed": brightness → contrast → saturation; "random": a fresh order per image, as the reference's
    # ColorJitter shuffles its three (Minimax misc/utils.py l.286) and torchvision's permutes its four.
    color_jitter_order: str = field(default="fixed", metadata=WHEN_SET)
    # Clip jittered images to [0, 1]. The reference does not: it jitters and adds lighting to float tensors and
    # normalises them as they are (Minimax misc/utils.py l.207–289, data.py l.347).
    clip_colours: bool = field(default=True, metadata=WHEN_SET)

    def __post_init__(self):
        super().__post_init__()
        if self.color_jitter_order not in JITTER_ORDERS:
            raise ValueError(
                f"color_jitter_order: must be {' or '.join(JITTER_ORDERS)}, got {self.color_jitter_order!r}"
            )
        if self.lighting < 0:
            raise ValueError(f"lighting: must be ≥ 0, got {self.lighting}")
        self._check_numbers(non_negative=("cutmix_beta", "color_jitter"), fractions=("cutmix_prob",))
        if len(self.rrc_scale) != 2 or not 0 < self.rrc_scale[0] <= self.rrc_scale[1] <= 1:
            raise ValueError(f"rrc_scale: must be [low, high] with 0 < low ≤ high ≤ 1, got {self.rrc_scale}")

    def batch(self, x, y, gen, num_classes):
        x = augment(
            x,
            gen,
            self.rrc_scale,
            self.flip,
            self.color_jitter,
            self.input_size,
            self.lighting,
            self.color_jitter_order,
            self.clip_colours,
        )
        if self.cutmix_beta > 0 and len(x) > 1 and torch.rand(1, generator=gen).item() < self.cutmix_prob:
            return cutmix(x, y, num_classes, gen, self.cutmix_beta)
        return x, F.one_hot(y, num_classes).float()


@register_protocol
@dataclass
class HardLabelNoAugmentation(SGDRecipe):
    """DD-Ranking's run without data augmentation, which its augmentation-robust score (ARS) compares with the
    augmented run: the SGD recipe on the set's own labels, images as they are. Not ranked: it feeds a score."""

    name: ClassVar[str] = "hard-label-no-aug"
    augmented: ClassVar[bool] = False
    ranked: ClassVar[bool] = False


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened outputs, batch mean, as RDED computes it (no τ² factor)."""
    return F.kl_div(F.log_softmax(student_logits / tau, 1), F.softmax(teacher_logits / tau, 1), reduction="batchmean")


def rded_cosine(epochs: int):
    """RDED's schedule factor: 0.5·(1 + cos(π·epoch / epochs / 2)) — a quarter cosine ending at half the lr."""
    return lambda epoch: 0.5 * (1.0 + math.cos(math.pi * epoch / epochs / 2)) if epoch <= epochs else 0.0


MIXES = ("cutmix", "mixup")


@register_protocol
@dataclass
class SoftLabel(Protocol):
    """The soft-label recipe of RDED `validation/main.py` (used by CaO2): the teacher relabels every augmented
    batch; KL between temperature-softened student and teacher outputs; AdamW with RDED's cosine."""

    name: ClassVar[str] = "soft-label"
    labels: ClassVar[str] = "soft"

    epochs: dict[int, int] = field(default_factory=dict)
    epochs_beyond: int = 300
    # Batch size by IPC (RDED argument.py: 1 → 10, 10 → 50, 50 → 100), doubled for ≥ 100 classes,
    # never above the number of images.
    batch_size: dict[int, int] = field(default_factory=lambda: {1: 10, 10: 50, 50: 100})
    batch_size_beyond: int = 100
    lr: float = 1e-3
    # RDED's per-student AdamW learning rates (names as timm spells them; prefixes match families).
    student_lr: dict[str, float] = field(
        default_factory=lambda: {"efficientnet_b0": 2e-3, "mobilenetv2": 2.5e-3, "vit_": 1e-4, "swin_": 1e-4}
    )
    weight_decay: float = 0.01
    mix: str = "cutmix"  # "cutmix" (temperature 20) or "mixup" (temperature 4), as RDED pairs them
    cutmix_beta: float = 1.0
    mixup_alpha: float = 0.8
    temperature: float | None = None  # None: 20 for cutmix, 4 for mixup
    patch_factor: int = 2  # ShufflePatches(factor) and crop scale (1/factor, 1)
    flip: bool = True
    student_kwargs: dict[str, dict] = field(default_factory=dict)
    input_size: int | None = field(default=None, metadata=WHEN_SET)
    test_resize: int | None = field(default=None, metadata=WHEN_SET)
    per_student: dict[str, dict] = field(default_factory=dict, metadata=WHEN_SET)  # as SGDRecipe's
    # How the student's arithmetic runs (issue 29; docs/decisions.md "GPU fast paths for students"). `precision`
    # None follows the device (`on_device`: bf16 autocast on CUDA, fp32 elsewhere); "fp32" or "bf16" force one.
    # Autocast keeps fp32 master weights and the teacher relabels in the same precision. A bf16 row's protocol
    # hash holds it; fp32 is every row made before the field and hashes as they did. Channels-last (None: on
    # CUDA) and torch.compile change the order of floating-point sums, not the recipe: in no identity.
    precision: str | None = field(default=None, metadata=WHEN_SET)
    channels_last: bool | None = field(default=None, metadata=NEVER)
    compile: bool = field(default=False, metadata=NEVER)
    # Around RDED's AdamW lr 1e-3 and the cutmix temperature 20.
    search_space: ClassVar[dict[str, tuple]] = {"lr": ("log", 1e-4, 1e-2), "temperature": ("float", 1.0, 30.0)}

    def for_student(self, student: str) -> Protocol:
        recipe = super().for_student(student)
        if "lr" in self.per_student.get(student, {}):  # the searched lr, not RDED's per-family one
            recipe = dataclasses.replace(recipe, student_lr={})
        return recipe

    def search_point(self, student: str) -> dict:
        recipe = self.for_student(student)
        return {"lr": recipe.lr_for(student), "temperature": recipe.tau()}

    def __post_init__(self):
        if self.mix not in MIXES:
            raise ValueError(f"mix: must be cutmix or mixup, got {self.mix!r}")
        self._check_precision()
        self._check_sizes()
        self._check_numbers(
            positive=("epochs_beyond", "batch_size_beyond", "lr", "mixup_alpha", "patch_factor"),
            non_negative=("weight_decay", "cutmix_beta"),
            tables=("epochs", "batch_size"),
        )
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature: must be positive or null, got {self.temperature}")
        if not all(lr > 0 for lr in self.student_lr.values()):
            raise ValueError(f"student_lr: every learning rate must be positive, got {self.student_lr}")
        self._check_per_student()

    def batch_size_for(self, ipc: int, num_classes: int, images: int) -> int:
        size = by_ipc(self.batch_size, ipc, self.batch_size_beyond)
        return min(size * (2 if num_classes >= 100 else 1), images)

    def lr_for(self, student: str) -> float:
        return next((lr for prefix, lr in self.student_lr.items() if student.startswith(prefix)), self.lr)

    def tau(self) -> float:
        return self.temperature if self.temperature is not None else (20.0 if self.mix == "cutmix" else 4.0)

    def optimizer(self, param_groups, student: str, num_classes: int) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            param_groups(True, self.weight_decay),
            lr=self.lr_for(student),
            betas=(0.9, 0.999),
            weight_decay=self.weight_decay,
        )

    def scheduler(self, opt, epochs: int):
        return torch.optim.lr_scheduler.LambdaLR(opt, rded_cosine(epochs))

    def batch(self, x, y, gen, num_classes):
        x = augment(
            shuffle_patches(x, self.patch_factor, gen),
            gen,
            [1 / self.patch_factor, 1.0],
            self.flip,
            size=self.input_size,
        )
        x = (
            cutmix(x, None, num_classes, gen, self.cutmix_beta)[0]
            if self.mix == "cutmix"
            else mixup(x, gen, self.mixup_alpha)
        )
        return x, None

    def loss(self, logits, target):
        return soft_label_loss(logits, target, self.tau())


# ---- finding protocols by what they declare ----


def reference_protocol(protocols: dict[str, Protocol]) -> Protocol:
    """The suite's reference recipe (hard labels, augmented), or its defaults where the suite has none."""
    found = [p for p in protocols.values() if p.reference]
    return found[0] if found else next(cls() for cls in _REGISTRY.values() if cls.reference)


def teacher_protocol(protocols: dict[str, Protocol]) -> Protocol:
    """The suite's protocol that trains on the teacher's outputs, or its defaults where the suite has none."""
    found = [p for p in protocols.values() if p.needs_teacher]
    return found[0] if found else next(cls() for cls in _REGISTRY.values() if cls.labels == "soft")


def score_protocols(protocols: dict[str, Protocol]) -> dict[str, str | None]:
    """The protocol names DD-Ranking's scores read: `hard`, the reference recipe (the HLR and the full-data
    row, and ARS's run with augmentation), `soft` (the IOR run; the reference one where the suite has none that
    uses the teacher) and `no_aug` (ARS's run without augmentation; None where the suite has none)."""

    def first(test) -> str | None:
        return next((name for name, p in protocols.items() if test(p)), None)

    hard = first(lambda p: p.reference) or reference_protocol(protocols).name
    return {
        "hard": hard,
        "soft": first(lambda p: p.labels == "soft") or hard,
        "no_aug": first(lambda p: p.labels == "hard" and not p.augmented),
    }
