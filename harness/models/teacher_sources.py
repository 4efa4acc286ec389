"""Teacher sources: where a suite's teacher comes from, one class each, registered as generators are
(harness/models/generators/registry.py). A suite names the kind (`teacher.kind`: trained or timm); a kind's
sources tell themselves apart by the fields the suite sets (`weights`: a checkpoint; `recipe`: torchvision's
recipe). The suite's checks, `prepare` and the plan ask the source; none of them branches on the kind
(docs/extending.md, "Add a teacher source").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from harness.core import cache
from harness.core.identity import CLASSES_DIR, class_list, config_hash, teacher_test_key
from harness.models.students import create_student, is_student
from harness.models.teachers import (
    Teacher,
    accuracy,
    import_teacher_checkpoint,
    load_timm_teacher,
    load_trained_teacher,
    save_teacher,
    train_recipe_teacher,
    train_teacher,
)

_SOURCES: list[type] = []


class TeacherSourceError(Exception):
    """A teacher cannot be had; one line naming the suite field (the stage adds the suite's file)."""


@dataclass
class Cluster:
    """The Ray cluster a stage reaches, handed in by it (the runtime floor sits above the models)."""

    gpus: Callable[[], int]  # connects, and counts the cluster's GPUs
    train_data_parallel: Callable  # prepare.train_data_parallel's signature
    storage_path: str


class TeacherSource:
    """One way to have a teacher, built around its suite section (a `TeacherConfig`). A subclass sets `kind`
    (the suite's word), `applies` where a kind has several sources, and writes `check`, `prepare`, `load`,
    `describe`; the plan reads `pretrained`, `input_size` and `training_epochs`."""

    kind: str = ""
    pretrained = False  # on ImageNet-1k, with its 1,000 outputs (the plan sizes that model)

    def __init__(self, config):
        self.config = config

    @classmethod
    def applies(cls, config) -> bool:
        return True

    def check(self, where: str, fail, image_size: int, check_options) -> None:
        """The suite's checks of the fields this source reads: `fail(field, message)` for the first mistake;
        `check_options(where, arch, options, image_size, fail)` checks a model's options."""

    def prepare(self, real, out: Path, where: str, cluster: Cluster | None) -> tuple[str, str, float | None]:
        """The teacher's source (what `load` reads), its identity hash and, for one trained on the suite's
        classes, its test accuracy; made into the cache if it must be. TeacherSourceError where it cannot."""
        raise NotImplementedError

    def load(self, source: str, classes: list[str], device="cpu") -> Teacher:
        raise NotImplementedError

    def describe(self, suite_name: str, test_accuracy: float | None) -> str:
        """One line for the board: which classifier this is and where it came from."""
        raise NotImplementedError

    def input_size(self, image_size: int) -> int:
        """The side of the images the teacher sees, for the plan."""
        return self.config.input_size

    def training_epochs(self) -> int | None:
        """The epochs `prepare` trains it for over the training split, for the plan; None: not trained here."""
        return None

    def has_batch_norm(self, image_size: int) -> bool:
        """Whether the teacher's network has batch-norm layers (whose running statistics SRe2L's recover matches):
        its architecture built on the meta device, no weights read."""
        t = self.config
        return _has_batch_norm(t.arch, json.dumps(t.arch_kwargs, sort_keys=True), self.pretrained, image_size)


_BATCH_NORM_SEEN: dict[tuple, bool] = {}


def _has_batch_norm(arch: str, kwargs_json: str, pretrained: bool, image_size: int) -> bool:
    key = (arch, kwargs_json, pretrained, image_size)
    if key not in _BATCH_NORM_SEEN:
        with torch.device("meta"):
            model = (
                timm.create_model(arch, pretrained=False, num_classes=1000)
                if pretrained
                else create_student(arch, 10, 3, image_size, **json.loads(kwargs_json))
            )
        _BATCH_NORM_SEEN[key] = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return _BATCH_NORM_SEEN[key]


def register_teacher_source(cls):
    if not cls.kind or cls in _SOURCES:
        raise ValueError(f"teacher source {cls.__name__} has no kind or is registered twice")
    _SOURCES.append(cls)
    return cls


def list_teacher_kinds() -> list[str]:
    """The kinds a suite may name, in the order their sources registered."""
    return list(dict.fromkeys(cls.kind for cls in _SOURCES))


def teacher_source(config) -> TeacherSource:
    """The source of the suite's teacher section `config`. KeyError for a kind no source registered."""
    found = [cls for cls in _SOURCES if cls.kind == config.kind and cls.applies(config)]
    if not found:
        raise KeyError(f"unknown teacher kind {config.kind!r}; known: {', '.join(list_teacher_kinds())}")
    if len(found) > 1:
        raise ValueError(f"teacher sources {', '.join(c.__name__ for c in found)} all apply to {config}")
    return found[0](config)


def _accuracy_line(test_accuracy: float | None) -> str:
    return f", test accuracy {test_accuracy:.1%}" if test_accuracy is not None else ""


@register_teacher_source
class TrainedTeacher(TeacherSource):
    """Trained by `prepare` on the suite's training split with the harness's small recipe (`teacher.train`)."""

    kind = "trained"

    @classmethod
    def applies(cls, config) -> bool:
        return not config.weights and config.recipe is None

    def check(self, where: str, fail, image_size: int, check_options) -> None:
        t = self.config
        if not is_student(t.arch):
            fail(f"{where}.arch", f"unknown architecture {t.arch!r}")
        if t.arch_kwargs:
            check_options(f"{where}.arch_kwargs", t.arch, t.arch_kwargs, t.input_size if t.recipe else image_size, fail)

    def prepare(self, real, out: Path, where: str, cluster: Cluster | None) -> tuple[str, str, float | None]:
        path, key = self.make(real, Path(out), where, cluster)
        teacher = load_trained_teacher(path)
        if real.test is None:  # a hyperparameter search: the test split is not loaded, and not read
            return str(path), key, None
        acc = cache.ensure_json(
            Path(out) / "cache" / f"teacher-test-{teacher_test_key(key, real.test.fingerprint())}.json",
            "teacher's test accuracy",
            ("accuracy",),
            "measuring it again",
            lambda: {
                "accuracy": accuracy(teacher, real.test.load(torch.arange(len(real.test))), real.test.labels),
                "images": len(real.test),
            },
            from_weights=True,
        )["accuracy"]
        cache.log(f"[prepare] teacher: {self.config.arch} {key}, test accuracy {acc:.2%}")
        return str(path), key, acc

    def make(self, real, out: Path, where: str, cluster: Cluster | None) -> tuple[Path, str]:
        """The teacher file in the cache, and its identity hash."""
        t = self.config
        identity = {
            "kind": self.kind,
            "train": asdict(t.train),
            "arch": t.arch,
            "data": real.train.fingerprint(),
            "classes": real.classes,
        }
        if t.arch_kwargs:  # only when set, so the identity of teachers made before the option existed holds
            identity["arch_kwargs"] = t.arch_kwargs
        key = config_hash(identity)
        where = cache.cached_dir(out, f"teacher-{key}")
        path = where / "teacher.pt"

        def train(path: Path) -> None:
            cache.log(f"[prepare] teacher: training {t.arch} {key}")
            with cache.filling(where):
                where.mkdir(parents=True, exist_ok=True)
                train_teacher(
                    real.train.load(torch.arange(len(real.train))),
                    real.train.labels,
                    len(real.classes),
                    t.arch,
                    t.train,
                    path,
                    arch_kwargs=t.arch_kwargs,
                )

        cache.ensure(path, "teacher", load_trained_teacher, "training it again", train)
        return path, key

    def load(self, source: str, classes: list[str], device="cpu") -> Teacher:
        return load_trained_teacher(Path(source), device)

    def describe(self, suite_name: str, test_accuracy: float | None) -> str:
        return f"{self.config.arch} trained on {suite_name} by prepare{_accuracy_line(test_accuracy)}"

    def input_size(self, image_size: int) -> int:
        return self.config.input_size if self.config.recipe else image_size

    def training_epochs(self) -> int | None:
        return self.config.train.epochs


@register_teacher_source
class CheckpointTeacher(TrainedTeacher):
    """A checkpoint trained on the suite's classes elsewhere (`teacher.weights`, e.g. RDED's observers),
    converted once into the cache (keyed by its bytes)."""

    @classmethod
    def applies(cls, config) -> bool:
        return bool(config.weights)

    def make(self, real, out: Path, where: str, cluster: Cluster | None) -> tuple[Path, str]:
        t = self.config
        source = Path(t.weights)
        if not source.is_file():
            raise TeacherSourceError(
                f"{where}.weights: {source} is not a file (a checkpoint trained on the suite's "
                f"classes, e.g. RDED's data/pretrain_models/<subset>_resnet18.pth)"
            )
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        key = config_hash(
            {
                "kind": self.kind,
                "weights_sha256": digest,
                "arch": t.arch,
                "arch_kwargs": t.arch_kwargs,
                "input_size": t.input_size,
                "classes": real.classes,
            }
        )
        path = out / "cache" / f"teacher-{key}" / "teacher.pt"

        def convert(path: Path) -> None:
            try:
                import_teacher_checkpoint(source, t.arch, len(real.classes), t.input_size, path, t.arch_kwargs)
            except ValueError as e:
                raise TeacherSourceError(f"{where}.weights: {e}") from None

        cache.ensure(path, where, load_trained_teacher, "converting the checkpoint again", convert)
        return path, key

    def describe(self, suite_name: str, test_accuracy: float | None) -> str:
        return (
            f"{self.config.arch} trained on {suite_name}'s classes, from {self.config.weights}"
            f"{_accuracy_line(test_accuracy)}"
        )

    def training_epochs(self) -> int | None:
        return None


@register_teacher_source
class RecipeTeacher(TrainedTeacher):
    """Trained from scratch on the suite's training split with torchvision's reference recipe (`teacher.recipe`,
    the recipe RDED's observers were trained with): through Ray Train on the cluster's GPUs where it has any (at
    most one per 32 images of the batch, torchvision's per-GPU batch), else in this process."""

    @classmethod
    def applies(cls, config) -> bool:
        return not config.weights and config.recipe is not None

    def make(self, real, out: Path, where: str, cluster: Cluster | None) -> tuple[Path, str]:
        t = self.config
        key = config_hash(
            {
                "kind": self.kind,
                "recipe": asdict(t.recipe),
                "arch": t.arch,
                "arch_kwargs": t.arch_kwargs,
                "input_size": t.input_size,
                "data": real.train.fingerprint(),
                "classes": real.classes,
            }
        )
        path = cache.cached_dir(out, f"teacher-{key}") / "teacher.pt"
        cache.ensure(
            path,
            "teacher",
            load_trained_teacher,
            "training it again",
            lambda path: self._train(real, key, path, cluster),
        )
        return path, key

    def _train(self, real, key: str, path: Path, cluster: Cluster | None) -> None:
        t = self.config
        workers = min(cluster.gpus(), max(1, t.recipe.batch_size // 32)) if cluster is not None else 0
        cache.log(
            f"[prepare] teacher: training {t.arch} {key} on {len(real.train)} images for {t.recipe.epochs} "
            f"epochs " + (f"through Ray Train on {workers} GPUs" if workers else "in this process")
        )
        images = real.train.load(torch.arange(len(real.train))).numpy()
        args = (real.train.labels, len(real.classes), t.arch, t.recipe, t.input_size)
        if not workers:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            teacher = train_recipe_teacher(images, *args, device=device, arch_kwargs=t.arch_kwargs)
            save_teacher(teacher.cpu(), t.arch, len(real.classes), path, **t.arch_kwargs)
            return
        cluster.train_data_parallel(images, args, t, path, workers, use_gpu=True, storage_path=cluster.storage_path)

    def describe(self, suite_name: str, test_accuracy: float | None) -> str:
        return (
            f"{self.config.arch} trained on {suite_name} by prepare (torchvision's reference recipe, as RDED's "
            f"observers){_accuracy_line(test_accuracy)}"
        )

    def training_epochs(self) -> int | None:
        return self.config.recipe.epochs


@register_teacher_source
class TimmTeacher(TeacherSource):
    """A timm model pretrained on ImageNet-1k (`teacher.weights`: a tag, hub id or local file), its outputs picked
    by the suite's WNIDs (`teacher.classes`: the model's class list)."""

    kind = "timm"
    pretrained = True

    def check(self, where: str, fail, image_size: int, check_options) -> None:
        t = self.config
        if not (CLASSES_DIR / f"{t.classes}.txt").is_file():
            fail(f"{where}.classes", f"class list {t.classes!r} not found in {CLASSES_DIR}")
        if t.recipe is not None:
            fail(f"{where}.recipe", "only a teacher of kind trained is trained with a recipe")

    def prepare(self, real, out: Path, where: str, cluster: Cluster | None) -> tuple[str, str, float | None]:
        t = self.config
        try:
            load_timm_teacher(t.arch, t.weights, real.classes, class_list(t.classes), t.input_size)
        except Exception as e:
            raise TeacherSourceError(
                f"{where}.weights: cannot load {t.weights!r} for {t.arch} ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); without network, set it to a "
                f"local weights file"
            ) from None
        return t.weights or "", config_hash({"arch": t.arch, "weights": t.weights, "classes": t.classes}), None

    def load(self, source: str, classes: list[str], device="cpu") -> Teacher:
        t = self.config
        return load_timm_teacher(t.arch, t.weights, classes, class_list(t.classes), t.input_size, device)

    def describe(self, suite_name: str, test_accuracy: float | None) -> str:
        return (
            f"{self.config.arch} pretrained on ImageNet-1k ({self.config.weights}), outputs picked by the "
            f"suite's WNIDs{_accuracy_line(test_accuracy)}"
        )
