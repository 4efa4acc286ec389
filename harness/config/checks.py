"""A built suite's semantic checks, one function per section, each failing through `fail(where, why)` with one line
that names the field: run before any compute, so a mistake costs a line, not a traceback an hour into a run."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import torch

from harness.config.coerce import resolve_backbone_training, resolve_method_configs, resolve_protocols
from harness.config.schema import BEST_OF_PROTOCOLS, DataConfig, ReportedEntry, Suite, SuiteError, TeacherConfig
from harness.core.identity import CLASSES_DIR, FULL_DATA, read_class_list
from harness.models.data import IMAGE_EXTENSIONS
from harness.models.generators import get_generator, list_generators
from harness.models.measures import DiversityError, check_config
from harness.models.students import create_student, is_student
from harness.models.teacher_sources import list_teacher_kinds, teacher_source
from methods import get_method, list_methods


def resolve_and_check(s: Suite, source: str, check_files: bool) -> None:
    """Check every section, swapping the methods' and protocols' entries for their typed configs where the checks
    after them need those. The order is the order mistakes are reported in: the first one raises."""

    def fail(where, msg):
        raise SuiteError(f"{source}: {where}: {msg}")

    check_name(s, fail)
    check_data(s, fail, check_files)
    check_backbone(s, fail)
    check_ipcs(s, fail)
    check_student_list(s, fail)
    check_seeds(s, fail)
    resolve_method_configs(s, source)
    check_methods(s, fail)
    check_searched(s, fail)
    check_students_known(s, fail)
    check_teacher(s.teacher, "teacher", fail, s.data.image_size)
    check_full_data(s, fail)
    check_distributed_students(s, fail)
    check_cross_arch(s, fail)
    check_bn_teacher(s, fail)
    check_diversity(s, source, fail, check_files)
    written = {name: raw for name, raw in s.protocols.items() if isinstance(raw, dict)}  # as the suite wrote them
    resolve_protocols(s, source)
    check_protocols(s, fail)
    check_epoch_tables(s, written, fail)
    if s.reported is not None:
        check_reported(s, fail)


# What a suite's name may be: it names folders (weights/<name>/) and files (results/<name>.jsonl).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(s: Suite, fail) -> None:
    if not SAFE_NAME.fullmatch(s.name):
        fail(
            "name",
            f"{s.name!r} names the suite's folders and files: use letters, digits, '.', '_' and '-' only, "
            "starting with a letter or digit",
        )


def check_data(s: Suite, fail, check_files: bool) -> None:
    if s.data.format not in ("idx", "imagefolder"):
        fail("data.format", f"must be idx or imagefolder, got {s.data.format!r}")
    if s.data.format == "imagefolder":
        if not s.data.classes:
            fail(
                "data.classes",
                "required for imagefolder data: auto (the train folder's sub-folders), a list of "
                "folder names, or a class list such as imagenette",
            )
        if isinstance(s.data.classes, list):
            if not s.data.classes or len(set(s.data.classes)) != len(s.data.classes):
                fail("data.classes", "the inline list must name each class folder once")
            _check_two_classes(s.data.classes, "the inline list", fail)
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
            fail(
                "data.val_per_class",
                f"{s.data.val_per_class} held out for validation leaves no training image of "
                f"the {s.data.max_train_per_class} per class data.max_train_per_class keeps",
            )
    if check_files:
        _check_data_files(s.data, fail)


def _check_data_files(d: DataConfig, fail) -> None:
    root = Path(d.root)
    if root.is_file():
        fail("data.root", f"{root} is a file, not a folder; point data.root at the folder that holds the data")
    if not root.is_dir():
        hint = (
            "install it with `apt-get install -y dataset-fashion-mnist`"
            if d.format == "idx"
            else "point data.root at an ImageNet-style folder (train/<wnid>/..., val/<wnid>/...)"
        )
        fail("data.root", f"{root} does not exist; {hint}")
    if d.format == "imagefolder":
        _check_folders(d, fail)


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
            fail(
                name,
                f"{root / folder} is not a folder (folders in {root}: {', '.join(found) or 'none'}); "
                f"set {name} to the split's folder",
            )
    keys = d.class_keys()
    if not keys:
        fail("data.classes", f"auto: {root / d.train_dir} holds no class folders (hidden folders, .*, are skipped)")
    _check_two_classes(keys, f"{root / d.train_dir}", fail)
    smallest = None
    for key in keys:
        folder = root / d.train_dir / key
        if not folder.is_dir():
            fail("data.classes", f"class {key!r} has no folder {folder}")
        found = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if found == 0:
            fail("data.classes", f"class {key!r} has no images in {folder} ({', '.join(IMAGE_EXTENSIONS)})")
        n = min(found, d.max_train_per_class) if d.max_train_per_class else found
        smallest = (n, key, folder) if smallest is None or n < smallest[0] else smallest
    n, key, folder = smallest
    if d.val_per_class > MAX_VAL_SHARE * n:
        need = math.ceil(d.val_per_class / MAX_VAL_SHARE)
        if int(MAX_VAL_SHARE * n) < 1:  # no validation split fits: the class is too small, not the setting too large
            fail(
                "data.classes",
                f"class {key!r} has {n} training images ({folder}): too few to hold out a validation split "
                f"(at most {MAX_VAL_SHARE:.0%} of a class; data.val_per_class {d.val_per_class} needs {need}); "
                "add images, or leave the class out",
            )
        fail(
            "data.val_per_class",
            f"{d.val_per_class} would hold out more than {MAX_VAL_SHARE:.0%} of class "
            f"{key!r} ({n} training images) for validation; set it to at most {int(MAX_VAL_SHARE * n)}",
        )


def _check_two_classes(keys: list[str], where: str, fail) -> None:
    if len(keys) < 2:
        fail(
            "data.classes",
            f"{where} names {len(keys)} class ({', '.join(keys)}): distillation makes images per class for a "
            "classifier, which needs at least 2",
        )


def check_backbone(s: Suite, fail) -> None:
    """The suite's `backbone` and each further section in `backbones` (by kind), each with its kind's own checks;
    a section's training settings become its kind's dataclass here."""
    for where, b in s.backbone_sections().items():
        key = where.removeprefix("backbones.")
        if where != "backbone" and b.kind != key:
            fail(f"{where}.kind", f"a section of backbones is named by its kind: {key!r}, got {b.kind!r}")
        check_backbone_section(s, b, where, fail)
    if s.backbone.kind in s.backbones:
        fail(f"backbones.{s.backbone.kind}", "is the suite's own backbone's kind: one section per kind")


def check_backbone_section(s: Suite, b, where: str, fail) -> None:
    def fail_here(field: str, message: str) -> None:  # a kind's checks name `backbone.…`: this section's place
        fail(where + field.removeprefix("backbone"), message)

    if b.kind not in list_generators():
        fail_here("backbone.kind", f"must be {' or '.join(list_generators())}, got {b.kind!r}")
    get_generator(b.kind).check_required(b, fail_here)
    resolve_backbone_training(b, where, s.source)
    if b.classes is not None:
        path = CLASSES_DIR / f"{b.classes}.txt"
        if not path.is_file():
            fail_here("backbone.classes", f"class list {b.classes!r} not found in {CLASSES_DIR}")
        if s.data.format == "imagefolder" and (s.data.names_classes_itself() or s.data.class_list_path().is_file()):
            missing = sorted(set(s.data.class_keys()) - set(read_class_list(path)))
            if missing:
                fail_here(
                    "backbone.classes", f"{len(missing)} suite classes are not backbone labels, e.g. {missing[0]}"
                )
    if b.dtype not in ("float32", "float16", "bfloat16"):
        fail_here("backbone.dtype", f"must be float32, float16 or bfloat16, got {b.dtype!r}")
    if not b.check_cfg_scale >= 0:
        fail_here("backbone.check_cfg_scale", f"a guidance scale must be ≥ 0, got {b.check_cfg_scale:g}")
    if not 0 <= b.check_min_agreement <= 1:
        fail_here("backbone.check_min_agreement", "must be a fraction in [0, 1]")
    for name in ("check_per_class", "check_steps"):
        if getattr(b, name) < 1:
            fail_here(f"backbone.{name}", f"must be at least 1, got {getattr(b, name)}")
    get_generator(b.kind).check(b, s.data.image_size, fail_here)


def check_ipcs(s: Suite, fail) -> None:
    if not s.ipcs or any(i < 1 for i in s.ipcs):
        fail("ipcs", f"must be a non-empty list of positive integers, got {s.ipcs}")
    _check_listed_once("ipcs", s.ipcs, fail)


def check_student_list(s: Suite, fail) -> None:
    _check_listed_once("students", s.students, fail)
    if not s.students:
        fail("students", "no students listed (--students names none?)")


def _check_listed_once(where: str, values: list, fail) -> None:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        fail(where, f"lists {', '.join(repeated)} more than once")


def check_seeds(s: Suite, fail) -> None:
    if s.seeds < 1:
        fail("seeds", f"must be at least 1, got {s.seeds}")


def check_methods(s: Suite, fail) -> None:
    """The methods' typed configs (resolved by `resolve_method_configs`) have every field their search spaces name."""
    if not s.methods:
        fail("methods", "no methods listed")
    for name, config in s.methods.items():
        cls = get_method(name)
        _check_guidance(config, f"methods.{name}", fail)
        section = s.backbone_of(name)
        get_generator(section.kind)(section).check_method(config, f"methods.{name}", fail)
        missing = [f for f in cls.search_space if not hasattr(config, f)]
        if missing:
            fail(
                f"methods.{name}", f"its search_space names {', '.join(missing)}, not a field of {cls.Config.__name__}"
            )


