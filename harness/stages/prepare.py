"""Prepare: what a suite needs before any method runs — the diffusion backbone and the teacher — and the
backbone check (does the teacher recognise the backbone's samples as their conditioning class?).

Everything is content-addressed: the key is a hash of the config and of the training data, so the same
suite reuses what an earlier run (or the repository's committed `weights/`) already made.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch
from tqdm.auto import tqdm

from harness.config.schema import BackboneConfig, Suite, TeacherConfig
from harness.core import atomic, cache
from harness.core.cache import log
from harness.core.identity import (
    backbone_check_key,
    class_list,
    config_hash,
    relabelled_protocol_key,
    teacher_val_key,
)
from harness.models import teacher_sources
from harness.models.data import RealData
from harness.models.generators import generator_for
from harness.models.generators.difffit import load_difffit_state
from harness.models.generators.registry import Generator, GeneratorError
from harness.models.teacher_sources import Cluster, TeacherSourceError
from harness.models.teachers import Teacher, accuracy, save_teacher, train_recipe_teacher
from harness.runtime.data_parallel import cluster_gpus, run_data_parallel
from methods import get_method
from methods.base import MethodContext


class PrepareError(Exception):
    """A model the suite names cannot be had; one line that says which and what to do."""


@dataclass
class PreparedTeacher:
    config: TeacherConfig
    source: str  # a ddbench teacher file, or a timm weights spec
    hash: str
    test_accuracy: float | None
    description: str


@dataclass
class FineTuned:
    """A method's fine-tuned backbone (harness/stages/fine_tune.py)."""

    hash: str  # its identity: sets sampled from it carry it in theirs
    source: str | None = None  # its DiffFit parameters; None where a run that only draws the board has none cached
    cost: dict | None = None  # what training it took (seconds, peak memory, steps, workers, ...)
    check: dict | None = None  # the base backbone's check run on it, where the run checks

    def manifest_entry(self) -> dict:
        """What a set's manifest records of the fine-tune it was sampled from."""
        return {"hash": self.hash, **self.cost, **({"check": self.check} if self.check is not None else {})}


@dataclass
class PreparedBackbone:
    """A further backbone section (`backbones.<kind>`) prepared: what `Prepared.for_kind` puts in its view."""

    config: BackboneConfig
    source: str
    hash: str
    conditions: list[int]
    check: dict | None = None


