"""The rehearsal: every method of a suite run for one class on the suite's generator at its true architecture with
random weights, each named stage measured at two batches — its peak memory and its FLOPs — so that the plan can
predict each method's peak at the suite's batch settings (harness/runtime/memory_figures.py) before a cluster runs it.

Stages are the boundaries a method already names (`Method.stage`: the stages the cost table times, and sampling and
decoding) plus the fine-tune step (`fine_tune_step`, the loop body of harness/stages/fine_tune.py). A method runs
under its `rehearsal_config`: the fewest steps that run each stage once, its batch settings at the batch measured.

Memory is counted as the bytes of tensor storage alive (`LiveBytes`), not read from the allocator: on a CPU torch
keeps no allocator statistics, and the process's resident set counts freed pages glibc keeps, so neither gives a
stage's peak. A stage's peak is the models' own bytes plus the largest live total seen while it runs. FLOPs are
torch's `FlopCounterMode`'s count (matrix products, convolutions and attention, forward and backward;
`flop_counter` adds the CPU's attention kernel, which torch leaves out).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from harness.config.schema import Suite
from harness.core import atomic
from harness.core.identity import identity_fields
from harness.models.generators import generator_for
from harness.models.generators.difffit import add_difffit
from harness.models.generators.registry import flop_counter
from harness.models.students import create_student
from harness.models.teacher_sources import teacher_source
from harness.models.teachers import Teacher
from harness.runtime.memory_figures import FIGURES_DIR, figures_path, rehearsal_key, stage_batch
from harness.runtime.resources import machine
from harness.stages.fine_tune import fine_tune_schedule, fine_tune_step
from methods import get_method
from methods.base import ClassTask, MethodContext

FINE_TUNE = "fine-tune"


class LiveBytes(TorchDispatchMode):
    """The bytes of every tensor storage made while it is active and still alive, and the peak of that total within
    each open stage. A storage is counted once, when an operation first returns it, and uncounted when it is freed;
    one an operation returns but was given (a view, an in-place result: a transposed weight, say) is no new memory."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self._seen = WeakIdKeyDictionary()
        self._open: list[list[int]] = []  # [peak] of each open stage, innermost last

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        given = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if _real_tensor(t)}
        for t in tree_leaves(out):
            if _real_tensor(t) and id(t.untyped_storage()) not in given:
                self._count(t.untyped_storage())
        return out

    def _count(self, storage) -> None:
        if storage in self._seen:
            return
        n = storage.nbytes()
        self._seen[storage] = n
        self.live += n
        weakref.finalize(storage, self._free, n)
        for peak in self._open:
            peak[0] = max(peak[0], self.live)

    def _free(self, n: int) -> None:
        self.live -= n

    @contextmanager
    def peak(self) -> Iterator[list[int]]:
        """The peak live total within the block: `[bytes]`, filled when the block ends."""
        cell = [self.live]
        self._open.append(cell)
        try:
            yield cell
        finally:
            self._open.remove(cell)