def _check_guidance(config, where: str, fail) -> None:
    """Every guidance scale (a field named cfg_scale…) is ≥ 0. Classifier-free guidance below 1 is legal maths: 0
    samples unconditionally, (0, 1) mixes the unconditional and the conditional prediction; below 0 it steers away
    from the class, which no distilled set wants (decisions.md, issue 30)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name.startswith("cfg_scale") and isinstance(value, (int, float)) and not value >= 0:
            fail(
                f"{where}.{f.name}",
                f"a guidance scale must be ≥ 0 (0: unconditional, 1: plain conditional, above 1: more of the "
                f"class), got {value:g}",
            )


def check_searched(s: Suite, fail) -> None:
    for name, searched in s.searched.items():
        if name not in s.methods:
            fail(f"searched.{name}", f"not one of the suite's methods (it has: {', '.join(s.methods)})")
        try:
            config = s.searched_config(name)
        except (TypeError, ValueError) as e:
            fail(f"searched.{name}.config", str(e))
        _check_guidance(config, f"searched.{name}.config", fail)
        if searched.trials < 1:
            fail(f"searched.{name}.trials", f"must be at least 1, got {searched.trials}")


def check_students_known(s: Suite, fail) -> None:
    for i, student in enumerate(s.students):
        if not is_student(student):
            fail(f"students[{i}]", f"unknown student {student!r}: not in timm's registry")


def check_teacher(t: TeacherConfig, where: str, fail, image_size: int) -> None:
    if t.kind not in list_teacher_kinds():
        fail(f"{where}.kind", f"must be {' or '.join(list_teacher_kinds())}, got {t.kind!r}")
    teacher_source(t).check(where, fail, image_size, _check_options)
    if t.relabel is not None:
        check_teacher(t.relabel, f"{where}.relabel", fail, image_size)


def check_full_data(s: Suite, fail) -> None:
    if s.full_data.epochs < 0:
        fail("full_data.epochs", f"must be ≥ 1, or 0 for no full-data row, got {s.full_data.epochs}")
    if s.full_data.batch_size < 1:
        fail("full_data.batch_size", f"must be at least 1, got {s.full_data.batch_size}")


def check_distributed_students(s: Suite, fail) -> None:
    for student, workers in s.distributed_students.items():
        if student not in s.students or workers < 1:
            fail(f"distributed_students.{student}", "must name one of the suite's students with ≥ 1 workers")


def check_cross_arch(s: Suite, fail) -> None:
    c = s.cross_arch
    if c is None:
        return
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
        check_teacher(t, f"cross_arch.teachers[{i}]", fail, s.data.image_size)
    for i, student in enumerate(c.students):
        if not is_student(student):
            fail(f"cross_arch.students[{i}]", f"unknown student {student!r}: not in timm's registry")


def check_bn_teacher(s: Suite, fail) -> None:
    """A method that matches a teacher's batch-norm statistics (need `bn_teacher`) needs a suite teacher that has
    them: refused here, before any work, where none has."""
    for name, config in s.methods.items():
        if "bn_teacher" in get_method(name).needs_for(config) and s.bn_teacher() is None:
            fail(
                f"methods.{name}",
                "needs a teacher with batch norm (it matches the teacher's batch-norm statistics), and none of "
                "teacher, teacher.relabel and cross_arch.teachers has any: add one (e.g. a resnet18) to "
                "cross_arch.teachers",
            )


def check_diversity(s: Suite, source: str, fail, check_files: bool) -> None:
    try:
        check_config(s.diversity)
    except DiversityError as e:
        raise SuiteError(f"{source}: {e}") from None
    if check_files and s.diversity.inception_weights and not Path(s.diversity.inception_weights).is_file():
        fail("diversity.inception_weights", f"{s.diversity.inception_weights} is not a file")


def check_protocols(s: Suite, fail) -> None:
    """The protocols' student options (resolved by `resolve_protocols`) are ones the students take."""
    for name, protocol in s.protocols.items():
        for student, options in getattr(protocol, "student_kwargs", {}).items():
            _check_options(f"protocols.{name}.student_kwargs.{student}", student, options, s.data.image_size, fail)


