"""Cost accounting of a shard: its own peak memory (not the actor's lifetime maximum), the method's named
stages, and the machine — in shard.json and summed into the manifest."""

import dataclasses
import json
import resource
import sys
import time
from dataclasses import dataclass

import pytest
import torch

from harness.core.sets import Manifest
from harness.runtime import resources
from harness.runtime.resources import ShardPeakMemory
from harness.stages.distill import DistillJob, ShardWorker, write_manifest
from harness.stages.prepare import Prepared
from methods import list_methods, register_method
from methods.base import Method

HOG_MIB = 256


@dataclass
class HogConfig:
    mib: int = HOG_MIB


class MemoryHog(Method):
    """Class 0 holds a large tensor for a moment; every class reports two named stages."""

    name = "test-memory-hog"
    Config = HogConfig
    needs = frozenset()

    def distill_class(self, task):
        t0 = time.perf_counter()
        if task.label == 0:
            big = torch.ones(self.config.mib * 2**20 // 4)  # written, so resident
            big.sum()
            del big
        self.stage_seconds["bo"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        images = torch.rand(task.ipc, task.channels, task.image_size, task.image_size, generator=task.generator())
        self.stage_seconds["sampling"] = time.perf_counter() - t1
        return images


if MemoryHog.name not in list_methods():
    register_method(MemoryHog)


def _clear_refs_writable() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.fixture()
def worker_and_job(tmp_path, tiny_suite, tiny_real):
    prepared = Prepared(
        list(tiny_real.classes),
        tiny_suite.backbone,
        "",
        "",
        list(range(len(tiny_real.classes))),
        tiny_suite.teacher,
        "",
        "",
        None,
        None,
    )
    suite = dataclasses.replace(tiny_suite, methods={**tiny_suite.methods, MemoryHog.name: HogConfig(HOG_MIB)})
    worker = ShardWorker(suite, prepared, "cpu", real=tiny_real)
    job = DistillJob(MemoryHog.name, {"mib": HOG_MIB}, "h", 2, tmp_path / "set")
    return worker, job, prepared


@pytest.mark.skipif(not _clear_refs_writable(), reason="needs Linux's /proc/self/clear_refs")
def test_peak_memory_is_the_shards_own(worker_and_job):
    worker, job, _ = worker_and_job
    hungry = worker.run_shard(job, 0)
    light = worker.run_shard(job, 1)
    assert hungry["peak_memory_kind"] == light["peak_memory_kind"] == "shard_peak_rss"
    # The lifetime maximum would report the hungry shard's peak for the light one too.
    assert hungry["peak_memory_bytes"] - light["peak_memory_bytes"] > 0.75 * HOG_MIB * 2**20
    assert light["peak_memory_bytes"] > 0


def test_stage_seconds_and_machine_reach_shard_and_manifest(worker_and_job, tiny_suite, tiny_real):
    worker, job, prepared = worker_and_job
    classes = tiny_real.classes[:3]
    stats = [worker.run_shard(job, label) for label in range(3)]
    for s, key in zip(stats, classes):
        on_disk = json.loads((job.path / key / "shard.json").read_text())
        assert set(on_disk["stage_seconds"]) == {"bo", "sampling"} and on_disk["stage_seconds"] == s["stage_seconds"]
        assert 0 <= sum(on_disk["stage_seconds"].values()) <= on_disk["seconds"]
        assert on_disk["device"] == "cpu" and on_disk["torch_threads"] == torch.get_num_threads() and on_disk["cpu"]
    manifest = write_manifest(job, worker.suite, prepared, classes)
    for stage in ("bo", "sampling"):  # cleared before each class, so the sum is of each class's own time
        assert manifest.stage_seconds[stage] == pytest.approx(sum(s["stage_seconds"][stage] for s in stats))
    assert manifest.device == "cpu" and manifest.torch_threads == torch.get_num_threads()
    assert manifest.peak_memory_bytes == max(s["peak_memory_bytes"] for s in stats)
    assert json.loads(job.manifest_path.read_text())["stage_seconds"] == manifest.stage_seconds
    assert Manifest.read(job.path).stored() == manifest.stored()


def test_unlike_shards_are_shown_not_hidden(worker_and_job, tiny_suite, tiny_real):
    worker, job, prepared = worker_and_job
    for label in range(2):
        worker.run_shard(job, label)
    path = job.path / tiny_real.classes[1] / "shard.json"
    resumed_elsewhere = dict(json.loads(path.read_text()), torch_threads=8, peak_memory_kind="process_max_rss")
    path.write_text(json.dumps(resumed_elsewhere))
    manifest = write_manifest(job, worker.suite, prepared, tiny_real.classes[:2])
    assert manifest.torch_threads == f"{torch.get_num_threads()} + 8"
    assert "process_max_rss" in manifest.peak_memory_kind


def test_without_a_resettable_high_water_mark_the_lifetime_peak_is_labelled(monkeypatch):
    real_open = open

    def no_clear_refs(path, *args, **kwargs):
        if str(path) == "/proc/self/clear_refs":
            raise PermissionError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(resources, "open", no_clear_refs, raising=False)
    memory = ShardPeakMemory("cpu")
    memory.start()
    peak = memory.peak()
    assert memory.kind == "process_max_rss"
    assert peak == resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
