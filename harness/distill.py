"""Distill: run every (method, IPC) of a suite, one class per shard, on Ray actors.

Actors hold the backbone and the teacher (one actor per GPU where there are GPUs, else one single-threaded
actor per core) and take shards from the driver. A shard — (method, config hash, IPC, class) — is written to
a temporary folder and renamed into place, so an interrupted run leaves either a whole shard or none, and
a rerun skips whole shards. Each shard's seed comes from its identity, so a resumed run makes the same
images as an uninterrupted one. A finished set is an ImageFolder of PNGs plus manifest.json.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from methods import get_method
from methods.base import ClassTask

from .data import RealData, load_real_data
from .prepare import Prepared, backbone_conditions
from .suite import Suite, config_hash


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

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def done(self) -> bool:
        return self.manifest_path.exists()


def method_identity(suite: Suite, prepared: Prepared, name: str) -> tuple[dict, str, str]:
    """The method's config, a hash of everything that decides its images, and the key its shards are seeded
    from (`name/hash`, or the shared key of a method's ablation variants)."""
    cls = get_method(name)
    method_config = suite.method_config(name)
    config = dataclasses.asdict(method_config)
    ident = {"method": name, "config": config, "seed": suite.seed, "image_size": suite.data.image_size}
    if cls.uses_backbone:
        ident["backbone"] = prepared.backbone_hash
    if cls.uses_teacher:
        ident["teacher"] = prepared.teacher_hash
    if cls.needs_teacher_val_accuracy(method_config):  # it decides the images (CaO2's ĉ)
        ident["teacher_val_accuracy"] = prepared.teacher_val_accuracy
    h = config_hash(ident)
    shared = cls.seed_identity(method_config)
    if shared is None:
        return config, h, f"{name}/{h}"
    family, seed_config = shared
    # Without the teacher's accuracy: it decides what CLO aims at (ĉ), not what is drawn.
    seed_ident = {k: v for k, v in ident.items() if k != "teacher_val_accuracy"}
    return config, h, f"{family}/{config_hash({**seed_ident, 'method': family, 'config': seed_config})}"


def shard_seed(suite_seed: int, seed_key: str, ipc: int, class_key: str) -> int:
    digest = hashlib.sha256(f"{suite_seed}/{seed_key}/{ipc}/{class_key}".encode()).hexdigest()
    return int(digest[:8], 16)


def plan(suite: Suite, prepared: Prepared, out: Path, methods: list[str], ipcs: list[int]) -> list[DistillJob]:
    jobs = []
    for name in methods:
        config, h, seed_key = method_identity(suite, prepared, name)
        for ipc in ipcs:
            jobs.append(DistillJob(name, config, h, ipc, out / "distilled" / suite.name / name / h / f"ipc{ipc}",
                                   seed_key))
    return jobs


def versions() -> dict:
    import diffusers
    import timm

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "timm": timm.__version__,
            "python": platform.python_version()}


def save_images(images: torch.Tensor, folder: Path) -> None:
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, a in enumerate(arr):
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(folder / f"{i:04d}.png", optimize=False)


