"""The plan (`--plan`): what a suite would do on a cluster and what it would cost, printed before anything runs,
without the data or the models being present.

Counts come from the suite: sets and shards from its methods, IPCs and classes; trials from its students,
protocols and seeds; model loads from how distill and evaluate place work on actors and tasks. Costs are
counts times unit costs. A method declares its work per class in model evaluations (`Method.work`); a model's
evaluation is priced either by what an earlier run in `--out` measured (seconds per image of a method's
shards, seconds per image-epoch of a student's rows) or, unmeasured, by its FLOPs — counted by torch's
FlopCounterMode on the architecture built on the meta device, so neither weights nor a GPU are needed —
divided by a sustained GPU throughput the user states (`--gpu-tflops`). Every figure says which it is.
Each method's peak GPU memory is predicted from the suite's rehearsal figures (harness/runtime/memory_figures.py:
each stage's memory measured at two batches on the true-size models, scaled to the suite's batch settings).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.core.store import ResultStore
from harness.models.data import DataError, load_real_data
from harness.models.generators import generator_for
from harness.models.generators.registry import GeneratorError
from harness.models.protocols import reference_protocol
from harness.models.students import create_student
from harness.models.teacher_sources import teacher_source
from harness.runtime.memory_figures import GB, figures_path, predict_peaks, shown
from harness.runtime.preflight import DEFAULT_GPU_MEMORY_GB
from methods import get_method

# ImageNet-1k's split sizes per class (1,281,167 training and 50,000 validation images over 1,000 classes),
# for ImageNet-layout suites planned before their data is present: every such suite here is a subset of it.
IMAGENET_TRAIN_PER_CLASS, IMAGENET_TEST_PER_CLASS = 1281, 50
# A PNG of an image holds about this fraction of its raw bytes (measured on sets where `--out` has some).
PNG_FRACTION = 0.7
# Unmeasured work is priced at this sustained rate per GPU: about what fp32 work sustains on cluster.yaml's
# A10G (31 TFLOP/s peak). A stated assumption, to replace with a rate measured on the user's GPUs
# (perf/ and docs/performance.md) through `--gpu-tflops`.
TRAIN_FLOPS_PER_FORWARD = 3  # a training step is a forward and a backward pass of about twice its cost


class PlanError(Exception):
    pass


def _flops(model: torch.nn.Module, *inputs, **kwargs) -> float:
    with FlopCounterMode(display=False) as counter:
        model(*inputs, **kwargs)
    return float(counter.get_total_flops())


def backbone_flops(suite, channels: int, num_classes: int) -> tuple[float, float, int, str]:
    """FLOPs of one transformer evaluation of one latent and of one VAE pass of one image, the parameters of
    both, and what was sized."""
    try:
        return generator_for(suite.backbone).flops(channels, num_classes)
    except GeneratorError as e:
        raise PlanError(str(e)) from None


def classifier_flops(arch: str, num_classes: int, channels: int, size: int, kwargs: dict, pretrained: bool) -> float:
    with torch.device("meta"):
        model = (
            timm.create_model(arch, num_classes=1000)
            if pretrained
            else create_student(arch, num_classes, channels, size, **kwargs)
        )
        return _flops(model, torch.zeros(1, 3 if pretrained else channels, size, size))


def network_flops(method, config, image_size: int, counts) -> float:
    """FLOPs of one forward pass of one image through the method's own network (`Method.own_network`; 0: none)."""
    own = method.own_network(config, image_size)
    if own is None:
        return 0.0
    arch, kwargs, side = own
    return classifier_flops(arch, counts.classes, counts.channels, side, kwargs, False)


def teacher_flops(t, counts: Counts, image_size: int) -> tuple[float, int]:
    """FLOPs of one forward pass of a teacher, and the side it sees: a pretrained or recipe-trained one its
    input size, one trained by `prepare`'s small recipe the suite's images."""
    source = teacher_source(t)
    size = source.input_size(image_size)
    return classifier_flops(t.arch, counts.classes, counts.channels, size, t.arch_kwargs, source.pretrained), size


