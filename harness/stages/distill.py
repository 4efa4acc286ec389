"""Distill: run every (method, IPC) of a suite, one class per shard, on Ray actors.

Actors hold the models a method needs (one actor per GPU where there are GPUs, else one single-threaded
actor per core) and take shards from the driver. A shard — (method, config hash, IPC, class) — is written to
a temporary folder and renamed into place, so an interrupted run leaves either a whole shard or none, and
a rerun skips whole shards. Each shard's seed comes from its identity, so a resumed run makes the same
images as an uninterrupted one. A finished set is an ImageFolder of PNGs plus manifest.json (harness/core/sets.py).

Faults: every set on disk is verified before it is used (`repair_sets`: each shard's record and its PNGs'
checksums); a damaged shard is deleted and made again, bit for bit the same, and a torn manifest rewritten. An
actor that dies (its process killed, its node preempted) is replaced by a new one, which retries its shard,
up to `SHARD_RETRIES` times per shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from tqdm.auto import tqdm

from harness.config.schema import Suite
from harness.core.identity import identity_fields, seed_key, set_key, versions
from harness.core.sets import (
    MANIFEST,
    SHARD,
    Manifest,
    load_set,
    manifest_damage,
    read_shard,
    shard_damage,
    write_shard,
)
from harness.models.data import RealData, load_real_data
from harness.runtime.allocator import keep_freed_memory
from harness.runtime.resources import ShardPeakMemory, machine
from harness.stages.prepare import Prepared
from methods import get_method
from methods.base import ClassTask, MethodContext


@dataclass
class DistillJob:
    """One (method, IPC) set and where it goes."""

    method: str
    config: dict
    config_hash: str
    ipc: int
    path: Path
    # What seeds the shards: the method and its config hash, except where variants of one method share
    # their draws (see Method.seed_identity).
    seed_key: str = ""
    # A method that chooses across classes (Method.selects_across_classes) makes each class's candidates
    # first, in `candidates_path`; the set's shards are what the choice keeps.
    selects: bool = False

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def candidates_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}-candidates")

    def shard_path(self, key: str) -> Path:
        """Where a class's shard goes: its candidates, for a method that then chooses across classes."""
        return (self.candidates_path if self.selects else self.path) / key

    def done(self) -> bool:
        return self.manifest_path.exists()


def method_identity(suite: Suite, prepared: Prepared, name: str) -> tuple[dict, str, str]:
    """The method's config, a hash of everything that decides its images, and the key its shards are seeded
    from (`name/hash`, or the shared key of a method's ablation variants)."""
    cls = get_method(name)
    method_config = suite.method_config(name)
    config = dataclasses.asdict(method_config)
    needs = cls.needs_for(method_config)
    prepared = prepared.for_method(name)  # its backbone's identity, where it samples another than the suite's
    extra = {}
    if "teacher_val_accuracy" in needs:  # it decides the images (CaO2's ĉ)
        extra["teacher_val_accuracy"] = prepared.teacher_val_accuracy
    if name in prepared.fine_tuned:  # the backbone it samples is its fine-tuned one
        extra["fine_tuned"] = prepared.fine_tuned[name].hash
    # A variant's revision adds to its family's, so raising the family's reaches the variants that set their own.
    revision = sum(vars(c).get("revision", 0) for c in cls.__mro__)
    h = set_key(
        name,
        identity_fields(method_config),
        suite.seed,
        suite.data.image_size,
        _models(needs, prepared),
        revision=revision,
        **extra,
    )
    shared = cls.seed_identity(method_config)
    if shared is None:
        return config, h, f"{name}/{h}"
    family, seed_config = shared
    # The models of the paired anchor, not of the variant: a switch that adds one (the teacher, for clustering on
    # its features) must not reseed the draws it switches nothing in.
    seed_models = _models(cls.needs_for(cls.paired_anchor(method_config)), prepared)
    return config, h, seed_key(family, seed_config, suite.seed, suite.data.image_size, seed_models)


def _models(needs: frozenset[str], prepared: Prepared) -> dict:
    """The hashes of the prepared models a method with these needs reads."""
    models = {}
    if "backbone" in needs:
        models["backbone"] = prepared.backbone_hash
    if "teacher" in needs:
        models["teacher"] = prepared.teacher_hash
    if "relabel_teacher" in needs:  # under the same key: where no other teacher relabels, it is the suite's own
        models["teacher"] = prepared.relabel_hash
    if "bn_teacher" in needs:
        models["bn_teacher"] = prepared.bn_teacher.hash
    return models