def _real_tensor(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type != "meta"


@dataclass
class StageRun:
    peak_bytes: int = 0  # models' bytes + the largest live total within the stage
    flops: float = 0.0
    seconds: float = 0.0


class StageMeter:
    """Peak memory, FLOPs and seconds of each named stage of one run; a stage entered several times (a sampling
    batch after another) keeps its largest peak and sums its FLOPs and seconds."""

    def __init__(self, model_bytes: int):
        self.model_bytes = model_bytes
        self.stages: dict[str, StageRun] = {}
        self._live = LiveBytes()
        self._flops = flop_counter()

    @contextmanager
    def running(self) -> Iterator[StageMeter]:
        with self._flops, self._live:
            yield self

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        run = self.stages.setdefault(name, StageRun())
        flops0, t0 = self._flops.get_total_flops(), time.perf_counter()
        with self._live.peak() as peak:
            yield
        run.peak_bytes = max(run.peak_bytes, self.model_bytes + peak[0])
        run.flops += self._flops.get_total_flops() - flops0
        run.seconds += time.perf_counter() - t0


def module_bytes(*modules) -> int:
    """Bytes of the parameters and buffers of `modules`, each storage once (a module shared by two counts once)."""
    storages = {}
    for m in modules:
        if m is None:
            continue
        for t in [*m.parameters(), *m.buffers()]:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


@dataclass
class RehearsalModels:
    """What the methods are handed: a backbone (Backbone protocol), the teacher and the relabelling teacher (None:
    the teacher), and the shape of the suite's images."""

    backbone: object
    teacher: object
    relabel_teacher: object | None
    image_size: int
    channels: int
    num_classes: int
    # Fine-tune steps measured so far, by the schedule they train (methods sharing a fine-tune share its figures).
    fine_tunes: dict = field(default_factory=dict)
    # The teacher with batch norm (`Suite.bn_teacher`; None where the suite has none).
    bn_teacher: object | None = None


def _random_teacher(t, image_size: int, num_classes: int) -> Teacher:
    """The suite's teacher architecture with random weights (timm's `pretrained=False`): its outputs are ImageNet-1k's
    for a pretrained kind, the suite's classes for a trained one, picked as the suite's classes in order."""
    source = teacher_source(t)
    size = source.input_size(image_size)
    if source.pretrained:
        model = timm.create_model(t.arch, pretrained=False, num_classes=1000)
        indices = list(range(num_classes))
    else:
        model = create_student(t.arch, num_classes, 3, size, **t.arch_kwargs)
        indices = None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean", (0.5, 0.5, 0.5)), cfg.get("std", (0.5, 0.5, 0.5))
    return Teacher(model, size, 3, list(mean), list(std), class_indices=indices)


def true_size_models(suite: Suite) -> RehearsalModels:
    """The suite's generator and teachers at their true architectures, randomly initialised: no hub, no data."""
    torch.manual_seed(0)
    classes = len(suite.data.class_keys())
    t = suite.teacher
    teacher = _random_teacher(t, suite.data.image_size, classes)
    relabel = _random_teacher(t.relabel, suite.data.image_size, classes) if t.relabel else None
    found = suite.bn_teacher()
    bn_teacher = _random_teacher(found[0], suite.data.image_size, classes) if found is not None else None
    return RehearsalModels(
        generator_for(suite.backbone).random_backbone(),
        teacher,
        relabel,
        suite.data.image_size,
        3,
        classes,
        bn_teacher=bn_teacher,
    )


def _context(cls, config, models: RehearsalModels, backbone) -> tuple[MethodContext, int]:
    needs = cls.needs_for(config)
    relabel = models.relabel_teacher or models.teacher
    context = MethodContext(
        backbone=backbone if "backbone" in needs else None,
        teacher=models.teacher if "teacher" in needs else None,
        relabel_teacher=relabel if "relabel_teacher" in needs else None,
        bn_teacher=models.bn_teacher if "bn_teacher" in needs else None,
        # Only whether CaO2's `auto` condition picks the class or the null one hangs on it: either runs the same work.
        teacher_val_accuracy=0.0 if "teacher_val_accuracy" in needs else None,
    )
    return context, module_bytes(context.backbone, context.teacher, context.relabel_teacher, context.bn_teacher)


def _real(models: RehearsalModels, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    size = models.image_size
    return torch.randint(0, 256, (n, models.channels, size, size), generator=g, dtype=torch.uint8)


def _run_distill(cls, config, ipc: int, models: RehearsalModels, backbone) -> dict[str, StageRun]:
    """One class distilled under `config` (and chosen across classes, where the method does), each stage measured."""
    context, model_bytes = _context(cls, config, models, backbone)
    method = cls(config, context)
    needs = cls.needs_for(config)
    real = _real(models, max(ipc, cls.real_images_needed(config, ipc)), 1) if "real_images" in needs else None
    task = ClassTask(0, "rehearsal", ipc, 0, real, models.num_classes, models.image_size, models.channels, condition=0)
    meter = StageMeter(model_bytes)
    method.stage_probe = meter.stage
    with meter.running():
        images = method.distill_class(task)
        if cls.selects_across_classes(config):
            method.select_across_classes([task], [images])
    return meter.stages


def _run_fine_tune_step(cls, config, batch: int, models: RehearsalModels) -> tuple[StageRun, object]:
    """One DiffFit step of the method's objective at `batch` on a copy of the backbone, every image at the
    objective's dearest timestep; returns the stage and the fine-tuned backbone (what the method then samples)."""
    ft = cls.fine_tuning(config)
    backbone = copy.deepcopy(models.backbone)
    names = add_difffit(backbone)
    params = dict(backbone.transformer.named_parameters())
    meter = StageMeter(module_bytes(backbone))
    objective = cls.fine_tune_objective(config)
    objective.dearest_timesteps = True
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, models.channels, models.image_size, models.image_size, generator=g)
    classes = torch.zeros(batch, dtype=torch.long)
    with meter.running(), meter.stage(FINE_TUNE):
        # What training holds besides the step: the EMA of the trained parameters and AdamW's state (made lazily by
        # the first step, inside it).
        ema = {n: params[n].detach().clone() for n in names}
        opt = torch.optim.AdamW([params[n] for n in names], lr=ft.lr, weight_decay=0.0)
        fine_tune_step(backbone, objective, opt, params, ema, ft.ema_decay, images, classes, classes, g, "cpu")
    del opt, ema
    backbone.requires_grad_(False)
    return meter.stages[FINE_TUNE], backbone


def _fine_tuned_copy(models: RehearsalModels):
    """A copy of the backbone with DiffFit's parameters added, as a fine-tuned backbone is loaded to sample from."""
    backbone = copy.deepcopy(models.backbone)
    add_difffit(backbone)
    backbone.requires_grad_(False)
    return backbone


def _fine_tune_figures(cls, config, models: RehearsalModels, log: Callable[[str], None], suite_settings: bool) -> dict:
    """The fine-tune stage's figures, measured once per schedule: methods that share a fine-tune share them. Where
    the method measures its slope under cheaper settings (`rehearsal_slope_settings`), the step at its own settings
    runs too only with `suite_settings`: IMS3's whole inversion path is ~200 DiT-XL/2 passes per image, hours on a
    shared CPU."""
    b1, b2 = cls.rehearsal_batches
    key = str(sorted(fine_tune_schedule(cls.fine_tuning(cls.rehearsal_config(config, b1))).items()))
    if key in models.fine_tunes:
        log(f"    {FINE_TUNE}: the same schedule as {models.fine_tunes[key]['measured_for']}: its figures")
        return models.fine_tunes[key]
    slope = cls.rehearsal_slope_settings
    full = (
        _run_fine_tune_step(cls, cls.rehearsal_config(config, b1), b1, models)[0]
        if suite_settings or not slope
        else None
    )
    if slope:
        runs = {
            b: _run_fine_tune_step(cls, dataclasses.replace(cls.rehearsal_config(config, b), **slope), b, models)[0]
            for b in (b1, b2)
        }
    else:
        runs = {b1: full, b2: _run_fine_tune_step(cls, cls.rehearsal_config(config, b2), b2, models)[0]}
    # The line through the two batches, raised to the suite's settings' peak where that was measured and is higher.
    anchor = max(runs[b1].peak_bytes, full.peak_bytes if full else 0)
    figures = _figures(runs, b1, b2, images=b1, flops_run=full or runs[b1], anchor=anchor)
    figures["slope_settings"] = dict(slope)
    figures["suite_settings_peak_bytes"] = full.peak_bytes if full else None
    figures["flops_at"] = "the suite's settings" if full else f"{slope} (the suite's settings were not run)"
    figures["measured_for"] = cls.name
    models.fine_tunes[key] = figures
    return figures


def _figures(runs: dict[int, StageRun], b1: int, b2: int, images: int, flops_run: StageRun, anchor: int) -> dict:
    """A stage's figures from its runs at two batches: the memory line through them (anchored at `anchor`, the
    first batch's peak), FLOPs per image of `flops_run` (which made `images` images)."""
    per_sample = (runs[b2].peak_bytes - runs[b1].peak_bytes) / (b2 - b1)
    return {
        "batches": [b1, b2],
        "peak_bytes": [runs[b1].peak_bytes, runs[b2].peak_bytes],
        "bytes_per_sample": per_sample,
        "static_bytes": anchor - per_sample * b1,
        "flops_per_image": flops_run.flops / images,
        "seconds": [round(runs[b1].seconds, 2), round(runs[b2].seconds, 2)],
    }


def rehearse_method(
    name: str, config, models: RehearsalModels, log: Callable[[str], None] = print, suite_settings: bool = False
) -> dict:
    """One method's figures: per stage, its peak memory at the method's two rehearsal batches, the line through them
    (static bytes and bytes per sample), FLOPs per image made and seconds, under `rehearsal_config`."""
    cls = get_method(name)
    b1, b2 = cls.rehearsal_batches
    undeclared_ok = set(cls.stage_batches)
    stages: dict[str, dict] = {}
    backbone = models.backbone
    if cls.fine_tuning(config) is not None and "backbone" in cls.needs_for(config):
        stages[FINE_TUNE] = _fine_tune_figures(cls, config, models, log, suite_settings)
        backbone = _fine_tuned_copy(models)
    runs = {
        b: _run_distill(cls, cls.rehearsal_config(config, b), cls.rehearsal_ipc or b, models, backbone)
        for b in (b1, b2)
    }
    ipc = cls.rehearsal_ipc or b1
    for stage in runs[b1]:
        if stage not in undeclared_ok:
            raise ValueError(f"{name}: stage {stage!r} declares no batch in stage_batches")
        per = {b: runs[b].get(stage, StageRun()) for b in (b1, b2)}
        stages[stage] = _figures(per, b1, b2, images=ipc, flops_run=per[b1], anchor=per[b1].peak_bytes)
    given, rehearsed = identity_fields(config), identity_fields(cls.rehearsal_config(config, b1))
    rehearsal = {
        "batches": [b1, b2],
        "ipc": [cls.rehearsal_ipc or b1, cls.rehearsal_ipc or b2],
        # What the rehearsal changed from the suite's config (at the first batch).
        "settings": {k: v for k, v in rehearsed.items() if given.get(k) != v},
    }
    return {"stages": stages, "rehearsal": rehearsal}


def _known_entries(folder: Path) -> dict[str, tuple[str, dict]]:
    """Every method entry of every figures file in `folder`, by key, with the suite it was measured for."""
    known = {}
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text())
        for entry in data.get("methods", {}).values():
            if not entry.get("not_run"):
                known.setdefault(entry["key"], (entry.get("measured_in", data["suite"]), entry))
    return known