def load_distilled(path: Path, classes: list[str], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an ImageFolder distilled set back as uint8 images and labels in the suite's class order."""
    images, labels = [], []
    for label, key in enumerate(classes):
        for f in sorted((path / key).glob("*.png")):
            with Image.open(f) as img:
                a = np.asarray(img.convert("L" if channels == 1 else "RGB"))
            images.append(torch.from_numpy(a.copy()).reshape(a.shape[0], a.shape[1], -1).permute(2, 0, 1))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


class ShardPeakMemory:
    """Peak memory of one shard, not of the actor's lifetime: actors are reused across shards and methods, so
    a lifetime maximum (`ru_maxrss`) only grows and would charge every later shard with the hungriest
    earlier one.

    - `cuda_max_allocated`: torch's peak allocated CUDA memory, reset before the shard.
    - `shard_peak_rss` (Linux, CPU): writing 5 to /proc/self/clear_refs resets the kernel's resident
      high-water mark (VmHWM) to the current RSS; VmHWM is read back after the shard. It counts what the
      process already holds (models, real data) as well as what the shard allocates.
    - `process_max_rss`: where that reset is not possible, the process's lifetime peak, an upper bound.
    """

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.kind = "cuda_max_allocated" if self.cuda else "process_max_rss"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:  # not Linux, or a kernel/sandbox that forbids it
            self.kind = "process_max_rss"
            return
        self.kind = "shard_peak_rss" if _vm_hwm() is not None else "process_max_rss"

    def peak(self) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        hwm = _vm_hwm() if self.kind == "shard_peak_rss" else None
        if hwm is not None:
            return hwm
        self.kind = "process_max_rss"
        # ru_maxrss is in KiB on Linux but in bytes on macOS.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _vm_hwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # the kernel writes it in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str | torch.device) -> dict:
    """What a shard ran on: the accelerator (or "cpu"), the host CPU model and torch's intra-op threads."""
    d = torch.device(device)
    return {"device": torch.cuda.get_device_name(d) if d.type == "cuda" else "cpu", "cpu": _cpu_model(),
            "torch_threads": torch.get_num_threads()}


def _one(values):
    """The one value all shards share, or every distinct value joined with " + " where a set was made on
    unlike machines (a resumed run on another node): it stays visible rather than silently picking one."""
    distinct = sorted({v for v in values if v is not None}, key=str)
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else " + ".join(map(str, distinct))


class ShardWorker:
    """Holds the models; distils one class at a time. Used in-process or as a Ray actor."""

    def __init__(self, suite: Suite, prepared: Prepared, device: str = "cpu", threads: int | None = None,
                 real: RealData | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.suite, self.prepared, self.device = suite, prepared, device
        self.real = real if real is not None else load_real_data(suite.data)
        self._backbone = self._teacher = None
        self.conditions = backbone_conditions(suite, self.real.classes)
        self._methods: dict[str, object] = {}

    def _method(self, name: str):
        if name not in self._methods:
            cls = get_method(name)
            if cls.uses_backbone and self._backbone is None:
                self._backbone = self.prepared.load_backbone(self.suite, self.device)
            if cls.uses_teacher and self._teacher is None:
                self._teacher = self.prepared.load_teacher(self.suite, self.real.classes, self.device)
            self._methods[name] = cls(self.suite.method_config(name), self._backbone, self._teacher, self.device)
        return self._methods[name]

    def warm(self, method: str) -> None:
        """Load what `method` needs now, so that later shards measure only distillation."""
        self._method(method)

    def run_shard(self, job: DistillJob, label: int) -> dict:
        key = self.real.classes[label]
        final = job.path / key
        if (final / "shard.json").exists():  # another attempt already finished it
            return json.loads((final / "shard.json").read_text())
        method = self._method(job.method)
        seed = shard_seed(self.suite.seed, job.seed_key or f"{job.method}/{job.config_hash}", job.ipc, key)
        real = self.real.train.class_images(label) if type(method).uses_real else None
        task = ClassTask(label, key, job.ipc, seed, real, len(self.real.classes), self.real.image_size,
                         self.real.channels, condition=self.conditions[label])
        method.stage_seconds.clear()  # the method fills it during this class only
        memory = ShardPeakMemory(self.device)
        memory.start()
        t0 = time.perf_counter()
        images = method.distill_class(task)
        if memory.cuda:  # kernels still queued would otherwise fall outside the measured time
            torch.cuda.synchronize(memory.device)
        seconds = time.perf_counter() - t0
        peak = memory.peak()
        expected = (job.ipc, self.real.channels, self.real.image_size, self.real.image_size)
        if tuple(images.shape) != expected:
            raise RuntimeError(f"{job.method} returned {tuple(images.shape)} for class {key}, expected {expected}")
        stats = {"class": key, "label": label, "seed": seed, "seconds": seconds, "images": job.ipc,
                 "peak_memory_bytes": int(peak), "peak_memory_kind": memory.kind,
                 "stage_seconds": {k: float(v) for k, v in method.stage_seconds.items()}, **machine(self.device)}
        tmp = job.path / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_images(images, tmp)
        (tmp / "shard.json").write_text(json.dumps(stats))
        try:
            os.rename(tmp, final)
        except OSError:  # a concurrent attempt won the race; its shard is identical
            shutil.rmtree(tmp, ignore_errors=True)
        return stats


def write_manifest(job: DistillJob, suite: Suite, prepared: Prepared, classes: list[str]) -> dict:
    shards = [json.loads((job.path / k / "shard.json").read_text()) for k in classes]
    images = sum(s["images"] for s in shards)
    seconds = sum(s["seconds"] for s in shards)
    stages: dict[str, float] = {}
    for s in shards:  # shards made before stages were recorded have none
        for stage, t in s.get("stage_seconds", {}).items():
            stages[stage] = stages.get(stage, 0.0) + t
    manifest = {
        "suite": suite.name, "method": job.method, "config": job.config, "config_hash": job.config_hash,
        "ipc": job.ipc, "classes": classes, "seeds": {s["class"]: s["seed"] for s in shards},
        "images": images, "distill_seconds": seconds, "seconds_per_image": seconds / max(images, 1),
        "peak_memory_bytes": max(s["peak_memory_bytes"] for s in shards),
        "peak_memory_kind": _one(s["peak_memory_kind"] for s in shards),
        "stage_seconds": stages,
        # Costs compare only between like machines: what ran the shards, and with how many threads.
        "device": _one(s.get("device") for s in shards), "cpu": _one(s.get("cpu") for s in shards),
        "torch_threads": _one(s.get("torch_threads") for s in shards),
        "backbone": prepared.backbone_hash if get_method(job.method).uses_backbone else None,
        "teacher": prepared.teacher_hash if get_method(job.method).uses_teacher else None,
        "backbone_check": prepared.backbone_check, "versions": versions(),
    }
    for stale in job.path.glob(".*.tmp-*"):  # shards a killed attempt left half-written
        shutil.rmtree(stale, ignore_errors=True)
    tmp = job.manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, job.manifest_path)
    return manifest


def _actor_count_and_options(pending: int, max_actors: int | None) -> tuple[int, dict, str, int]:
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    limit = max_actors or pending
    if gpus:
        return min(gpus, pending, limit), {"num_gpus": 1, "num_cpus": 1}, "cuda", 4
    cpus = max(1, int(resources.get("CPU", 1)))
    return min(cpus, pending, limit), {"num_cpus": 1}, "cpu", 1


def distill(suite: Suite, real: RealData, prepared: Prepared, jobs: list[DistillJob], connect,
            max_actors: int | None = None) -> list[dict]:
    """Make every job's set on Ray actors; returns the manifests (existing ones are read, not redone).

    `connect()` starts or joins the Ray cluster; it is called only if some shard is missing.
    """
    import ray

    shards = [(job, label) for job in jobs if not job.done() for label, key in enumerate(real.classes)
              if not (job.path / key / "shard.json").exists()]
    done_before = sum(len(real.classes) for job in jobs) - len(shards)
    print(f"[distill] {len(jobs)} sets, {len(shards)} shards to make ({done_before} already on disk)", flush=True)
    if shards:
        connect()
        n, options, device, threads = _actor_count_and_options(len(shards), max_actors)
        Actor = ray.remote(**options)(ShardWorker)
        suite_ref, prepared_ref = ray.put(suite), ray.put(prepared)
        actors = [Actor.remote(suite_ref, prepared_ref, device, threads) for _ in range(n)]
        queue = list(shards)
        in_flight = {}
        for actor in actors:
            if queue:
                job, label = queue.pop(0)
                in_flight[actor.run_shard.remote(job, label)] = actor
        bar = tqdm(total=len(shards), desc=f"[distill] shards on {n} {device} actor(s)", mininterval=2)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            actor = in_flight.pop(ready[0])
            ray.get(ready[0])  # re-raises a method's error here, with its traceback
            bar.update(1)
            if queue:
                job, label = queue.pop(0)
                in_flight[actor.run_shard.remote(job, label)] = actor
        bar.close()
        for actor in actors:
            ray.kill(actor)
    manifests = []
    for job in jobs:
        if not job.done():
            write_manifest(job, suite, prepared, real.classes)
        manifest = json.loads(job.manifest_path.read_text())
        manifest["path"] = str(job.path)  # where this run keeps it; not stored, so a set can be moved
        manifests.append(manifest)
    return manifests