# A protocol's tables of IPC bounds and the field that applies above their largest bound, with what that field is.
IPC_TABLES = (
    ("epochs", "epochs_beyond", "train {beyond}'s default {value} epochs"),
    ("batch_size", "batch_size_beyond", "train at {beyond}'s default batch size {value}"),
)


def check_epoch_tables(s: Suite, written: dict[str, dict], fail) -> None:
    """A table of IPC bounds the suite writes (`epochs`, and `batch_size` where a protocol's is a table): the first
    bound ≥ the IPC applies, and an IPC above its largest bound takes the `..._beyond` field (300 epochs, batch
    size 100 by default). A suite that writes the table but not its `..._beyond` field and runs an IPC above every
    bound would get that default silently: refused, naming the IPC."""
    for name, raw in written.items():
        protocol = s.protocols[name]
        for field, beyond, what in IPC_TABLES:
            table = getattr(protocol, field, None)
            if field not in raw or beyond in raw or not isinstance(table, dict) or not table:
                continue
            above = [ipc for ipc in s.ipcs if ipc > max(table)]
            if above:
                fail(
                    f"protocols.{name}.{field}",
                    f"has no bound for IPC {above[0]} (its largest is {max(table)}), which would "
                    f"{what.format(beyond=beyond, value=getattr(protocol, beyond))}; add {above[0]}: N to the "
                    f"table, or set {beyond}",
                )


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