def shard_seed(suite_seed: int, seed_key: str, ipc: int, class_key: str) -> int:
    digest = hashlib.sha256(f"{suite_seed}/{seed_key}/{ipc}/{class_key}".encode()).hexdigest()
    return int(digest[:8], 16)


def plan(suite: Suite, prepared: Prepared, out: Path, methods: list[str], ipcs: list[int]) -> list[DistillJob]:
    jobs = []
    for name in methods:
        config, h, seed_key = method_identity(suite, prepared, name)
        selects = get_method(name).selects_across_classes(suite.method_config(name))
        for ipc in ipcs:
            jobs.append(
                DistillJob(
                    name, config, h, ipc, out / "distilled" / suite.name / name / h / f"ipc{ipc}", seed_key, selects
                )
            )
    return jobs


class ShardWorker:
    """Holds the models; distils one class at a time. Used in-process or as a Ray actor."""

    def __init__(
        self,
        suite: Suite,
        prepared: Prepared,
        device: str = "cpu",
        threads: int | None = None,
        real: RealData | None = None,
    ):
        if threads:
            torch.set_num_threads(threads)
        keep_freed_memory()
        self.suite, self.prepared, self.device = suite, prepared, device
        self.real = real if real is not None else load_real_data(suite.data)
        self.context = MethodContext(torch.device(device))  # models are loaded as methods ask for them
        self._methods: dict[tuple[str, str], object] = {}  # by (method, config hash)
        self._backbones: dict[str, object] = {}  # by hash: methods sampling one backbone (or fine-tune) share it

    def _method(self, job: DistillJob):
        """The job's method built with the job's own config: a searched config is not the suite's."""
        name = job.method
        if (name, job.config_hash) not in self._methods:
            cls = get_method(name)
            config = dataclasses.replace(self.suite.method_config(name), **job.config)
            needs = cls.needs_for(config)
            context = self.prepared.provide(self.context, needs - {"backbone"})
            if "backbone" in needs:
                context = dataclasses.replace(context, backbone=self._backbone(name))
            self._methods[name, job.config_hash] = cls(config, context)
        return self._methods[name, job.config_hash]

    def _backbone(self, name: str):
        """The backbone method `name` samples, loaded once per worker: the suite's, another kind the method declares
        (`Suite.backbones`), or its fine-tuned one; methods sampling the same one share it."""
        prepared, tuned = self.prepared.for_method(name), self.prepared.fine_tuned.get(name)
        key = tuned.hash if tuned is not None else prepared.backbone_hash
        if key not in self._backbones:
            self._backbones[key] = prepared.load_backbone(self.device, tuned)
        return self._backbones[key]

    def _task(self, method, job: DistillJob, label: int) -> ClassTask:
        key = self.real.classes[label]
        seed = shard_seed(self.suite.seed, job.seed_key or f"{job.method}/{job.config_hash}", job.ipc, key)
        real = self.real.train.class_images(label) if "real_images" in method.needs_for(method.config) else None
        return ClassTask(
            label,
            key,
            job.ipc,
            seed,
            real,
            len(self.real.classes),
            self.real.image_size,
            self.real.channels,
            condition=self.prepared.for_method(job.method).conditions[label],
        )

    def run_shard(self, job: DistillJob, label: int) -> dict:
        key = self.real.classes[label]
        final = job.shard_path(key)
        if (final / SHARD).exists():  # another attempt already finished it
            return read_shard(final)
        method = self._method(job)
        task = self._task(method, job, label)
        seed = task.seed
        count = method.candidates_per_class(method.config, job.ipc) if job.selects else job.ipc
        method.stage_seconds.clear()  # the method fills it during this class only
        memory = ShardPeakMemory(self.device)
        memory.start()
        t0 = time.perf_counter()
        images = method.distill_class(task)
        if memory.cuda:  # kernels still queued would otherwise fall outside the measured time
            torch.cuda.synchronize(memory.device)
        seconds = time.perf_counter() - t0
        peak = memory.peak()
        expected = (count, self.real.channels, self.real.image_size, self.real.image_size)
        if tuple(images.shape) != expected:
            raise RuntimeError(f"{job.method} returned {tuple(images.shape)} for class {key}, expected {expected}")
        stats = {
            "class": key,
            "label": label,
            "seed": seed,
            "seconds": seconds,
            "images": count,
            "peak_memory_bytes": int(peak),
            "peak_memory_kind": memory.kind,
            "stage_seconds": {k: float(v) for k, v in method.stage_seconds.items()},
            **machine(self.device),
        }
        write_shard(final, images, stats)
        return stats

    def select(self, job: DistillJob) -> None:
        """The method's choice across classes from every class's candidates; writes the set's shards. Each
        class's shard keeps its candidates' record, its seconds with an equal share of the choice's."""
        method = self._method(job)
        classes = self.real.classes
        tasks = [self._task(method, job, label) for label in range(len(classes))]
        candidates = [load_set(job.candidates_path, [key], self.real.channels)[0].float().div(255) for key in classes]
        method.stage_seconds.clear()
        t0 = time.perf_counter()
        kept = method.select_across_classes(tasks, candidates)
        share = (time.perf_counter() - t0) / len(classes)
        for key, images, index in zip(classes, candidates, kept):
            if len(index) != job.ipc:
                raise RuntimeError(f"{job.method} kept {len(index)} images of class {key}, expected {job.ipc}")
            record = {k: v for k, v in read_shard(job.candidates_path / key).items() if k != "sha256"}
            stages = {
                s: t + method.stage_seconds.get(s, 0.0) / len(classes)
                for s, t in {**record["stage_seconds"], **dict.fromkeys(method.stage_seconds, 0.0)}.items()
            }
            record.update(
                images=job.ipc, seconds=record["seconds"] + share, stage_seconds=stages, candidates=len(images)
            )
            write_shard(job.path / key, images[index], record)