@dataclass
class Prepared:
    """The suite's prepared artefacts: where they are, their identities (hashes) for downstream cache keys,
    and what loading them takes, so that any worker loads them from this object alone."""

    classes: list[str]  # the suite's class keys, in order
    backbone: BackboneConfig
    backbone_source: str  # local directory or hub id
    backbone_hash: str
    conditions: list[int]  # the backbone's label of each suite class
    teacher: TeacherConfig
    teacher_source: str  # a trained teacher file, or a timm weights spec
    teacher_hash: str
    teacher_test_accuracy: float | None
    backbone_check: dict | None
    teacher_val_accuracy: float | None = None  # only where a suite's method needs it
    teacher_description: str = ""  # one line for the board: what the teacher is, where it came from
    relabel: PreparedTeacher | None = None  # relabels for protocols that train on a teacher's outputs
    # The teacher with batch norm (`Suite.bn_teacher`), where a method of the run needs `bn_teacher`.
    bn_teacher: PreparedTeacher | None = None
    # By method: the fine-tuned backbone it samples from.
    fine_tuned: dict[str, FineTuned] = field(default_factory=dict)
    # The further backbones (`Suite.backbones`) the methods of this run sample, by kind.
    others: dict[str, PreparedBackbone] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)  # the classes' names, in order: what the check prints

    def for_kind(self, kind: str) -> Prepared:
        """This object as a method on backbone kind `kind` sees it: the backbone fields are that backbone's."""
        if kind == self.backbone.kind:
            return self
        if kind not in self.others:
            raise PrepareError(f"no {kind} backbone was prepared (the suite's backbones.{kind}, for the methods run)")
        o = self.others[kind]
        return dataclasses.replace(
            self,
            backbone=o.config,
            backbone_source=o.source,
            backbone_hash=o.hash,
            conditions=o.conditions,
            backbone_check=o.check,
        )

    def for_method(self, name: str) -> Prepared:
        """This object as method `name` sees it (`Suite.for_method`): itself, unless the method declares another
        kind of backbone, whose prepared fields then stand in the backbone's."""
        kind = get_method(name).backbone_kind
        return self if kind is None else self.for_kind(kind)

    def load_backbone(self, device="cpu", fine_tuned: FineTuned | None = None):
        """The suite's backbone, or the fine-tuned one `fine_tuned` (an entry of `self.fine_tuned`) names."""
        backbone = generator_for(self.backbone).load(self.backbone_source, device)
        if fine_tuned is not None:
            load_difffit_state(backbone, torch.load(fine_tuned.source, map_location=device, weights_only=True))
        return backbone

    def load_teacher(self, device="cpu") -> Teacher:
        return load_teacher(self.teacher, self.teacher_source, self.classes, device)

    def load_relabel_teacher(self, device="cpu") -> Teacher:
        """The teacher whose outputs protocols with `needs_teacher` train on."""
        if self.relabel is None:
            return self.load_teacher(device)
        return load_teacher(self.relabel.config, self.relabel.source, self.classes, device)

    @property
    def relabel_hash(self) -> str:
        """The identity of the teacher that relabels: the suite's own where it names no other."""
        return self.relabel.hash if self.relabel is not None else self.teacher_hash

    def protocol_hash(self, protocol) -> str:
        """A trial's protocol hash: the recipe's identity and, where a teacher other than the suite's own gives
        the soft labels, that teacher's hash too, so rows relabelled by another subset teacher are not reused.
        (Rows relabelled by the suite's own teacher keep the recipe's identity alone, as they always had.)"""
        relabelled = protocol.needs_teacher and self.relabel is not None
        return relabelled_protocol_key(protocol.identity(), self.relabel.hash if relabelled else None)

    def load_bn_teacher(self, device="cpu") -> Teacher:
        if self.bn_teacher is None:
            raise PrepareError("no teacher with batch norm was prepared (a method needing bn_teacher was not planned)")
        return load_teacher(self.bn_teacher.config, self.bn_teacher.source, self.classes, device)

    def teacher_note(self) -> str:
        if self.relabel is None:
            return f"teacher: {self.teacher_description}"
        return (
            f"teacher (methods, backbone check, diversity): {self.teacher_description}; "
            f"soft labels from: {self.relabel.description}"
        )

    def provide(self, context: MethodContext, needs: frozenset[str]) -> MethodContext:
        """`context` with whatever of `needs` it still lacks loaded: a worker loads each model once, and every
        method it runs shares them. (A method's fine-tuned backbone is its own: `harness.stages.distill` loads it.)"""
        if "backbone" in needs and context.backbone is None:
            context.backbone = self.load_backbone(context.device)
        if "teacher" in needs and context.teacher is None:
            context.teacher = self.load_teacher(context.device)
        if "relabel_teacher" in needs and context.relabel_teacher is None:
            context.relabel_teacher = self.load_relabel_teacher(context.device)
        if "bn_teacher" in needs and context.bn_teacher is None:
            context.bn_teacher = self.load_bn_teacher(context.device)
        context.teacher_val_accuracy = self.teacher_val_accuracy
        return context


def load_teacher(t: TeacherConfig, source: str, real_classes: list[str], device="cpu") -> Teacher:
    """A prepared teacher: the trained file at `source`, or timm weights mapped onto the suite's classes."""
    return teacher_sources.teacher_source(t).load(source, real_classes, device)


def backbone_conditions(suite: Suite, classes: list[str]) -> list[int]:
    """The backbone's label of each suite class: its index in `backbone.classes` (by WNID), or its position
    in the suite when the backbone was trained on the suite."""
    if suite.backbone.classes is None:
        return list(range(len(classes)))
    index = {k: i for i, k in enumerate(class_list(suite.backbone.classes))}
    return [index[k] for k in classes]


def suite_needs(suite: Suite) -> frozenset[str]:
    """Everything the suite's methods need, as their configs have it."""
    return frozenset().union(*(get_method(name).needs_for(cfg) for name, cfg in suite.methods.items()))


