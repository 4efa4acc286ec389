"""Suites: a YAML file says what to benchmark; `load_suite` turns it into checked dataclasses.

Every field is checked on load (name, type, range, files that must exist, known methods and students), so a
mistake costs one clear line — `benchmarks/x.yaml: data.root: ...` — not a traceback an hour into a run.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from methods import get_method, list_methods

from harness.models.generators import get_generator, list_generators
from harness.models.generators.pixel_dit import PixelDiTConfig
from harness.models.measures import DiversityConfig, DiversityError, check_config
from harness.models.data import IMAGE_EXTENSIONS
from harness.core.identity import CLASSES_DIR, FULL_DATA, read_class_list
from harness.models.protocols import Protocol, get_protocol, list_protocols, reference_protocol
from harness.models.students import create_student, is_student
from harness.models.teacher_sources import list_teacher_kinds, teacher_source
from harness.models.teachers import TeacherTrainConfig, TorchvisionRecipe

BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


class SuiteError(Exception):
    """A suite file is wrong; the message is one line naming the file and the field."""


@dataclass
class DataConfig:
    format: str                      # "idx" (Fashion-MNIST files) or "imagefolder" (ImageNet layout)
    root: str
    image_size: int = 28
    val_per_class: int = 500         # carved from the training set, for hyperparameter search only
    val_seed: int = 0
    # imagefolder: a class list in harness/classes/ (by name) or a file path; `auto`: the train folder's
    # sub-folders, sorted by name (torchvision's ImageFolder order); or the folder names inline, in label order.
    classes: str | list[str] | None = None
    train_dir: str = "train"
    test_dir: str = "val"
    max_train_per_class: int | None = None
    channels: int | str = "auto"     # imagefolder: 1, 3, or auto (1 where the images are grey); idx is 1

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
            return sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
        return read_class_list(self.class_list_path())

    def class_names(self) -> list[str]:
        if self.names_classes_itself():
            return self.class_keys()
        names = self.class_list_path().with_suffix(".names.txt")
        return read_class_list(names) if names.exists() else self.class_keys()


@dataclass
class BackboneConfig:
    kind: str                              # a registered generator (harness/models/generators/): pixel-dit, dit
    pretrained: str | None = None          # hub id or local directory (kind: dit)
    vae: str | None = "subfolder"          # "subfolder", a hub id / directory, or null
    dtype: str = "float32"
    # The class list of a pretrained backbone's labels (kind: dit), e.g. imagenet-1k: each suite class is
    # conditioned on its own index there, found by WNID. None: the suite's class order (a backbone trained on it).
    classes: str | None = None
    train: PixelDiTConfig = field(default_factory=PixelDiTConfig)  # kind: pixel-dit
    check_per_class: int = 100             # the backbone check: teacher agreement on fresh samples
    check_min_agreement: float = 0.75
    check_cfg_scale: float = 4.0
    check_steps: int = 50
    # Classifier-free guidance combines the first N noise channels; the rest are the conditional pass's output.
    # None: DiT's 3 of 4 for kind dit (the guidance of every DiT-based paper), every channel for pixel-dit.
    guided_channels: int | None = None

    def __post_init__(self):
        if self.guided_channels is not None and self.guided_channels < 1:
            raise ValueError(f"guided_channels: must be at least 1, got {self.guided_channels}")


@dataclass
class TeacherConfig:
    kind: str                              # a registered teacher source (harness/models/teacher_sources.py):
                                           # trained (on the suite's classes) or timm (pretrained on ImageNet-1k)
    arch: str = "convnet3"
    # kind timm: a timm tag / hub id or a local file. kind trained: a local checkpoint trained on the suite's
    # classes, in the suite's order (e.g. RDED's observers), used instead of training one; "" is none.
    weights: str | None = None
    classes: str = "imagenet-1k"           # the WNIDs of the pretrained model's outputs, in order
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
            raise ValueError(f"patience: must be at least 1 epoch (or null: a fixed number of epochs), got {self.patience}")
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
    papers: dict[str, str]                                     # short cite → the full reference
    entries: list[ReportedEntry]
    not_implemented: dict[str, str] = field(default_factory=dict)  # methods ddbench does not run → what they are
    protocols: dict[str, str] = field(default_factory=dict)    # evaluation labels not in the suite → what they mean
    students: dict[str, str] = field(default_factory=dict)     # architectures not in timm's registry → what they are
    # A reported student → the measured student it is, per protocol, where the papers train another network under
    # one name (their "ResNet-18" is Minimax's instance-norm one under their SGD recipe, torchvision's under RDED's).
    measured_as: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class SearchedConfig:
    """A method's best config from a hyperparameter search on the validation split (harness/stages/search.py writes it
    as a suite fragment, `--out/search/<method>.yaml`, that a profile includes): its set is made and evaluated
    beside the suite's own config of the method, and shown as its own row, "searched on val (N trials)"."""
    config: dict[str, Any]                 # the searched fields; the others are the suite's config of the method
    trials: int
    search: str = ""                       # the search's id: its trial rows in the result store carry it
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
    ipcs: list[int] = field(default_factory=lambda: [1, 10, 50])
    students: list[str] = field(default_factory=lambda: ["convnet3"])
    protocols: dict[str, Any] = field(default_factory=_default_protocols)
    seeds: int = 3
    seed: int = 0                          # the distillation seed
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

    def with_method_config(self, name: str, config) -> "Suite":
        """This suite with `name`'s config replaced (a search trial's, a searched one): what plans its set."""
        return dataclasses.replace(self, methods={**self.methods, name: config})

    def searched_config(self, name: str):
        """The typed config of `name`'s searched settings: the suite's config with the searched fields set."""
        return dataclasses.replace(self.method_config(name), **self.searched[name].config)


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (list, dict):
        return "a list" if origin is list else "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return _TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value, tp, where: str, source: str):
    """Check `value` against the annotation `tp`; returns the (possibly built) value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for alternative in inner[1:]:  # e.g. `int | str`: the first type the value is, else the first's message
            if isinstance(value, typing.get_origin(alternative) or alternative):
                return _coerce(value, alternative, where, source)
        return _coerce(value, inner[0], where, source)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, source)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise SuiteError(f"{source}: {where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise SuiteError(f"{source}: {where}: expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, f"{where} key", source): _coerce(v, val_tp, f"{where}.{k}", source)
                for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise SuiteError(f"{source}: {where}: expected {_describe(tp)}, got {value!r}")
    return value


def build(cls, raw, where: str, source: str):
    """Build dataclass `cls` from a mapping, rejecting unknown, missing and mistyped fields."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SuiteError(f"{source}: {where or 'top level'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    for key in raw:
        if key not in fields:
            raise SuiteError(f"{source}: {prefix}{key}: unknown field (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], prefix + name, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SuiteError(f"{source}: {prefix}{name}: missing (required)")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        # A config's own check says "field: why"; name the field in the path, as every other check does.
        field_name, _, why = str(e).partition(": ")
        if field_name in fields and why:
            raise SuiteError(f"{source}: {prefix}{field_name}: {why}") from None
        raise SuiteError(f"{source}: {where or 'top level'}: {e}") from None


_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _expand_env(value, where: str = "", source: str = ""):
    """`${VAR}` / `${VAR:-default}` in strings, so a suite can point at data without being edited. An unset
    `${VAR}` without a default is an error naming the field: expanded to "" it would point somewhere else."""
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k), source) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if isinstance(value, str):
        def expand(m):
            if m.group(1) not in os.environ and m.group(2) is None:
                raise SuiteError(f"{source}: {where}: environment variable {m.group(1)} is not set; set it, or "
                                 f"write ${{{m.group(1)}:-default}}")
            return os.environ.get(m.group(1), m.group(2) or "")
        return _ENV.sub(expand, value)
    return value


