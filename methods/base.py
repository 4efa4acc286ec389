"""What every method is: a config dataclass with the paper's defaults and a per-class distillation step.

Methods are plain torch. They declare what they need (`Method.needs`) and receive it in one MethodContext
(backbone, teacher, the teacher's validation accuracy) and, per class, the real images of that class in the
ClassTask; they return that class's IPC images in [0, 1]. Orchestration (which class runs where, caching,
writing) lives in harness/, so a method can be run and tested on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from harness.core.identity import NEVER, identity_fields

# Images per teacher forward where a method has no setting for it (features for herding, k-center and S3).
TEACHER_BATCH = 256
# Images of at most this side are "small" for `Method.small_image_defaults`: RDED's reference runs CIFAR (32 px) and
# Tiny-ImageNet (64 px) at its low-resolution setting and only the 128–224 px ImageNet family at its own.
SMALL_IMAGES = 64


@dataclass
class ClassTask:
    label: int  # index in the suite's class list
    key: str  # class key (WNID or name)
    ipc: int  # images to return
    seed: int  # derived from (suite seed, method, config, IPC, class): same task → same images
    real: torch.Tensor | None  # uint8 (N, C, H, W) training images of this class; None if the method needs none
    num_classes: int
    image_size: int  # the suite's image size; returned images must have it
    channels: int
    # The backbone's label for this class: for a DiT pretrained on ImageNet-1k its ImageNet index (a Woof
    # breed is not label 0 there); for a backbone trained on the suite, `label`.
    condition: int | None = None

    def __post_init__(self):
        if self.condition is None:
            self.condition = self.label

    def generator(self, device="cpu") -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)


# What a method may ask the harness for (`Method.needs`). Each is loaded once per worker and handed over in
# the MethodContext, except `real_images`, which arrive per class in the ClassTask.
# `bn_teacher`: a teacher with batch-norm layers, whose running statistics a method matches (SRe2L's recover); the
# harness hands over the first of the suite's teachers that has them (`Suite.bn_teacher`) and refuses the suite
# where none has.
NEEDS = frozenset({"backbone", "teacher", "relabel_teacher", "bn_teacher", "teacher_val_accuracy", "real_images"})


@dataclass
class Work:
    """What distilling one class costs, counted in model evaluations of one image: the plan (`--plan`) prices
    the counts before anything runs. A backward pass counts as two evaluations."""

    backbone: float = 0.0  # transformer evaluations of one latent at one timestep (guidance doubles them)
    vae: float = 0.0  # VAE encodes and decodes of one image
    teacher: float = 0.0  # teacher forward passes of one image
    bn_teacher: float = 0.0  # forward passes of one image through the batch-norm teacher (need `bn_teacher`)
    # Forward passes of one image through the method's own network (`Method.own_network`: DM's random ConvNets).
    network: float = 0.0


def evaluations_per_step(cfg_scale: float) -> int:
    """Transformer evaluations per guided step: guidance runs the conditional and the null class."""
    return 1 if cfg_scale == 1.0 else 2


@dataclass(frozen=True)
class PaperGenerator:
    """The generator a method's paper chose its guidance for, where it is not the DiT family every method here can
    run on: what the paper's guidance scales mean."""

    name: str  # as the paper names it, for the board's note
    kind: str  # the backbone kind it is here: a suite on that kind takes the paper's scales as they are
    typical_guidance: float  # the guidance that generator samples at by default


@dataclass(frozen=True)
class Prompts:
    """The prompts a method's paper conditioned a text-to-image generator with: `template` over the class name
    (`{name}`) and the null condition's prompt (the unconditional pass, or a negative prompt guided against).
    None keeps the suite's (`backbone.prompt`, `backbone.null_prompt`). Only a text-conditioned backbone reads
    them (one that offers `with_prompts`); a class-conditional DiT has no prompts."""

    template: str | None = None
    null: str | None = None