def prepare_backbone(suite: Suite, real: RealData, out: Path, where: str = "backbone") -> tuple[str, str]:
    """The suite's backbone, made into the cache if it must be: its source (what loading reads) and identity.
    `where` names the section in errors (a further one: `backbones.<kind>`)."""
    try:
        return generator_for(suite.backbone).prepare(real, Path(out))
    except GeneratorError as e:
        raise PrepareError(f"{suite.source}: {where}{str(e).removeprefix('backbone')}") from None


def describe_teacher(t: TeacherConfig, suite: Suite, test_accuracy: float | None) -> str:
    """One line saying which classifier this is and where it came from."""
    return teacher_sources.teacher_source(t).describe(suite.name, test_accuracy)


def prepare_teacher(
    suite: Suite, real: RealData, out: Path, t: TeacherConfig | None = None, connect=None, where: str = "teacher"
) -> tuple[str, str, float | None]:
    """The suite's teacher (or `t`, e.g. a cross-architecture teacher): its source, identity hash and, for one
    trained on the suite's classes, its test accuracy. `connect` reaches the Ray cluster, whose GPUs train a
    teacher with a recipe; `where` names `t` in the suite for error messages."""
    out = Path(out)
    cluster = None
    if connect is not None:

        def gpus() -> int:
            connect()
            return cluster_gpus()

        cluster = Cluster(gpus, train_data_parallel, str((out / "ray_train").resolve()))
    try:
        return teacher_sources.teacher_source(t or suite.teacher).prepare(real, out, where, cluster)
    except TeacherSourceError as e:
        raise PrepareError(f"{suite.source}: {e}") from None


def train_data_parallel(
    images, args: tuple, t: TeacherConfig, path: Path, workers: int, use_gpu: bool, storage_path: str | None = None
) -> None:
    """`train_recipe_teacher` on `workers` Ray Train workers, which share the images through the object store;
    rank 0's teacher is saved at `path`."""
    images_ref = ray.put(images)

    def work(worker):
        teacher = train_recipe_teacher(
            ray.get(images_ref),
            *args,
            device=worker.device,
            rank=worker.rank,
            world=worker.world,
            wrap=worker.wrap,
            arch_kwargs=t.arch_kwargs,
        )
        save_teacher(teacher.cpu(), t.arch, args[1], worker.folder / "teacher.pt", **t.arch_kwargs)

    run_data_parallel(
        work,
        workers,
        use_gpu,
        lambda folder: atomic.torch_save(
            torch.load(folder / "teacher.pt", map_location="cpu", weights_only=True), path
        ),
        storage_path,
    )


def teacher_val_accuracy(
    suite: Suite, real: RealData, out: Path, source: str, teacher_hash: str, chunk: int = 1000
) -> float:
    """The teacher's accuracy over the suite's classes on the validation split (never the test split),
    cached by teacher and split; read in chunks, because ImageNet-1k's split does not fit in memory."""
    key = teacher_val_key(teacher_hash, real.val.fingerprint())

    def measure() -> dict:
        teacher = load_teacher(suite.teacher, source, real.classes, "cuda" if torch.cuda.is_available() else "cpu")
        correct = 0.0
        for i in range(0, len(real.val), chunk):
            idx = torch.arange(i, min(i + chunk, len(real.val)))
            correct += accuracy(teacher, real.val.load(idx), real.val.labels[idx]) * len(idx)
        return {"accuracy": correct / max(1, len(real.val)), "images": len(real.val)}

    acc = cache.ensure_json(
        out / "cache" / f"teacher-val-{key}.json",
        "teacher",
        ("accuracy",),
        "measuring its validation accuracy again",
        measure,
        from_weights=True,
    )["accuracy"]
    log(f"[prepare] teacher: validation accuracy {acc:.2%} ({len(real.val)} images)")
    return acc