def check_reported(s: Suite, fail) -> None:
    r = s.reported
    _check_reported_names(s, fail)
    if not r.entries:
        fail("reported.entries", "empty: list the papers' numbers, or leave the reported section out")
    timm_students = {name for name in {e.student for e in r.entries} if is_student(name)}  # one registry look-up each
    seen = set()
    for i, e in enumerate(r.entries):
        where = f"reported.entries[{i}]"
        _check_reported_entry(s, e, where, timm_students, fail)
        key = (e.method, e.ipc, e.student, e.protocol, e.paper, e.table)
        if key in seen:
            fail(
                where,
                f"a second number for {e.method} at IPC {e.ipc}, {e.student}, {e.protocol} in {e.paper} {e.table}",
            )
        seen.add(key)


def _check_reported_names(s: Suite, fail) -> None:
    """The names the reported section declares itself are ones the suite does not already have."""
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


def _check_reported_entry(s: Suite, e: ReportedEntry, where: str, timm_students: set[str], fail) -> None:
    r = s.reported
    if e.paper not in r.papers:
        fail(f"{where}.paper", f"{e.paper!r} is not in reported.papers (have: {', '.join(r.papers)})")
    if e.method not in s.methods and e.method not in r.not_implemented and e.method != FULL_DATA:
        fail(f"{where}.method", f"{e.method!r} is neither one of the suite's methods nor in reported.not_implemented")
    if (e.ipc == 0) != (e.kind == FULL_DATA):
        fail(f"{where}.ipc", f"must be ≥ 1 for a distilled set and 0 for {FULL_DATA}, got {e.ipc}")
    if e.student not in timm_students and e.student not in r.students:
        fail(f"{where}.student", f"{e.student!r} is neither in timm's registry nor in reported.students")
    if e.protocol not in s.protocols and e.protocol != BEST_OF_PROTOCOLS and e.protocol not in r.protocols:
        fail(
            f"{where}.protocol",
            f"{e.protocol!r} is neither a suite protocol, {BEST_OF_PROTOCOLS}, nor in reported.protocols",
        )
    if not 0 < e.accuracy <= 100 or (e.std is not None and e.std < 0):
        fail(f"{where}.accuracy", f"must be a percentage in (0, 100] with a std ≥ 0, got {e.accuracy} ± {e.std}")