def map_guidance(value: float, paper_typical: float, backbone_typical: float) -> float:
    """A paper's guidance scale carried to another generator: its excess over 1 (no guidance) scaled by the ratio
    of the two generators' typical excesses, so the typical scale maps to the typical scale and 1 stays 1
    (docs/decisions.md, "Guidance across generators")."""
    return round(1.0 + (value - 1.0) * (backbone_typical - 1.0) / (paper_typical - 1.0), 4)


@dataclass(frozen=True)
class FineTuning:
    """What a method asks of the harness's fine-tuning stage (harness/stages/fine_tune.py): DiffFit on the suite's
    backbone over the suite's whole training split, for this schedule, with the method's objective
    (`Method.fine_tune_objective`). Its identity (`identity_fields`: every field but `checkpoint_every`, how often
    and not what, with the objective's settings) keys the fine-tuned model: equal identities are one fine-tune."""

    epochs: int
    batch_size: int  # the global batch: data-parallel workers split it
    lr: float  # AdamW, no weight decay
    ema_decay: float  # the EMA the method samples from
    class_dropout: float  # labels replaced by the null class, as classifier-free guidance trains
    checkpoint_every: int = field(metadata=NEVER)  # steps between checkpoints a killed run resumes from
    objective: tuple  # the objective's settings, as (name, value) pairs
    max_steps: int | None = None  # a cap on epochs × steps per epoch, for budgets smaller than an epoch
    seed: int = 0
    hflip: bool = True  # random horizontal flips of the real images