@torch.no_grad()
def backbone_check(
    backbone,
    teacher: Teacher,
    num_classes: int,
    per_class: int,
    cfg_scale: float,
    steps: int,
    seed: int = 0,
    batch_size: int = 100,
    conditions: list[int] | None = None,
    generator=None,
) -> dict:
    """Sample `per_class` images per class and count how many the teacher assigns to their condition.
    `conditions[c]` is the backbone's label of suite class c (default: c); `generator` the backbone's kind
    (registry.py `Generator`), which samples them (default: DDIM over the noise predictor)."""
    generator = generator if generator is not None else Generator(None)
    agree, total = torch.zeros(num_classes), 0
    t0 = time.perf_counter()
    bar = tqdm(total=num_classes * per_class, desc="[prepare] backbone check", mininterval=5)
    for c in range(num_classes):
        g = torch.Generator().manual_seed(seed * 100_003 + c)
        condition = conditions[c] if conditions else c
        images = generator.check_images(backbone, condition, per_class, g, steps, cfg_scale, batch_size)
        for i in range(0, per_class, batch_size):
            pred = teacher(images[i : i + batch_size]).argmax(1).cpu()
            agree[c] += (pred == c).sum()
            total += len(pred)
            bar.update(len(pred))
    bar.close()
    per_class_rate = (agree / per_class).tolist()
    return {
        "agreement": float(agree.sum() / total),
        "per_class": per_class_rate,
        "samples": total,
        "cfg_scale": cfg_scale,
        "steps": steps,
        "seconds": time.perf_counter() - t0,
    }


def prepare(
    suite: Suite,
    real: RealData,
    out: Path,
    check: bool = True,
    connect=None,
    methods: list[str] | None = None,
    accept_failed_check: bool = False,
    report_only: bool = False,
    backbone: bool = True,
) -> Prepared:
    """`connect` reaches the Ray cluster; only a teacher trained with a recipe asks for it (for its GPUs).
    Every backbone one of `methods` (default: the suite's) samples is prepared and checked: the suite's own always,
    a further section (`backbones`) where a method declares its kind. A failed check stops the run here
    (PrepareError) when any of `methods` samples that backbone, unless `accept_failed_check`: then their rows are
    marked on the board. `report_only` (scripts/check_backbone.py): the checks are made and said, and neither
    stop nor mark anything, since nothing is sampled."""
    out = Path(out)
    if not backbone:  # a set made elsewhere is only trained on: no generator is fetched, trained or checked
        return _teachers_only(suite, real, out, connect)
    if not report_only:  # the check script checks step counts in turn: each is the one it means to check
        say_checked_elsewhere(suite, real, out)
    methods = list(suite.methods if methods is None else methods)
    others = {}  # first: a missing local model (MAR's release) stops the run before the main one is fetched
    for name in methods:
        view = suite.for_method(name)
        if view is not suite and (kind := view.backbone.kind) not in others:
            source, key = prepare_backbone(view, real, out, f"backbones.{kind}")
            others[kind] = PreparedBackbone(view.backbone, source, key, backbone_conditions(view, real.classes))
    backbone_source, backbone_hash = prepare_backbone(suite, real, out)
    teacher_source, teacher_hash, teacher_acc = prepare_teacher(suite, real, out, connect=connect)
    relabel = prepare_relabel_teacher(suite, real, out, connect)
    bn_teacher = None
    if any("bn_teacher" in get_method(m).needs_for(suite.method_config(m)) for m in methods):
        found = suite.bn_teacher()
        if found is None:  # the suite's checks refuse this first; a suite built in code may still get here
            raise PrepareError(f"{suite.source}: no teacher with batch norm for the methods that need one")
        t, where = found
        source, key, acc = prepare_teacher(suite, real, out, t, connect, where=where)
        bn_teacher = PreparedTeacher(t, source, key, acc, f"{describe_teacher(t, suite, acc)} ({where})")
    val_acc = None
    if "teacher_val_accuracy" in suite_needs(suite):
        val_acc = teacher_val_accuracy(suite, real, out, teacher_source, teacher_hash)
    prepared = Prepared(
        list(real.classes),
        suite.backbone,
        backbone_source,
        backbone_hash,
        backbone_conditions(suite, real.classes),
        suite.teacher,
        teacher_source,
        teacher_hash,
        teacher_acc,
        None,
        val_acc,
        describe_teacher(suite.teacher, suite, teacher_acc),
        relabel,
        bn_teacher=bn_teacher,
        others=others,
        class_names=list(real.class_names),
    )
    if not check:
        log(f"[prepare] backbone: {describe_backbone(prepared)}, not checked by this run")
        return prepared
    prepared.backbone_check = check_backbone(prepared, out, "backbone")
    for kind, other in others.items():
        other.check = check_backbone(prepared.for_kind(kind), out, f"backbones.{kind}")
    if report_only:
        return prepared
    views = {prepared.for_method(m).backbone_hash: prepared.for_method(m) for m in methods}
    for key, view in views.items():  # once per backbone, naming the methods that sample it
        users = [m for m in methods if prepared.for_method(m).backbone_hash == key]
        _stop_on_failed_check(suite, view, users, accept_failed_check)
    return prepared


