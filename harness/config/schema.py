"""What a suite is: the dataclasses a suite YAML becomes (harness/config/loader.py `load_suite` builds and checks them),
and the error every mistake in one raises."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config.text import BENCHMARKS_DIR as BENCHMARKS_DIR  # re-exported: the suites folder, the error
from harness.config.text import SuiteError as SuiteError
from harness.core.identity import CLASSES_DIR, FULL_DATA, read_class_list
from harness.models.measures import DiversityConfig
from harness.models.protocols import Protocol, reference_protocol
from harness.models.teacher_sources import teacher_source
from harness.models.teachers import TeacherTrainConfig, TorchvisionRecipe
from methods import get_method


@dataclass
class DataConfig:
    format: str  # "idx" (Fashion-MNIST files) or "imagefolder" (ImageNet layout)
    root: str
    image_size: int = 28
    val_per_class: int = 500  # carved from the training set, for hyperparameter search only
    val_seed: int = 0
    # imagefolder: a class list in harness/classes/ (by name) or a file path; `auto`: the train folder's
    # sub-folders, sorted by name (torchvision's ImageFolder order); or the folder names inline, in label order.
    classes: str | list[str] | None = None
    train_dir: str = "train"
    test_dir: str = "val"
    max_train_per_class: int | None = None
    channels: int | str = "auto"  # imagefolder: 1, 3, or auto (1 where the images are grey); idx is 1
    # imagefolder: every image is decoded once before any compute (cached); an unreadable one is refused by name,
    # or, with this set, left out and counted on the board's notes.
    skip_unreadable: bool = False

    def class_list_path(self) -> Path:
        p = Path(self.classes)
        return p if p.suffix == ".txt" else CLASSES_DIR / f"{self.classes}.txt"

    def names_classes_itself(self) -> bool:
        """The suite lists its classes itself (auto or inline) rather than naming a class-list file."""
        return isinstance(self.classes, list) or self.classes == "auto"

    def class_keys(self) -> list[str]:
        if isinstance(self.classes, list):
            return list(self.classes)
        if self.classes == "auto":
            train = Path(self.root) / self.train_dir
            # A hidden folder (.ipynb_checkpoints, .git, .cache) is a tool's, never a class.
            return (
                sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
                if train.is_dir()
                else []
            )
        return read_class_list(self.class_list_path())

    def class_names(self) -> list[str]:
        if self.names_classes_itself():
            return self.class_keys()
        names = self.class_list_path().with_suffix(".names.txt")
        return read_class_list(names) if names.exists() else self.class_keys()


@dataclass
class BackboneConfig:
    kind: str  # a registered generator (harness/models/generators/): pixel-dit, dit
    pretrained: str | None = None  # hub id or local directory (kind: dit)
    vae: str | None = "subfolder"  # "subfolder", a hub id / directory, or null
    dtype: str = "float32"
    # The class list of a pretrained backbone's labels (kind: dit), e.g. imagenet-1k: each suite class is
    # conditioned on its own index there, found by WNID. None: the suite's class order (a backbone trained on it).
    classes: str | None = None
    # A kind `prepare` trains (pixel-dit, a MAR without `pretrained`): its training settings, built into the kind's
    # own dataclass (`Generator.train_config`) when the suite is loaded.
    train: Any = None
    check_per_class: int = 100  # the backbone check: teacher agreement on fresh samples
    check_min_agreement: float = 0.75
    check_cfg_scale: float = 4.0
    check_steps: int = 50
    # Classifier-free guidance combines the first N noise channels; the rest are the conditional pass's output.
    # None: DiT's 3 of 4 for kind dit (the guidance of every DiT-based paper), every channel for pixel-dit.
    guided_channels: int | None = None
    # A text-conditioned backbone (kind stable-diffusion): the prompt of a class, a template over its name in
    # `classes`' names file, and the null condition's prompt (the empty prompt SD's guidance was trained on; a
    # method whose paper prompted otherwise asks for its own, methods/base.py `Method.prompts`).
    prompt: str = "{name}"
    null_prompt: str = ""

    def __post_init__(self):
        if self.guided_channels is not None and self.guided_channels < 1:
            raise ValueError(f"guided_channels: must be at least 1, got {self.guided_channels}")


@dataclass
class TeacherConfig:
    kind: str  # a registered teacher source (harness/models/teacher_sources.py):
    # trained (on the suite's classes) or timm (pretrained on ImageNet-1k)
    arch: str = "convnet3"
    # kind timm: a timm tag / hub id or a local file. kind trained: a local checkpoint trained on the suite's
    # classes, in the suite's order (e.g. RDED's observers), used instead of training one; "" is none.
    weights: str | None = None
    classes: str = "imagenet-1k"  # the WNIDs of the pretrained model's outputs, in order
    input_size: int = 224
    train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {channels: [16, 32, 64, 128]} (kind: trained)
    # kind trained: train with torchvision's reference recipe (RDED's observers) instead of `train`'s.
    recipe: TorchvisionRecipe | None = None
    # The teacher whose outputs protocols with soft labels train on, where it is not this one (the selector methods
    # read): RDED and CaO2 relabel the ImageNet subsets with a ResNet-18 trained on the subset.
    relabel: TeacherConfig | None = None


@dataclass
class FullDataConfig:
    """The full-data reference row: each student trained once on the whole training split (less validation)
    with the suite's reference recipe (harness/models/protocols.py), for `epochs` epochs — or, with `patience`, until
    its validation accuracy stops improving (at most `epochs`; the lr drops `lr_drops` times first; see
    harness/models/training.py `Plateau`). 0 turns it off (ImageNet-1k does not fit the in-memory loader; its suites
    leave it off)."""

    epochs: int = 0
    batch_size: int = 128
    patience: int | None = None
    lr_drops: int = 2

    def __post_init__(self):
        if self.patience is not None and self.patience < 1:
            raise ValueError(
                f"patience: must be at least 1 epoch (or null: a fixed number of epochs), got {self.patience}"
            )
        if self.lr_drops < 0:
            raise ValueError(f"lr_drops: must be 0 or more, got {self.lr_drops}")


@dataclass
class CrossArchConfig:
    """The cross-architecture study (`--cross-arch`): every student trained on one distilled set with every
    teacher as the source of soft labels (the shape of CaO2's Table 4)."""

    method: str = ""
    ipc: int = 10
    teachers: list[TeacherConfig] = field(default_factory=list)
    students: list[str] = field(default_factory=list)
    seeds: int = 1


# The protocol of a paper's number that is the higher of its evaluations with hard and with soft labels (CaO2 and IMS3
# report so): compared with the board's best-of-protocols table.
BEST_OF_PROTOCOLS = "best-of-protocols"


@dataclass
class ReportedEntry:
    """One number a paper prints: accuracy (%) and std as printed, of `method` at `ipc` images per class, with
    `student` trained under `protocol`, from `table` of `paper`. `method: full-data` (IPC 0) is a full-data
    reference: each student trained on the whole training set."""

    method: str
    student: str
    protocol: str
    accuracy: float
    paper: str
    table: str
    ipc: int = 0
    std: float | None = None
    note: str = ""

    @property
    def kind(self) -> str:
        return FULL_DATA if self.method == FULL_DATA else "distilled"


@dataclass
class ReportedConfig:
    """The papers' own numbers for this suite's data (harness/report/leaderboard.py shows them beside, never inside,
    the measured ones). Names that are neither the suite's nor timm's are declared here with what they are."""

    papers: dict[str, str]  # short cite → the full reference
    entries: list[ReportedEntry]
    not_implemented: dict[str, str] = field(default_factory=dict)  # methods ddbench does not run → what they are
    protocols: dict[str, str] = field(default_factory=dict)  # evaluation labels not in the suite → what they mean
    students: dict[str, str] = field(default_factory=dict)  # architectures not in timm's registry → what they are
    # A reported student → the measured student it is, per protocol, where the papers train another network under
    # one name (their "ResNet-18" is Minimax's instance-norm one under their SGD recipe, torchvision's under RDED's).
    measured_as: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class SearchedConfig:
    """A method's best config from a hyperparameter search on the validation split (harness/stages/search.py writes it
    as a suite fragment, `--out/search/<method>.yaml`, that a profile includes): its set is made and evaluated
    beside the suite's own config of the method, and shown as its own row, "searched on val (N trials)"."""

    config: dict[str, Any]  # the searched fields; the others are the suite's config of the method
    trials: int
    search: str = ""  # the search's id: its trial rows in the result store carry it
    ipc: int = 0
    student: str = ""
    protocol: str = ""
    val_accuracy: float | None = None
    default_val_accuracy: float | None = None  # the suite's own config, the search's first trial


def _default_protocols() -> dict[str, Protocol]:
    reference = reference_protocol({})
    return {reference.name: reference}


@dataclass
class Suite:
    """A checked suite. `methods` and `protocols` hold typed configs, resolved once by `load_suite`: stages
    read them here and never go back to the YAML."""

    name: str
    data: DataConfig
    backbone: BackboneConfig
    teacher: TeacherConfig
    methods: dict[str, Any] = field(default_factory=dict)
    # Further generators, by kind, for the methods that declare they sample one (`Method.backbone_kind`): MAR's
    # methods beside a DiT, a paper's own Stable Diffusion. Every other method samples `backbone`.
    backbones: dict[str, BackboneConfig] = field(default_factory=dict)
    ipcs: list[int] = field(default_factory=lambda: [1, 10, 50])
    students: list[str] = field(default_factory=lambda: ["convnet3"])
    protocols: dict[str, Any] = field(default_factory=_default_protocols)
    seeds: int = 3
    seed: int = 0  # the distillation seed
    full_data: FullDataConfig = field(default_factory=FullDataConfig)
    # Students trained data-parallel through Ray Train, with this many workers (one GPU each where GPUs exist).
    distributed_students: dict[str, int] = field(default_factory=dict)
    cross_arch: CrossArchConfig | None = None
    # How distilled sets are compared with the real data (FID, precision, recall, ...): see harness/stages/diversity.py.
    diversity: DiversityConfig = field(default_factory=DiversityConfig)
    # Caveats a reader of the leaderboard needs beside the numbers (listed under its header).
    notes: list[str] = field(default_factory=list)
    # The papers' own numbers, shown beside the measured ones (None: the board has no reported section).
    reported: ReportedConfig | None = None
    profiles: dict[str, dict] = field(default_factory=dict)
    # Methods' searched configs, each evaluated beside the method's own (a profile includes them; see SearchedConfig).
    searched: dict[str, SearchedConfig] = field(default_factory=dict)
    source: str = ""

    def method_config(self, name: str):
        """The typed config of a method the suite lists (a method it does not list has no settings here)."""
        if name not in self.methods:
            raise SuiteError(f"{self.source}: methods.{name}: not in the suite (it has: {', '.join(self.methods)})")
        return self.methods[name]

    def backbone_of(self, name: str) -> BackboneConfig:
        """The backbone section method `name` samples: its declared kind's, else the suite's `backbone`."""
        kind = get_method(name).backbone_kind
        if kind is None or kind == self.backbone.kind:
            return self.backbone
        if kind not in self.backbones:
            raise SuiteError(
                f"{self.source}: methods.{name}: samples a {kind} backbone; add a backbones.{kind} section"
            )
        return self.backbones[kind]

    def for_method(self, name: str) -> Suite:
        """This suite as method `name` sees it: `backbone` is the section it samples (itself where that is the
        suite's own), so every stage reads one `backbone` for a method whichever generator it declares."""
        backbone = self.backbone_of(name)
        return self if backbone is self.backbone else dataclasses.replace(self, backbone=backbone)

    def bn_teacher(self) -> tuple[TeacherConfig, str] | None:
        """The teacher handed to methods that need `bn_teacher` and its place in the suite: the first of the
        relabelling teacher (the one protocols with soft labels read), the suite's teacher and the cross_arch teachers
        whose network has batch-norm layers. None: no teacher of the suite has them."""
        candidates = [(self.teacher.relabel, "teacher.relabel"), (self.teacher, "teacher")]
        if self.cross_arch is not None:
            candidates += [(t, f"cross_arch.teachers[{i}]") for i, t in enumerate(self.cross_arch.teachers)]
        for t, where in candidates:
            if t is not None and teacher_source(t).has_batch_norm(self.data.image_size):
                return t, where
        return None

    def backbone_sections(self) -> dict[str, BackboneConfig]:
        """Every backbone section by its place in the file: `backbone` and each `backbones.<kind>`."""
        return {"backbone": self.backbone, **{f"backbones.{k}": b for k, b in self.backbones.items()}}

    def with_method_config(self, name: str, config) -> Suite:
        """This suite with `name`'s config replaced (a search trial's, a searched one): what plans its set."""
        return dataclasses.replace(self, methods={**self.methods, name: config})

    def searched_config(self, name: str):
        """The typed config of `name`'s searched settings: the suite's config with the searched fields set."""
        return dataclasses.replace(self.method_config(name), **self.searched[name].config)