class FineTuneObjective:
    """A fine-tuning loss over a batch of clean latents. State that must survive a resume (a memory bank)
    goes through `state_dict` / `load_state_dict`."""

    # The rehearsal (harness/stages/rehearsal.py) sets this to measure a step at its dearest: every image at the
    # last timestep, where a loss whose work grows with t (IMS3's inversion runs the whole DDIM path below t) does
    # the most. Training never sets it.
    dearest_timesteps: bool = False

    def draw_timesteps(self, n: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
        """The training timesteps of a batch of `n`: uniform over the schedule (DiT's `training_losses`), or
        the last one everywhere under `dearest_timesteps` (the generator is drawn from alike, so the draws after
        it do not move)."""
        t = torch.randint(0, num_train_timesteps, (n,), generator=generator)
        return torch.full_like(t, num_train_timesteps - 1) if self.dearest_timesteps else t

    def loss(
        self, backbone, x0: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """`labels`: the backbone's conditions (some dropped to its null class); `classes`: the suite's class of
        each image. Returns the loss and its named parts for the log."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class MethodContext:
    """Everything the harness hands a method, filled with what the method declared it needs."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backbone: Any = None  # the Backbone protocol (harness/models/generators)
    teacher: Any = None  # harness.models.teachers.Teacher
    # The teacher whose outputs the soft-label protocols train on: the suite's own, or the one trained on the
    # subset where the suite names one (`teacher.relabel`), as RDED's observer both scores and relabels.
    relabel_teacher: Any = None
    # The teacher's accuracy on the suite's validation split (never the test split).
    teacher_val_accuracy: float | None = None
    # A teacher with batch norm (need `bn_teacher`): the first of the relabelling teacher, the suite's teacher and
    # the cross-architecture teachers whose network has batch-norm layers (`Suite.bn_teacher`).
    bn_teacher: Any = None


class Method:
    """A method is its config (paper defaults, `Config`) and `distill_class`. The harness knows methods only
    by what they declare here: what they need, how their draws are seeded, what may be searched."""

    name: ClassVar[str]
    Config: ClassVar[type]
    # Config defaults that differ from `Config`'s own: what makes a registered variant an ablation row.
    defaults: ClassVar[dict[str, Any]] = {}
    # The method a variant belongs to (None for a method itself).
    family: ClassVar[str | None] = None
    needs: ClassVar[frozenset[str]] = frozenset({"real_images"})
    # Config fields the family's ablation variants switch. Variants of one family draw the same noise and
    # seeds, so their rows differ only in the stages switched off, as the papers' ablation tables run them
    # from one noise bank. Empty: a class's draws are seeded by the method and its whole config.
    paired_switches: ClassVar[tuple[str, ...]] = ()
    # Raised when a code change alters this method's images under unchanged settings, so its sets get new hashes
    # and the rows of the old images leave the board (0 is left out of the hash: existing hashes hold). A variant's
    # set hash takes the sum over its classes, so raising the family's retires every variant's sets too.
    revision: ClassVar[int] = 0
    # The config field that sets each named stage's batch (the images one pass of the stage holds at once), or
    # the fixed batch the code uses where no setting does: what the rehearsal (perf/rehearsal.py) measures each
    # stage at and what `--plan` scales its memory by. A stage absent here holds the whole class at once.
    stage_batches: ClassVar[dict[str, str | int]] = {}
    # Config values that make a rehearsal cheap and still run every stage once (one sampling step, one CLO
    # iteration, one BO proposal, ...); the batch fields above are set to the batch being measured.
    rehearsal_settings: ClassVar[dict[str, Any]] = {}
    # The two batches the rehearsal measures, whose difference gives each stage's memory per image.
    rehearsal_batches: ClassVar[tuple[int, int]] = (1, 2)
    # The IPC a rehearsal distils (None: the batch being measured, so that a batch of that many images is made).
    rehearsal_ipc: ClassVar[int | None] = None
    # Settings that change a fine-tune step's compute but not its peak memory: the rehearsal measures the memory
    # slope over the batches with them, and the suite's own settings at the first batch only (FLOPs and peak).
    rehearsal_slope_settings: ClassVar[dict[str, Any]] = {}
    # DD-Ranking's reference set (a same-IPC random subset of the real training images) that its scores
    # measure every method against.
    random_baseline: ClassVar[bool] = False
    # The generator the paper's defaults were chosen on, when it is not the suite's kind of backbone: the config
    # fields in `guidance_fields` (guidance scales, or the bounds of a guidance range) that the suite leaves unset
    # are then mapped by `map_guidance` from the paper's generator to the suite's, and the board says so.
    paper_generator: ClassVar[PaperGenerator | None] = None
    guidance_fields: ClassVar[tuple[str, ...]] = ()
    # The prompts the paper conditioned its text-to-image generator with; a text-conditioned backbone samples the
    # method with them, a class-conditional one ignores them. None: the suite's prompts.
    prompts: ClassVar[Prompts | None] = None
    # Settings that fit a kind of generator better than the paper's (chosen for DiT-XL/2 or Stable Diffusion at
    # 256–512 px), by the kind of backbone the method samples: a field the suite leaves unset takes them there, and
    # the board says so. A guidance field set here is not mapped (`paper_generator`): it is this kind's own.
    generator_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    # Settings for images of at most SMALL_IMAGES px (the references' low-resolution runs), applied alike.
    small_image_defaults: ClassVar[dict[str, Any]] = {}
    # The kind of generator the method samples (harness/models/generators/), where it is not the suite's own
    # `backbone`: a suite that lists the method must then hold a section of that kind in `backbones`, and the
    # harness hands the method that backbone (MAR's methods; a paper's own generator beside the suite's DiT).
    backbone_kind: ClassVar[str | None] = None
    # Ranges the hyperparameter-search stage may explore, by config field: ("float" | "log" | "int", low, high)
    # or ("choice", [values]). Empty: nothing to search.
    search_space: ClassVar[dict[str, tuple]] = {}

    def __init__(self, config=None, context: MethodContext | None = None):
        self.config = config if config is not None else self.default_config()
        self.context = context if context is not None else MethodContext()
        missing = sorted(n for n in self.needs_for(self.config) - {"real_images"} if getattr(self.context, n) is None)
        if missing:
            raise ValueError(f"method {self.name} needs {', '.join(missing)}, which the context lacks")
        self.backbone, self.teacher = self.context.backbone, self.context.teacher
        if self.prompts is not None and hasattr(self.backbone, "with_prompts"):
            self.backbone = self.backbone.with_prompts(self.prompts.template, self.prompts.null)
        self.relabel_teacher = self.context.relabel_teacher
        self.bn_teacher = self.context.bn_teacher
        self.device = torch.device(self.context.device)
        # Seconds a method spends in its named stages (e.g. {"bo": 3.2}) during one distill_class call; the
        # harness clears it before each class and records it with the shard's cost.
        self.stage_seconds: dict[str, float] = {}
        # Entered around every stage, named (`stage`): how the rehearsal measures a stage's memory and FLOPs on
        # the boundaries the cost table times. None outside a rehearsal.
        self.stage_probe: Callable[[str], AbstractContextManager] | None = None

    @contextlib.contextmanager
    def stage(self, name: str, record: bool = True) -> Iterator[None]:
        """A named stage of the method: its seconds add to `stage_seconds` (`record`: the stages the cost
        table shows, the papers' own; the rest, sampling and decoding that every generator method has, are
        only probed), and the rehearsal's probe, where set, measures it."""
        t0 = time.perf_counter()
        with self.stage_probe(name) if self.stage_probe is not None else contextlib.nullcontext():
            yield
        if record:
            self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - t0

    def distill_class(self, task: ClassTask) -> torch.Tensor:
        """Return `task.ipc` images of class `task.label`, float in [0, 1], shape (ipc, C, H, W)."""
        raise NotImplementedError

    @classmethod
    def fine_tuning(cls, config) -> FineTuning | None:
        """The fine-tuned backbone this config samples from (None: the suite's backbone as it is). The harness
        trains it once per base backbone, fine-tuning and training split, and hands it over as `backbone`."""
        return None

    @classmethod
    def fine_tune_objective(cls, config) -> FineTuneObjective:
        raise NotImplementedError

    @classmethod
    def selects_across_classes(cls, config) -> bool:
        """True: `distill_class` returns `candidates_per_class` candidates, and once every class has them the
        harness calls `select_across_classes` with all of them (a choice made jointly across classes)."""
        return False

    @classmethod
    def candidates_per_class(cls, config, ipc: int) -> int:
        return ipc

    def select_across_classes(self, tasks: list[ClassTask], candidates: list[torch.Tensor]) -> list[torch.Tensor]:
        """Indices of the `ipc` images kept from each class's candidates (float in [0, 1])."""
        raise NotImplementedError

    @classmethod
    def default_config(cls):
        return cls.Config(**cls.defaults)

    @classmethod
    def needs_for(cls, config) -> frozenset[str]:
        """What this config needs; `needs` unless a setting adds something (e.g. CaO2's `condition: auto`
        needs the teacher's validation accuracy, which on ImageNet-1k costs a pass over 50,000 images)."""
        return cls.needs

    @classmethod
    def real_images_needed(cls, config, ipc: int) -> int:
        """The fewest training images a class must have for this method at `ipc` (a method that needs
        `real_images`): the harness checks it against the data before any work starts."""
        return ipc

    @classmethod
    def work(cls, config, ipc: int, real_per_class: int) -> Work | None:
        """The model evaluations one class costs at `ipc` with `real_per_class` training images; None where the
        method has not declared it (the plan then says its generation cost is unknown)."""
        return None

    @classmethod
    def own_network(cls, config, image_size: int) -> tuple[str, dict, int] | None:
        """The network the method builds and runs itself, where it has one (DM's randomly initialised ConvNet): its
        timm name, options and the side of its input for the suite's `image_size`, which the plan sizes to price
        `Work.network`. None: it has none."""
        return None

    @classmethod
    def rehearsal_config(cls, config, batch: int):
        """`config` with `rehearsal_settings` and every batch setting of `stage_batches` at `batch`."""
        batches = {f: batch for f in cls.stage_batches.values() if isinstance(f, str)}
        return dataclasses.replace(config, **{**cls.rehearsal_settings, **batches})

    @classmethod
    def paired_anchor(cls, config):
        """`config` with the paired switches at the family's defaults: the same for every variant."""
        root = next(c for c in cls.__mro__ if getattr(c, "name", None) == (cls.family or cls.name))
        defaults = root.default_config()
        return dataclasses.replace(config, **{f: getattr(defaults, f) for f in cls.paired_switches})

    @classmethod
    def seed_identity(cls, config) -> tuple[str, dict] | None:
        """None: a class's draws are seeded by this method and its whole config. A method with paired
        switches returns its family and its paired anchor's identity, the same for every variant."""
        if not cls.paired_switches:
            return None
        return cls.family or cls.name, identity_fields(cls.paired_anchor(config))


def real_as_float(real: torch.Tensor) -> torch.Tensor:
    return real.float().div(255)


def draw_real(task: ClassTask, gen: torch.Generator, k: int | None = None) -> torch.Tensor:
    """Indices of `k` (default: IPC) of the class's real images drawn uniformly without replacement from `gen`."""
    wanted = f"IPC {task.ipc}" if k is None else f"the {k} it draws"
    k = task.ipc if k is None else k
    if len(task.real) < k:
        raise ValueError(f"class {task.key} has {len(task.real)} real images, fewer than {wanted}")
    return torch.randperm(len(task.real), generator=gen)[:k]


def fit_to_task(images: torch.Tensor, task: ClassTask) -> torch.Tensor:
    """Backbone output → the suite's channels and size."""
    if images.shape[1] != task.channels:
        images = images.mean(1, keepdim=True) if task.channels == 1 else images.expand(-1, task.channels, -1, -1)
    if images.shape[-1] != task.image_size:
        images = F.interpolate(
            images, size=(task.image_size, task.image_size), mode="bilinear", antialias=True, align_corners=False
        ).clamp(0, 1)
    return images


@dataclass(frozen=True)
class FeatureSelectionConfig:
    normalize: bool = True  # L2-normalise the features before selecting


class FeatureSelection(Method):
    """Coreset selection on the teacher's pooled penultimate features (herding, k-center): the class's real
    images in the order `order(features, k)` chooses them."""

    Config = FeatureSelectionConfig
    needs = frozenset({"teacher", "real_images"})

    @staticmethod
    def order(features: torch.Tensor, k: int) -> torch.Tensor:
        raise NotImplementedError

    stage_batches = {"features": TEACHER_BATCH}

    @classmethod
    def work(cls, config, ipc, real_per_class):
        return Work(teacher=real_per_class)  # features of every real image of the class

    def distill_class(self, task: ClassTask) -> torch.Tensor:
        images = real_as_float(task.real)
        with self.stage("features", record=False):
            feats = teacher_features(self.teacher, images.to(self.device)).cpu()
        feats = F.normalize(feats, dim=1) if self.config.normalize else feats
        return images[self.order(feats, task.ipc)]


@torch.no_grad()
def teacher_features(teacher, images01: torch.Tensor, batch_size: int = TEACHER_BATCH) -> torch.Tensor:
    return torch.cat([teacher.features(images01[i : i + batch_size]) for i in range(0, len(images01), batch_size)])


@torch.no_grad()
def teacher_logits(teacher, images01: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The teacher's logits (float, CPU) over all its outputs. A pretrained ImageNet-1k teacher is read over all
    1,000, as the papers' selectors and soft-label teachers (torchvision's ResNet-18) are: a Woof sample the
    teacher calls a breed outside the suite is not "correct" just because that breed is not a suite class.
    A suite-trained teacher's outputs are the suite's classes."""
    full = len(teacher.class_indices) > 0
    return torch.cat(
        [
            (teacher.model(teacher.prepare_input(x)) if full else teacher(x)).float().cpu()
            for x in images01.split(batch_size)
        ]
    )


def teacher_output_index(teacher, label: int) -> int:
    """Which of `teacher_logits`' columns is the suite's class `label`."""
    return int(teacher.class_indices[label]) if len(teacher.class_indices) > 0 else label