def prepare_relabel_teacher(suite: Suite, real: RealData, out: Path, connect) -> PreparedTeacher | None:
    """The teacher whose outputs the relabelling recipes train on, where the suite names one apart from its own."""
    if suite.teacher.relabel is None:
        return None
    r = suite.teacher.relabel
    source, key, acc = prepare_teacher(suite, real, out, r, connect, where="teacher.relabel")
    return PreparedTeacher(r, source, key, acc, describe_teacher(r, suite, acc))


def _teachers_only(suite: Suite, real: RealData, out: Path, connect) -> Prepared:
    """The suite's teacher and relabelling teacher, with no backbone: what training students on a given set
    needs (its relabelling recipes train on their outputs; the protocol hash names the relabelling teacher)."""
    teacher_source, teacher_hash, teacher_acc = prepare_teacher(suite, real, out, connect=connect)
    relabel = prepare_relabel_teacher(suite, real, out, connect)
    return Prepared(
        list(real.classes),
        suite.backbone,
        "",
        "",
        [],
        suite.teacher,
        teacher_source,
        teacher_hash,
        teacher_acc,
        None,
        None,
        describe_teacher(suite.teacher, suite, teacher_acc),
        relabel,
        class_names=list(real.class_names),
    )


def check_backbone(prepared: Prepared, out: Path, where: str) -> dict:
    """The backbone check of `prepared`'s backbone (a `for_kind` view for a further section), cached by backbone,
    teacher and settings."""
    b = prepared.backbone
    key = backbone_check_key(
        prepared.backbone_hash, prepared.teacher_hash, b.check_per_class, b.check_cfg_scale, b.check_steps
    )
    if extra := generator_for(b).check_settings():  # a kind's own settings (MAR's AR steps); none keeps the old key
        key = config_hash([key, extra])

    generator = generator_for(b)
    names = prepared.class_names or prepared.classes
    steps = generator.trained_steps()

    def made() -> dict:
        result = backbone_check(
            prepared.load_backbone(),
            prepared.load_teacher(),
            len(prepared.classes),
            b.check_per_class,
            b.check_cfg_scale,
            b.check_steps,
            conditions=prepared.conditions,
            generator=generator_for(b),
        )
        result["min_agreement"] = b.check_min_agreement
        result["passed"] = result["agreement"] >= b.check_min_agreement
        return result

    path = out / "cache" / f"backbone-check-{key}.json"
    result = cache.ensure_json(
        path,
        "backbone check",
        ("agreement", "passed", "samples", "cfg_scale", "steps", "min_agreement"),
        "checking again",
        made,
        indent=1,
        from_weights=True,
    )
    # What the record says besides the rates (issue 31): the classes by name, and which backbone it checked (its
    # hash and training steps, by which a later run finds the checks of its own training run). A record made
    # before these were kept gets them here, once.
    said = {"classes": list(names), "backbone": prepared.backbone_hash}
    if steps is not None:
        said["backbone_steps"] = steps
    if any(result.get(k) != v for k, v in said.items()):
        result = {**result, **said}
        atomic.write_json(path, result, indent=1)
    verdict = "passes" if result["passed"] else "FAILS"
    named = "" if where == "backbone" else f" ({where})"
    log(
        f"[prepare] backbone check{named} of {describe_backbone(prepared)}: the teacher agrees with the conditioning "
        f"class on {result['agreement']:.1%} of {result['samples']} samples (cfg {result['cfg_scale']}, "
        f"{result['steps']} steps); {verdict} the suite's minimum {result['min_agreement']:.0%}"
    )
    log(f"[prepare] backbone check{named} per class: {per_class_line(result)}")
    return result


def describe_backbone(prepared: Prepared) -> str:
    """Which backbone this is, in a few words: its kind, identity and, for one prepare trains, its steps."""
    steps = generator_for(prepared.backbone).trained_steps()
    return f"{prepared.backbone.kind} {prepared.backbone_hash}" + (
        f" ({steps:,} training steps)" if steps is not None else ""
    )