@dataclass
class Counts:
    """What the suite's data holds, read from the data when present, else ImageNet's split sizes."""

    classes: int
    channels: int
    train_per_class: int
    test: int
    source: str


def count_data(suite) -> Counts:
    d = suite.data
    if Path(d.root).is_dir():
        try:
            real = load_real_data(d)
            per_class = len(real.train) // len(real.classes)
            return Counts(len(real.classes), real.channels, per_class, len(real.test), f"counted in {d.root}")
        except DataError:
            pass
    if d.format != "imagefolder":
        raise PlanError(
            f"data.root: {d.root} is missing and the plan knows split sizes only for ImageNet-layout suites"
        )
    classes = len(d.class_keys())
    if not classes:  # `classes: auto` names its classes by the folders that are not there
        raise PlanError(
            f"data.classes: {d.root} is missing, so `auto` finds no classes to plan for: "
            "name them (a class list or an inline list) to plan before the data is present"
        )
    per_class = IMAGENET_TRAIN_PER_CLASS - d.val_per_class
    if d.max_train_per_class:
        per_class = min(per_class, d.max_train_per_class)
    return Counts(
        classes,
        3,
        per_class,
        classes * IMAGENET_TEST_PER_CLASS,
        f"{d.root} not present: ImageNet's split sizes ({IMAGENET_TRAIN_PER_CLASS} train, "
        f"{IMAGENET_TEST_PER_CLASS} test per class)",
    )


@dataclass
class Measured:
    """Unit costs an earlier run in `--out` measured: seconds per image of a method's shards and seconds per
    image-epoch of a student under a protocol, with the device that ran them."""

    per_image: dict[str, tuple[float, str]] = field(default_factory=dict)
    per_image_epoch: dict[tuple[str, str], float] = field(default_factory=dict)
    png_bytes_per_image: float | None = None


def measured_costs(suite, out: Path, classes: int) -> Measured:
    """What `out` measured under the suite's own settings: sets of a method made with its config as the suite
    has it now, rows of a student trained under the protocol's identity as it is now. Costs measured under
    other settings (a quick profile's fewer steps, another sampler or input size) would price the wrong work."""
    m = Measured()
    root = Path(out) / "distilled" / suite.name
    seconds: dict[str, list[tuple[float, int, str]]] = {}
    for manifest in root.glob("*/*/ipc*/manifest.json"):
        raw = json.loads(manifest.read_text())
        method = raw.get("method")
        if method not in suite.methods or raw.get("config") != dataclasses.asdict(suite.method_config(method)):
            continue
        seconds.setdefault(method, []).append((raw["distill_seconds"], raw["images"], raw.get("device") or "?"))
    for method, runs in seconds.items():
        images = sum(n for _, n, _ in runs)
        m.per_image[method] = (sum(s for s, _, _ in runs) / max(images, 1), "/".join(sorted({d for *_, d in runs})))
    pngs = list(root.glob("*/*/ipc*/*/*.png"))[:2000]
    if pngs:
        m.png_bytes_per_image = sum(p.stat().st_size for p in pngs) / len(pngs)
    store = Path(out) / "results" / f"{suite.name}.jsonl"
    per: dict[tuple[str, str], list[float]] = {}

    def current(row) -> bool:  # trained under the recipe its student trains under now
        recipe = suite.protocols.get(row.get("protocol"))
        return recipe is not None and row.get("protocol_hash") == recipe.for_student(row.get("student")).identity()

    if store.is_file():
        for row in ResultStore(store).read():
            if row.get("kind") == "measured" and row.get("ipc") and row.get("epochs") and current(row):
                per.setdefault((row["student"], row["protocol"]), []).append(
                    row["train_seconds"] / (row["epochs"] * row["ipc"] * classes)
                )
    m.per_image_epoch = {k: sum(v) / len(v) for k, v in per.items()}
    return m


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return "?" if math.isnan(hours) else f"{hours:,.0f}" if hours >= 100 else f"{hours:.3g}"