def _first_line(error: Exception) -> str:
    """Ray's actor errors run to many lines; the first says what happened."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def write_manifest(job: DistillJob, suite: Suite, prepared: Prepared, classes: list[str]) -> Manifest:
    cls = get_method(job.method)
    needs = cls.needs_for(suite.method_config(job.method))
    tuned = prepared.fine_tuned.get(job.method)
    prepared = prepared.for_method(job.method)
    manifest = Manifest.from_shards(
        [read_shard(job.path / k) for k in classes],
        suite=suite.name,
        method=job.method,
        config=job.config,
        config_hash=job.config_hash,
        ipc=job.ipc,
        classes=classes,
        backbone=prepared.backbone_hash if "backbone" in needs else None,
        fine_tune=tuned.manifest_entry() if tuned is not None else None,
        teacher=prepared.bn_teacher.hash
        if "bn_teacher" in needs
        else prepared.relabel_hash
        if "relabel_teacher" in needs
        else prepared.teacher_hash
        if "teacher" in needs
        else None,
        backbone_check=prepared.backbone_check,
        versions=versions(),
        path=str(job.path),
    )
    manifest.write(job.path)
    return manifest


# A shard whose actor died this many times stops the run: past preemption, it is the shard that kills it.
SHARD_RETRIES = 3


class DistillError(Exception):
    """Distillation cannot go on (a shard keeps killing its actor); one line."""


def shard_name(job: DistillJob, key: str) -> str:
    return f"{job.method} IPC {job.ipc} class {key}"


def repair_sets(jobs: list[DistillJob], classes: list[str]) -> None:
    """Verify every shard and manifest on disk; delete what is damaged (a missing, truncated or altered PNG, a
    torn shard.json or manifest.json) so that `distill` makes just that again, and say what is redone."""
    for job in jobs:
        if job.selects and job.candidates_path.exists():
            for key in classes:
                if (job.candidates_path / key).exists() and (damage := shard_damage(job.candidates_path / key)):
                    shutil.rmtree(job.candidates_path / key)
                    print(
                        f"[distill] {job.method} IPC {job.ipc}: the candidates of class {key} are damaged "
                        f"({damage}); making them again",
                        flush=True,
                    )
        if not job.path.exists():
            continue
        redo = []
        for key in classes:
            if (job.path / key).exists() and (damage := shard_damage(job.path / key)):
                shutil.rmtree(job.path / key)
                redo.append(f"class {key} ({damage})")
        damaged_manifest = job.done() and manifest_damage(job.path)
        if redo or damaged_manifest:
            job.manifest_path.unlink(missing_ok=True)  # rewritten from the shards once they are whole
            what = (["redoing " + "; ".join(redo)] if redo else []) + (
                [f"rewriting {MANIFEST} ({damaged_manifest})"] if damaged_manifest else []
            )  # not "redoing rewriting manifest.json" when only the manifest is torn
            print(f"[distill] {job.method} IPC {job.ipc} at {job.path} is damaged; {'; '.join(what)}", flush=True)


def _actor_count_and_options(pending: int, max_actors: int | None) -> tuple[int, dict, str, int]:
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    limit = max_actors or pending
    if gpus:
        return min(gpus, pending, limit), {"num_gpus": 1, "num_cpus": 1}, "cuda", 4
    cpus = max(1, int(resources.get("CPU", 1)))
    return min(cpus, pending, limit), {"num_cpus": 1}, "cpu", 1


def distill(
    suite: Suite, real: RealData, prepared: Prepared, jobs: list[DistillJob], connect, max_actors: int | None = None
) -> list[Manifest]:
    """Make every job's set on Ray actors; returns the manifests (existing ones are read, not redone).

    `connect()` starts or joins the Ray cluster; it is called only if some shard is missing.
    """
    repair_sets(jobs, real.classes)

    def missing(job: DistillJob) -> list[str]:
        return [key for key in real.classes if not (job.path / key / SHARD).exists()]

    shards = [
        (job, label)
        for job in jobs
        if not job.done() and missing(job)
        for label, key in enumerate(real.classes)
        if not (job.shard_path(key) / SHARD).exists()
    ]
    selections = [job for job in jobs if job.selects and not job.done() and missing(job)]
    done_before = sum(len(real.classes) for job in jobs) - len(shards)
    print(
        f"[distill] {len(jobs)} sets, {len(shards)} shards to make ({done_before} already on disk)"
        + (f", then {len(selections)} choices across classes" if selections else ""),
        flush=True,
    )
    if shards or selections:
        connect()
        n, options, device, threads = _actor_count_and_options(len(shards), max_actors)
        Actor = ray.remote(**options)(ShardWorker)
        suite_ref, prepared_ref = ray.put(suite), ray.put(prepared)
        actors = [Actor.remote(suite_ref, prepared_ref, device, threads) for _ in range(n)]
        queue = list(shards)
        in_flight, deaths = {}, {}

        def start(actor, shard):
            in_flight[actor.run_shard.remote(*shard)] = (actor, shard)

        for actor in actors:
            if queue:
                start(actor, queue.pop(0))
        bar = tqdm(total=len(shards), desc=f"[distill] shards on {n} {device} actor(s)", mininterval=2)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            actor, shard = in_flight.pop(ready[0])
            try:
                ray.get(ready[0])  # re-raises a method's error here, with its traceback
            except ray.exceptions.RayActorError as e:  # the process died (killed, out of memory, node lost)
                if e.actor_init_failed:  # an error in loading the models: a new actor would fail alike
                    raise
                job, label = shard
                name, cause = shard_name(job, real.classes[label]), _first_line(e)
                deaths[name] = deaths.get(name, 0) + 1
                if deaths[name] > SHARD_RETRIES:
                    raise DistillError(f"{name}: its actor died {deaths[name]} times, last: {cause}") from None
                print(
                    f"[distill] retrying {name} on a new actor (retry {deaths[name]} of {SHARD_RETRIES}): "
                    f"its actor died: {cause}",
                    flush=True,
                )
                actors.remove(actor)
                ray.kill(actor)  # one only unreachable for now (ActorUnavailableError) would keep its GPU
                actor = Actor.remote(suite_ref, prepared_ref, device, threads)  # the same options
                actors.append(actor)
                start(actor, shard)  # a shard the dead actor had already published is returned as it is
                continue
            bar.update(1)
            if queue:
                start(actor, queue.pop(0))
        bar.close()
        if selections and not actors:
            actors.append(Actor.remote(suite_ref, prepared_ref, device, threads))
        for job in selections:  # every class's candidates are made: the choice across classes
            ray.get(actors[0].select.remote(job))
        for actor in actors:
            ray.kill(actor)
    for job in jobs:
        if not job.done():
            write_manifest(job, suite, prepared, real.classes)
    return [Manifest.read(job.path) for job in jobs]


_LOADED: dict[tuple, tuple[MethodContext, dict]] = {}


def distill_here(suite: Suite, real: RealData, prepared: Prepared, job: DistillJob, device: str = "cpu") -> Manifest:
    """One set made in this process, shard by shard, into the same cache `distill` fills (a search trial
    already holds the CPU or GPU Ray gave it; a set made by a run or an earlier trial is read, not redone)."""
    repair_sets([job], real.classes)
    if not job.done():
        worker = ShardWorker(suite, prepared, device, real=real)
        # A Ray worker that runs trial after trial loads the models once: the teachers by their identities, the
        # backbones each by its own (the worker keys them).
        bn_hash = prepared.bn_teacher.hash if prepared.bn_teacher is not None else None
        key = (prepared.teacher_hash, prepared.relabel_hash, bn_hash, str(device))
        worker.context, worker._backbones = _LOADED.setdefault(key, (worker.context, worker._backbones))
        for label in range(len(real.classes)):
            worker.run_shard(job, label)
        write_manifest(job, suite, prepared, real.classes)
    return Manifest.read(job.path)