def rehearse_suite(
    suite: Suite,
    methods: list[str],
    folder: Path = FIGURES_DIR,
    again: bool = False,
    command: str = "",
    log: Callable[[str], None] = print,
    budget_seconds: float | None = None,
    suite_settings: bool = False,
) -> dict:
    """The suite's figures, written to `folder/<suite>.json` after every method (a killed rehearsal keeps what it
    measured): a method whose key some figures file in `folder` already holds (this suite's or another's: the
    ImageNet suites share methods and generator) is taken from there unless `again`; the rest are measured, in the
    order given, until `budget_seconds` have passed (the rest are marked not run, for a later call to measure)."""
    t0 = time.perf_counter()
    known = {} if again else _known_entries(folder)
    # A rehearsal of some of the suite's methods (`methods`) keeps the file's figures of the others.
    before = (
        json.loads(figures_path(suite.name, folder).read_text()) if figures_path(suite.name, folder).is_file() else {}
    )
    kept = {n: e for n, e in before.get("methods", {}).items() if n not in methods}
    figures = {"suite": suite.name, "command": command, "machine": machine("cpu"), "methods": kept}
    models: dict[str, RehearsalModels] = {}  # by the kind of backbone: a suite's methods may sample several
    for name in methods:
        key = rehearsal_key(suite, name)
        if key in known:
            measured_in, entry = known[key]
            entry = {**copy.deepcopy(entry), "measured_in": measured_in}
            log(f"[rehearsal] {name}: figures measured for {measured_in} under the same key {key}")
        elif budget_seconds is not None and time.perf_counter() - t0 > budget_seconds:
            entry = {"stages": {}, "not_run": f"the rehearsal's time budget ({budget_seconds / 60:.0f} min) ran out"}
        else:
            log(f"[rehearsal] {name}: measuring")
            started = time.perf_counter()
            view = suite.for_method(name)
            if view.backbone.kind not in models:
                models[view.backbone.kind] = true_size_models(view)
            try:
                entry = rehearse_method(
                    name, suite.method_config(name), models[view.backbone.kind], log, suite_settings
                )
            except (MemoryError, torch.OutOfMemoryError) as e:  # the box's memory, not the method's fault
                entry = {"stages": {}, "not_run": f"out of memory on this machine ({type(e).__name__})"}
            entry.update(measured_in=suite.name, wall_seconds=round(time.perf_counter() - started, 1))
        cls, config = get_method(name), suite.method_config(name)
        for stage, fig in entry["stages"].items():
            fig["batch_setting"], fig["suite_batch"] = stage_batch(config, cls.stage_batches[stage])
        entry["key"] = key
        figures["methods"][name] = entry
        figures["wall_seconds"] = round(time.perf_counter() - t0, 1)
        # What measuring this suite's own entries took, over the calls that made them (a resumed rehearsal's too).
        figures["measuring_seconds"] = round(
            sum(e.get("wall_seconds", 0) for e in figures["methods"].values() if e.get("measured_in") == suite.name), 1
        )
        atomic.write_json(figures_path(suite.name, folder), figures, indent=1)
    return figures