@dataclass
class _BackboneUnits:
    """One backbone section's unit FLOPs: of one denoiser evaluation (for MAR, one autoregressive step) of one
    latent, of one VAE pass of one image; its parameters and what was sized."""

    config: object  # the section (a BackboneConfig)
    transformer: float
    vae: float
    params: int
    sized: str

    def check_flops(self, teacher: float) -> float:
        """FLOPs of one backbone-check image: its sampling, decode and the teacher's look at it."""
        evaluations = generator_for(self.config).check_evaluations()
        return evaluations * self.transformer + self.vae + teacher


@dataclass
class _Units:
    """What every section of the plan prices with: the data's counts, what `--out` measured, the GPU rate and the
    models' unit FLOPs (each backbone a planned method samples: the suite's `backbone` and its `backbones`)."""

    suite: object
    out: Path
    counts: Counts
    measured: Measured
    rate: float
    backbones: dict[str, _BackboneUnits]  # by kind
    teacher: float
    teacher_size: int
    relabel: float
    relabel_size: int
    # The teacher with batch norm (`Suite.bn_teacher`), where a planned method needs it: its config and place, and
    # the FLOPs and side of one forward pass; None where no planned method needs one.
    bn_teacher: tuple | None = None

    def of(self, method: str) -> _BackboneUnits:
        """The units of the backbone `method` samples."""
        return self.backbones[self.suite.backbone_of(method).kind]


def _units(suite, out: Path, gpu_tflops: float, methods: list[str]) -> _Units:
    counts = count_data(suite)
    t = suite.teacher
    backbones = {}
    for section in [suite.backbone, *(suite.backbone_of(name) for name in methods)]:
        if section.kind not in backbones:
            view = dataclasses.replace(suite, backbone=section)
            backbones[section.kind] = _BackboneUnits(section, *backbone_flops(view, counts.channels, counts.classes))
    teacher, teacher_size = teacher_flops(t, counts, suite.data.image_size)
    relabel, relabel_size = (
        teacher_flops(t.relabel, counts, suite.data.image_size) if t.relabel else (teacher, teacher_size)
    )
    bn_teacher = None
    if any("bn_teacher" in get_method(m).needs_for(suite.method_config(m)) for m in methods if m in suite.methods):
        if (found := suite.bn_teacher()) is not None:
            bn_teacher = (*found, *teacher_flops(found[0], counts, suite.data.image_size))
    return _Units(
        suite,
        out,
        counts,
        measured_costs(suite, out, counts.classes),
        gpu_tflops * 1e12,
        backbones,
        teacher,
        teacher_size,
        relabel,
        relabel_size,
        bn_teacher,
    )


def make_plan(
    suite,
    methods: list[str],
    searched: list[str],
    fine_tunes: dict,
    out: Path,
    gpus: int,
    gpu_tflops: float,
    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB,
) -> str:
    """The plan as text. Reads no image and loads no model weights. `searched`: the methods whose searched config
    is a set of its own; `fine_tunes`: the distinct fine-tunes the sets sample from, each with its methods (both
    as harness/pipeline.py's Run decides them)."""
    if gpus < 1 or gpu_tflops <= 0:
        raise PlanError("--gpus must be at least 1 and --gpu-tflops positive")
    u = _units(suite, out, gpu_tflops, methods)
    lines = _header(u, gpus, gpu_tflops)
    # A config a search chose is its own set beside the method's, priced from FLOPs: earlier runs' costs are read
    # for the suite's configs only.
    entries = [(name, name, suite.method_config(name)) for name in methods] + [
        (f"{name}, searched", name, suite.searched_config(name)) for name in searched
    ]
    distill_lines, distill_seconds, sampled = _distill_section(u, entries, gpus, gpu_memory_gb)
    prepare_lines, prepare_seconds = _prepare_section(u, sampled, fine_tunes)
    evaluate_lines, evaluate_seconds = _evaluate_section(u, len(entries))
    total = distill_seconds + prepare_seconds + evaluate_seconds
    return "\n".join(
        lines
        + distill_lines
        + prepare_lines
        + evaluate_lines
        + [
            "",
            f"total ≈ {_hours(total)} GPU-hours; ≈ {_hours(total / gpus)} h of wall clock on {gpus} "
            "GPU(s) if the work spreads evenly",
        ]
    )