class _DuplicateKey(yaml.MarkedYAMLError):
    def __init__(self, where: str, first_line: int, mark):
        super().__init__(problem=f"duplicate key (first at line {first_line + 1})", problem_mark=mark)
        self.where = where


class _SuiteLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key given twice in one mapping (plain YAML keeps the later value silently),
    naming the key's path. Paths are handed down from each mapping to its children before they are built."""

    def construct_mapping(self, node, deep=False):
        paths = self.__dict__.setdefault("_paths", {})
        where = paths.get(id(node), "")
        first: dict = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            path = f"{where}.{key}" if where else str(key)
            if key is not None and key != "<<":
                if key in first:
                    raise _DuplicateKey(path, first[key], key_node.start_mark)
                first[key] = key_node.start_mark.line
            self._hand_down(value_node, path)
        return super().construct_mapping(node, deep)

    def _hand_down(self, node, path: str) -> None:
        self._paths[id(node)] = path
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._hand_down(item, f"{path}[{i}]")


def _parse_yaml(text: str, source: str):
    """The suite's YAML; a mistake is one line with its line and column."""
    try:
        return yaml.load(text, Loader=_SuiteLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        if isinstance(e, _DuplicateKey):
            raise SuiteError(f"{source}: {e.where}: {e.problem} at {at}: the later value would silently "
                             f"replace the first; keep one") from None
        what = "; ".join(part for part in (e.context, e.problem) if part)
        raise SuiteError(f"{source}: {at}: not valid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise SuiteError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_suite_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return BENCHMARKS_DIR / f"{name_or_path}.yaml"


def load_suite(name_or_path: str, profile: str = "full", overrides: dict | None = None,
               check_files: bool = True) -> Suite:
    """Load, merge the profile and CLI overrides, and check a suite. Raises SuiteError (one line)."""
    path = resolve_suite_path(name_or_path)
    source = str(path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in BENCHMARKS_DIR.glob("*.yaml")))
        raise SuiteError(f"{source}: no such suite file (suites in benchmarks/: {known})")
    raw = _parse_yaml(path.read_text(), source)
    if not isinstance(raw, dict):
        raise SuiteError(f"{source}: top level: expected a mapping")
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise SuiteError(f"{source}: profiles: expected a mapping of profile name to overrides")
    if profile != "full":
        if profile not in profiles:
            raise SuiteError(f"{source}: profiles.{profile}: no such profile (have: {', '.join(['full', *profiles])})")
        if not isinstance(profiles[profile], dict):
            raise SuiteError(f"{source}: profiles.{profile}: expected a mapping of the fields it overrides")
        raw = _merge(raw, _with_includes(profiles[profile], f"profiles.{profile}", path))
    # Profiles not chosen are not expanded: a variable only another profile uses need not be set.
    raw = {k: v if k == "profiles" else _expand_env(v, k, source) for k, v in _merge(raw, overrides or {}).items()}
    suite = build(Suite, raw, "", source)
    suite.source = source
    _check(suite, source, check_files)
    return suite


def _with_includes(profile: dict, where: str, suite_path: Path) -> dict:
    """A profile with the fragments its `include:` lists (files, relative to the suite's folder: e.g. a search's
    `search/d4m.yaml`) merged under its own fields."""
    includes = profile.get("include", [])
    includes = [includes] if isinstance(includes, str) else includes
    source = str(suite_path)
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise SuiteError(f"{source}: {where}.include: expected a list of YAML files")
    merged: dict = {}
    for i, name in enumerate(includes):
        path = Path(os.path.expandvars(name))
        path = path if path.is_absolute() else suite_path.parent / path
        if not path.is_file():
            raise SuiteError(f"{source}: {where}.include[{i}]: {path} is not a file")
        fragment = _parse_yaml(path.read_text(), str(path))
        if not isinstance(fragment, dict):
            raise SuiteError(f"{source}: {where}.include[{i}]: {path} is not a mapping of suite fields")
        merged = _merge(merged, fragment)
    return _merge(merged, {k: v for k, v in profile.items() if k != "include"})


def _check(s: Suite, source: str, check_files: bool) -> None:
    def fail(where, msg):
        raise SuiteError(f"{source}: {where}: {msg}")

    if not SAFE_NAME.fullmatch(s.name):
        fail("name", f"{s.name!r} names the suite's folders and files: use letters, digits, '.', '_' and '-' only, "
                     "starting with a letter or digit")
    if s.data.format not in ("idx", "imagefolder"):
        fail("data.format", f"must be idx or imagefolder, got {s.data.format!r}")
    if s.data.format == "imagefolder":
        if not s.data.classes:
            fail("data.classes", "required for imagefolder data: auto (the train folder's sub-folders), a list of "
                                 "folder names, or a class list such as imagenette")
        if isinstance(s.data.classes, list):
            if not s.data.classes or len(set(s.data.classes)) != len(s.data.classes):
                fail("data.classes", "the inline list must name each class folder once")
        elif s.data.classes != "auto" and not s.data.class_list_path().is_file():
            fail("data.classes", f"class list {s.data.class_list_path()} not found")
    if s.data.channels not in ("auto", 1, 3) or (s.data.format == "idx" and s.data.channels == 3):
        fail("data.channels", f"must be auto, 1 or 3 (idx data is 1), got {s.data.channels!r}")
    if s.data.image_size < 8:
        fail("data.image_size", f"must be at least 8, got {s.data.image_size}")
    if s.data.val_per_class < 1:
        fail("data.val_per_class", "must be at least 1")
    if s.data.max_train_per_class is not None:
        if s.data.max_train_per_class < 1:
            fail("data.max_train_per_class", f"must be at least 1 or null (no cap), got {s.data.max_train_per_class}")
        if s.data.val_per_class >= s.data.max_train_per_class:
            fail("data.val_per_class", f"{s.data.val_per_class} held out for validation leaves no training image of "
                                       f"the {s.data.max_train_per_class} per class data.max_train_per_class keeps")
    if check_files:
        root = Path(s.data.root)
        if not root.is_dir():
            hint = ("install it with `apt-get install -y dataset-fashion-mnist`" if s.data.format == "idx"
                    else "point data.root at an ImageNet-style folder (train/<wnid>/..., val/<wnid>/...)")
            fail("data.root", f"{root} does not exist; {hint}")
        if s.data.format == "imagefolder":
            _check_folders(s.data, fail)
    if s.backbone.kind not in list_generators():
        fail("backbone.kind", f"must be {' or '.join(list_generators())}, got {s.backbone.kind!r}")
    if s.backbone.classes is not None:
        path = CLASSES_DIR / f"{s.backbone.classes}.txt"
        if not path.is_file():
            fail("backbone.classes", f"class list {s.backbone.classes!r} not found in {CLASSES_DIR}")
        if s.data.format == "imagefolder" and (s.data.names_classes_itself() or s.data.class_list_path().is_file()):
            missing = sorted(set(s.data.class_keys()) - set(read_class_list(path)))
            if missing:
                fail("backbone.classes", f"{len(missing)} suite classes are not backbone labels, e.g. {missing[0]}")
    if s.backbone.dtype not in ("float32", "float16", "bfloat16"):
        fail("backbone.dtype", f"must be float32, float16 or bfloat16, got {s.backbone.dtype!r}")
    if not 0 <= s.backbone.check_min_agreement <= 1:
        fail("backbone.check_min_agreement", "must be a fraction in [0, 1]")
    for name in ("check_per_class", "check_steps"):
        if getattr(s.backbone, name) < 1:
            fail(f"backbone.{name}", f"must be at least 1, got {getattr(s.backbone, name)}")
    get_generator(s.backbone.kind).check(s.backbone, s.data.image_size, fail)
    if not s.ipcs or any(i < 1 for i in s.ipcs):
        fail("ipcs", f"must be a non-empty list of positive integers, got {s.ipcs}")
    for where, values in (("ipcs", s.ipcs), ("students", s.students)):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            fail(where, f"lists {', '.join(repeated)} more than once")
    if not s.students:
        fail("students", "no students listed (--students names none?)")
    if s.seeds < 1:
        fail("seeds", f"must be at least 1, got {s.seeds}")
    if not s.methods:
        fail("methods", "no methods listed")
    for name, raw in list(s.methods.items()):
        try:
            cls = get_method(name)
        except KeyError:
            fail(f"methods.{name}", f"unknown method (known: {', '.join(list_methods())})")
        if not isinstance(raw, cls.Config):
            s.methods[name] = build(cls.Config, {**cls.defaults, **(raw or {})}, f"methods.{name}", source)
        missing = [f for f in cls.search_space if not hasattr(s.methods[name], f)]
        if missing:
            fail(f"methods.{name}", f"its search_space names {', '.join(missing)}, not a field of "
                                    f"{cls.Config.__name__}")
    for name, searched in s.searched.items():
        if name not in s.methods:
            fail(f"searched.{name}", f"not one of the suite's methods (it has: {', '.join(s.methods)})")
        try:
            s.searched_config(name)
        except (TypeError, ValueError) as e:
            fail(f"searched.{name}.config", str(e))
        if searched.trials < 1:
            fail(f"searched.{name}.trials", f"must be at least 1, got {searched.trials}")
    for i, student in enumerate(s.students):
        if not is_student(student):
            fail(f"students[{i}]", f"unknown student {student!r}: not in timm's registry")
    _check_teacher(s.teacher, "teacher", fail, s.data.image_size)
    if s.full_data.epochs < 0:
        fail("full_data.epochs", f"must be ≥ 1, or 0 for no full-data row, got {s.full_data.epochs}")
    if s.full_data.batch_size < 1:
        fail("full_data.batch_size", f"must be at least 1, got {s.full_data.batch_size}")
    for student, workers in s.distributed_students.items():
        if student not in s.students or workers < 1:
            fail(f"distributed_students.{student}", "must name one of the suite's students with ≥ 1 workers")
    if s.cross_arch is not None:
        c = s.cross_arch
        if not c.method:
            fail("cross_arch.method", "missing: the method whose set every student trains on")
        if c.method not in s.methods:
            fail("cross_arch.method", f"{c.method!r} is not one of the suite's methods")
        if not c.teachers or not c.students:
            fail("cross_arch", "needs at least one teacher and one student")
        for name in ("ipc", "seeds"):
            if getattr(c, name) < 1:
                fail(f"cross_arch.{name}", f"must be at least 1, got {getattr(c, name)}")
        for i, t in enumerate(c.teachers):
            _check_teacher(t, f"cross_arch.teachers[{i}]", fail, s.data.image_size)
        for i, student in enumerate(c.students):
            if not is_student(student):
                fail(f"cross_arch.students[{i}]", f"unknown student {student!r}: not in timm's registry")
    try:
        check_config(s.diversity)
    except DiversityError as e:
        raise SuiteError(f"{source}: {e}") from None
    if check_files and s.diversity.inception_weights and not Path(s.diversity.inception_weights).is_file():
        fail("diversity.inception_weights", f"{s.diversity.inception_weights} is not a file")
    for name, raw in list(s.protocols.items()):
        try:
            cls = get_protocol(name)
        except KeyError:
            fail(f"protocols.{name}", f"unknown protocol (known: {', '.join(list_protocols())})")
        if not isinstance(raw, cls):
            s.protocols[name] = build(cls, raw, f"protocols.{name}", source)
    for name, protocol in s.protocols.items():
        for student, options in getattr(protocol, "student_kwargs", {}).items():
            _check_options(f"protocols.{name}.student_kwargs.{student}", student, options, s.data.image_size, fail)
    if s.reported is not None:
        _check_reported(s, fail)


# A validation split may take at most this share of any class's training images: 500 of Fashion-MNIST's 6,000
# (8 %) and 50 of ImageNet's ≥ 732 (7 %) are far below it; 500 of a 720-image class (69 %) is refused.
MAX_VAL_SHARE = 0.25


def _check_folders(d: DataConfig, fail) -> None:
    """An ImageFolder's splits and classes, before any compute: each missing folder named by its field, and a
    validation split that would take most of a small class refused (it would silently shrink what methods,
    the teacher and the backbone learn from)."""
    root = Path(d.root)
    for name, folder in (("data.train_dir", d.train_dir), ("data.test_dir", d.test_dir)):
        if not (root / folder).is_dir():
            found = sorted(p.name for p in root.iterdir() if p.is_dir())
            fail(name, f"{root / folder} is not a folder (folders in {root}: {', '.join(found) or 'none'}); "
                       f"set {name} to the split's folder")
    keys = d.class_keys()
    if not keys:
        fail("data.classes", f"auto: {root / d.train_dir} holds no class folders")
    smallest = None
    for key in keys:
        folder = root / d.train_dir / key
        if not folder.is_dir():
            fail("data.classes", f"class {key!r} has no folder {folder}")
        n = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        n = min(n, d.max_train_per_class) if d.max_train_per_class else n
        smallest = (n, key) if smallest is None or n < smallest[0] else smallest
    n, key = smallest
    if d.val_per_class > MAX_VAL_SHARE * n:
        fail("data.val_per_class", f"{d.val_per_class} would hold out more than {MAX_VAL_SHARE:.0%} of class "
                                   f"{key!r} ({n} training images) for validation; set it to at most "
                                   f"{max(1, int(MAX_VAL_SHARE * n))}")


def _check_reported(s: Suite, fail) -> None:
    r = s.reported
    implemented = set(list_methods())
    for name in r.not_implemented:
        if name in implemented or name == FULL_DATA:
            fail(f"reported.not_implemented.{name}", "is implemented in ddbench: report it under its own name")
    for name in r.protocols:
        if name in s.protocols or name == BEST_OF_PROTOCOLS:
            fail(f"reported.protocols.{name}", "is already a protocol of the suite's board: do not redeclare it")
    for name, by_protocol in r.measured_as.items():
        for protocol, student in by_protocol.items():
            if protocol not in s.protocols:
                fail(f"reported.measured_as.{name}.{protocol}", "not a protocol of the suite")
            if student not in s.students:
                fail(f"reported.measured_as.{name}.{protocol}", f"{student!r} is not one of the suite's students")
    if not r.entries:
        fail("reported.entries", "empty: list the papers' numbers, or leave the reported section out")
    timm_students = {name for name in {e.student for e in r.entries} if is_student(name)}  # one registry look-up each
    seen = set()
    for i, e in enumerate(r.entries):
        where = f"reported.entries[{i}]"
        if e.paper not in r.papers:
            fail(f"{where}.paper", f"{e.paper!r} is not in reported.papers (have: {', '.join(r.papers)})")
        if e.method not in s.methods and e.method not in r.not_implemented and e.method != FULL_DATA:
            fail(f"{where}.method", f"{e.method!r} is neither one of the suite's methods nor in "
                                    "reported.not_implemented")
        if (e.ipc == 0) != (e.kind == FULL_DATA):
            fail(f"{where}.ipc", f"must be ≥ 1 for a distilled set and 0 for {FULL_DATA}, got {e.ipc}")
        if e.student not in timm_students and e.student not in r.students:
            fail(f"{where}.student", f"{e.student!r} is neither in timm's registry nor in reported.students")
        if e.protocol not in s.protocols and e.protocol != BEST_OF_PROTOCOLS and e.protocol not in r.protocols:
            fail(f"{where}.protocol", f"{e.protocol!r} is neither a suite protocol, {BEST_OF_PROTOCOLS}, nor in "
                                      "reported.protocols")
        if not 0 < e.accuracy <= 100 or (e.std is not None and e.std < 0):
            fail(f"{where}.accuracy", f"must be a percentage in (0, 100] with a std ≥ 0, got {e.accuracy} ± {e.std}")
        key = (e.method, e.ipc, e.student, e.protocol, e.paper, e.table)
        if key in seen:
            fail(where, f"a second number for {e.method} at IPC {e.ipc}, {e.student}, {e.protocol} in "
                        f"{e.paper} {e.table}")
        seen.add(key)


# What a suite's name may be: it names folders (weights/<name>/) and files (results/<name>.jsonl).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _check_options(where: str, arch: str, options: dict, image_size: int, fail) -> None:
    """A model's options (`student_kwargs`, `arch_kwargs`) are ones it takes: built on the meta device (no memory,
    no compute), so a misspelt option fails here, not in every training trial after the sets are made."""
    if not is_student(arch):
        fail(where, f"unknown student {arch!r}: not in timm's registry")
    try:
        with torch.device("meta"):
            create_student(arch, 10, 3, image_size, **options)
    except (TypeError, ValueError, AssertionError) as e:
        fail(where, f"{arch} does not take {options}: {' '.join(str(e).split())}")


def _check_teacher(t: TeacherConfig, where: str, fail, image_size: int) -> None:
    if t.kind not in list_teacher_kinds():
        fail(f"{where}.kind", f"must be {' or '.join(list_teacher_kinds())}, got {t.kind!r}")
    teacher_source(t).check(where, fail, image_size, _check_options)
    if t.relabel is not None:
        _check_teacher(t.relabel, f"{where}.relabel", fail, image_size)