def per_class_line(check: dict) -> str:
    """A check's rate per class, by name, in the suite's order; those below the bar, worst first, after them."""
    names = check.get("classes") or [str(c) for c in range(len(check["per_class"]))]
    rates = list(zip(names, check["per_class"]))
    line = ", ".join(f"{n} {r:.0%}" for n, r in rates)
    if lagging := lagging_classes(check):
        line += f"; below {check['min_agreement']:.0%}: " + ", ".join(f"{n} {r:.0%}" for n, r in lagging)
    return line


def lagging_classes(check: dict) -> list[tuple[str, float]]:
    """The classes whose rate is below the check's bar, worst first, as (name, rate)."""
    names = check.get("classes") or [str(c) for c in range(len(check["per_class"]))]
    below = [(n, r) for n, r in zip(names, check["per_class"]) if r < check["min_agreement"]]
    return sorted(below, key=lambda nr: nr[1])


def checks_of_training_run(suite: Suite, real: RealData, out: Path) -> dict[int, dict]:
    """The backbone checks in `out`'s cache of the suite's backbone trained to other step counts (the same training
    run, stopped elsewhere: what scripts/check_backbone.py --steps made), by step count; empty for a backbone that
    is had, not trained."""
    generator = generator_for(suite.backbone)
    if generator.trained_steps() is None:
        return {}
    found = {}
    for path in sorted((Path(out) / "cache").glob("backbone-check-*.json")):
        try:
            c = cache.read_json(path, ("agreement", "passed", "backbone", "backbone_steps"))
        except Exception:  # a damaged or older record: not one this can place
            continue
        steps = c["backbone_steps"]
        if isinstance(steps, int) and generator.key_at_steps(real, steps) == c["backbone"]:
            found[steps] = c
    return found


def say_checked_elsewhere(suite: Suite, real: RealData, out: Path) -> None:
    """One line where the suite's backbone is not one that was checked but others of its training run were: a run
    that trains past (or stops short of) the checked backbone says so before training (issue 31, item 1)."""
    generator = generator_for(suite.backbone)
    steps = generator.trained_steps()
    checks = checks_of_training_run(suite, real, out)
    if steps is None or not checks or steps in checks:
        return
    done = ", ".join(
        f"{s:,} ({c['agreement']:.1%}, {'passed' if c['passed'] else 'failed'})" for s, c in sorted(checks.items())
    )
    passed = sorted(s for s, c in checks.items() if c["passed"])
    past = "past" if steps > max(checks) else "short of" if steps < min(checks) else "between"
    use = (
        f"to use the checked {passed[0]:,}-step one, set backbone.train.steps: {passed[0]}"
        if passed
        else "none of those passed"
    )
    log(
        f"[prepare] backbone: the suite's {steps:,} steps (backbone.train.steps) are {past} the checked step "
        f"counts of this backbone's training: {done}; this run trains and checks a {steps:,}-step backbone "
        f"that was not checked ({use})"
    )


def _stop_on_failed_check(suite: Suite, prepared: Prepared, methods: list[str], accept: bool) -> None:
    """Sets sampled from a backbone that does not make its classes are not results: refuse to make them.
    `prepared` is the view of the backbone `methods` sample."""
    result = prepared.backbone_check
    users = [m for m in methods if "backbone" in get_method(m).needs_for(suite.method_config(m))]
    if result["passed"] or not users:
        return
    where = "backbone" if prepared.backbone is suite.backbone else f"backbones.{prepared.backbone.kind}"
    if accept:
        log(
            f"[prepare] {where} check failed; --accept-failed-check: the rows of {', '.join(users)} are marked "
            f"on the board"
        )
        return
    raise PrepareError(
        f"{suite.source}: {where}: the check failed ({result['agreement']:.1%} agreement, below "
        f"check_min_agreement {result['min_agreement']:.0%}), so {', '.join(users)} would sample a "
        f"backbone that does not make its classes; train it longer ({where}.train.steps: "
        f"scripts/check_backbone.py --steps finds how long), run only methods without it (--methods), or pass "
        f"--accept-failed-check to mark their rows"
    )