def _header(u: _Units, gpus: int, gpu_tflops: float) -> list[str]:
    suite, counts, t = u.suite, u.counts, u.suite.teacher
    backbones = [
        f"{'backbone' if b.config is suite.backbone else f'backbones.{kind}'} {b.sized}: "
        f"{b.transformer / 1e9:,.1f} GFLOP per {generator_for(b.config).evaluation}"
        + (f", VAE {b.vae / 1e9:,.1f} GFLOP per image" if b.vae else "")
        for kind, b in u.backbones.items()
    ]
    return [
        f"plan for suite {suite.name} on {gpus} GPU(s) at {gpu_tflops:g} sustained TFLOP/s "
        "(nothing runs; estimates labelled)",
        f"data: {counts.classes} classes, {counts.train_per_class} training images per class, {counts.test} test "
        f"images ({counts.source})",
        "unit FLOPs: "
        + "; ".join(backbones)
        + f"; teacher {t.arch} at {u.teacher_size} px: {u.teacher / 1e9:,.2f} GFLOP per image"
        + (
            f"; relabelling teacher {t.relabel.arch} at {u.relabel_size} px: {u.relabel / 1e9:,.2f} GFLOP per image"
            if t.relabel
            else ""
        )
        + (
            f"; batch-norm teacher ({u.bn_teacher[1]}) {u.bn_teacher[0].arch} at {u.bn_teacher[3]} px: "
            f"{u.bn_teacher[2] / 1e9:,.2f} GFLOP per image"
            if u.bn_teacher
            else ""
        ),
        "",
    ]


def _batch(peak) -> str:
    return f"{peak.setting} = {peak.batch}" if peak.setting else f"its fixed batch of {peak.batch}"


def _distill_section(u: _Units, entries: list[tuple], gpus: int, gpu_memory_gb: float) -> tuple[list[str], float, bool]:
    """One line per set's config, then the shards, actors, model loads and disk; the seconds and whether any set
    samples the backbone."""
    C, ipcs, measured = u.counts.classes, u.suite.ipcs, u.measured
    # A searched config's batch settings are the method's own, but its other settings are not: no figures for it.
    peaks = predict_peaks(u.suite, [name for label, name, _ in entries if label == name])
    lines = [
        "distill (one shard = one class of one set)",
        f"  {'method':34} {'sets':>4} {'shards':>6} {'images':>8} {'backbone evals':>15} {'GPU-h':>8} "
        f"{'peak mem':>9}  basis",
    ]
    total_images = distill_seconds = 0.0
    needs_teacher, sampled = False, {}
    for label, name, config in entries:
        cls = get_method(name)
        needs = cls.needs_for(config)
        b = u.of(name)
        if "backbone" in needs:
            sampled[b.config.kind] = b
        needs_teacher |= bool({"teacher", "relabel_teacher", "bn_teacher"} & needs)
        images = sum(ipc * C for ipc in ipcs)
        works = [cls.work(config, ipc, u.counts.train_per_class) for ipc in ipcs]
        if label == name and name in measured.per_image:
            per_image, device = measured.per_image[name]
            seconds, basis = per_image * images, f"measured in {u.out} on {device}: {per_image:.3g} s/image"
        elif any(w is None for w in works):
            seconds, basis = math.nan, "unknown: the method declares no work"
        else:
            bn = u.bn_teacher[2] if u.bn_teacher else 0.0
            network = network_flops(cls, config, u.suite.data.image_size, u.counts)
            flops = sum(
                C
                * (
                    w.backbone * b.transformer
                    + w.vae * b.vae
                    + w.teacher * u.teacher
                    + w.bn_teacher * bn
                    + w.network * network
                )
                for w in works
            )
            seconds, basis = flops / u.rate, "FLOPs"
        evals = sum(C * w.backbone for w in works if w is not None)
        total_images += images
        distill_seconds += 0 if math.isnan(seconds) else seconds
        peak = peaks.get(name) if label == name else None
        memory = f"{peak.peak.bytes / GB:,.1f} GB" if peak else "—"
        lines.append(
            f"  {label:34} {len(ipcs):>4} {len(ipcs) * C:>6} {images:>8,} {evals:>15,.0f} {_hours(seconds):>8} "
            f"{memory:>9}  {basis}" + (f"; memory: its {peak.peak.stage} stage at {_batch(peak.peak)}" if peak else "")
        )
    shards = len(entries) * len(ipcs) * C
    actors = min(gpus, shards)
    loads = [f"{kind} backbone" for kind in sampled] + (["teacher"] if needs_teacher else [])
    raw = u.counts.channels * u.suite.data.image_size**2
    png = measured.png_bytes_per_image or raw * PNG_FRACTION
    lines.append(
        f"  {len(entries) * len(ipcs)} sets, {shards} shards on {actors} GPU actor(s); model loads: "
        + (", ".join(f"{w} ×{actors}" for w in loads) or "none")
        + f"; {total_images:,.0f} images ≈ {total_images * png / 1e9:,.2f} GB of PNG "
        + ("(measured size)" if measured.png_bytes_per_image else f"(estimated at {PNG_FRACTION:.0%} of raw)")
        + "".join(f"; {kind} weights {b.params * 4 / 1e9:,.2f} GB in fp32 per node" for kind, b in sampled.items())
    )
    source = shown(figures_path(u.suite.name))
    lines.append(
        "  peak mem: the largest stage's GPU memory predicted at the suite's batch settings from the rehearsal's "
        f"figures ({source}: static + per sample × batch, measured at true size by "
        f"perf/rehearsal.py); — where it has none. A run refuses a method predicted above --gpu-memory "
        f"({gpu_memory_gb:g} GB)"
        if any(peaks.values())
        else f"  peak mem: — (no rehearsal figures for this suite: perf/rehearsal.py --suite {u.suite.name} makes them)"
    )
    return lines, distill_seconds, sampled


def _prepare_section(u: _Units, sampled: dict, fine_tunes: dict) -> tuple[list[str], float]:
    """The models `prepare` trains or checks once (cached after), and the fine-tunes. `sampled`: the units of the
    backbones the planned sets sample, by kind."""
    suite, C, t, rate = u.suite, u.counts.classes, u.suite.teacher, u.rate
    lines, prepare_seconds = [], 0.0
    main = u.backbones[suite.backbone.kind]
    for kind, b in {suite.backbone.kind: main, **sampled}.items():
        where = "backbone" if b is main else f"backbones.{kind}"
        if b.config.check_per_class and kind in sampled:
            n = b.config.check_per_class * C
            seconds = n * b.check_flops(u.teacher) / rate
            prepare_seconds += seconds
            lines.append(f"  prepare: {where} check samples {n:,} images ({_hours(seconds)} GPU-h, FLOPs)")
        if (training := generator_for(b.config).prepare_training()) is not None:
            samples, trained = training
            seconds = samples * TRAIN_FLOPS_PER_FORWARD * b.transformer / rate
            prepare_seconds += seconds
            lines.append(f"  prepare: trains {trained} ({_hours(seconds)} GPU-h, FLOPs; once: cached)")
    train_images = u.counts.train_per_class * C
    trained = [("teacher", t, u.teacher), ("relabelling teacher", t.relabel, u.relabel)]
    if u.bn_teacher and u.bn_teacher[0] is not t and u.bn_teacher[0] is not t.relabel:
        trained.append((f"batch-norm teacher ({u.bn_teacher[1]})", u.bn_teacher[0], u.bn_teacher[2]))
    for what, config, forward in trained:
        if config is not None and (epochs := teacher_source(config).training_epochs()) is not None:
            seconds = epochs * train_images * TRAIN_FLOPS_PER_FORWARD * forward / rate
            prepare_seconds += seconds
            lines.append(
                f"  prepare: trains the {what} {config.arch}, {epochs} epochs over {train_images:,} images "
                f"({_hours(seconds)} GPU-h, FLOPs; once: cached)"
            )
    for ft, (name, *_) in fine_tunes.values():  # named by the first method that asks for it
        steps = ft.epochs * (train_images // ft.batch_size)
        steps = min(steps, ft.max_steps) if ft.max_steps else steps
        b = u.of(name)
        seconds = steps * ft.batch_size * (TRAIN_FLOPS_PER_FORWARD * b.transformer + b.vae) / rate
        check = ""
        if b.config.check_per_class:  # the fine-tuned backbone is checked like the one it tunes
            n = b.config.check_per_class * C
            seconds += n * b.check_flops(u.teacher) / rate
            check = f" and its backbone check of {n:,} samples"
        prepare_seconds += seconds
        lines.append(
            f"  prepare: fine-tunes the backbone for {name}, {steps:,} steps of {ft.batch_size} images{check} "
            f"(at least {_hours(seconds)} GPU-h: FLOPs of the diffusion loss, not of the further passes "
            "its objective makes; once: cached)"
        )
    return lines, prepare_seconds


def _evaluate_section(u: _Units, sets: int) -> tuple[list[str], float]:
    """One line per student and protocol (then per student on the full data), priced by measure or FLOPs."""
    suite, C, ipcs, measured, t = u.suite, u.counts.classes, u.suite.ipcs, u.measured, u.suite.teacher
    lines = [
        "",
        "evaluate (one trial = one student, protocol, set and seed; a setting's seeds train together)",
        f"  {'student':22} {'protocol':18} {'input':>5} {'trials':>7} {'image-epochs':>14} {'GPU-h':>8}  basis",
    ]
    evaluate_seconds, trials, teacher_loads = 0.0, 0, 0
    for student in suite.students:
        for pname, protocol in suite.protocols.items():
            size = protocol.train_size(suite.data.image_size)
            kwargs = protocol.student_kwargs.get(student, {})
            forward = classifier_flops(student, C, u.counts.channels, size, kwargs, False)
            image_epochs = sets * suite.seeds * sum(protocol.epochs_for(ipc) * ipc * C for ipc in ipcs)
            n = sets * len(ipcs) * suite.seeds
            key = (student, pname)
            if key in measured.per_image_epoch:
                seconds = image_epochs * measured.per_image_epoch[key]
                basis = f"measured in {u.out}: {measured.per_image_epoch[key]:.3g} s/image-epoch"
            else:
                per = TRAIN_FLOPS_PER_FORWARD * forward + (u.relabel if protocol.needs_teacher else 0)
                seconds = (image_epochs * per + sets * len(ipcs) * suite.seeds * u.counts.test * forward) / u.rate
                basis = f"FLOPs ({forward / 1e9:.2f} GFLOP per forward)"
            trials += n
            teacher_loads += sets * len(ipcs) if protocol.needs_teacher else 0
            evaluate_seconds += seconds
            lines.append(
                f"  {student:22} {pname:18} {size:>5} {n:>7,} {image_epochs:>14,.0f} {_hours(seconds):>8}  {basis}"
            )
    if suite.full_data.epochs:
        ref = reference_protocol(suite.protocols)
        size = ref.train_size(suite.data.image_size)
        for student in suite.students:
            forward = classifier_flops(student, C, u.counts.channels, size, ref.student_kwargs.get(student, {}), False)
            image_epochs = suite.full_data.epochs * u.counts.train_per_class * C
            seconds = image_epochs * TRAIN_FLOPS_PER_FORWARD * forward / u.rate
            evaluate_seconds += seconds
            trials += 1
            lines.append(
                f"  {student:22} {'full data':18} {size:>5} {1:>7} {image_epochs:>14,.0f} "
                f"{_hours(seconds):>8}  FLOPs"
                + (", at most: it stops when validation accuracy stalls" if suite.full_data.patience else "")
            )
    lines.append(
        f"  {trials:,} trials; teacher loads for relabelling: {teacher_loads:,} (one per setting its protocol relabels"
        + (f", the {t.relabel.arch} trained on the suite's classes" if t.relabel else "")
        + ")"
    )
    lines.append(
        "  FLOPs price compute only: a small set's few steps per epoch also pay per-step overheads, so "
        "student estimates for low IPCs are optimistic"
    )
    return lines, evaluate_seconds
