"""Evaluate: every (distilled set, student, protocol, seed) not yet in the result store, trained on Ray and
tested on the real held-out test set; one result row each.

The training loop is harness/models/training.py and the recipes are harness/models/protocols.py; this module plans the
trials and schedules them: the seeds of a setting together in one Ray task (or, for a student the suite
names in `distributed_students`, one Ray Train run of DDP workers), rows appended as each group finishes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
import torch
from tqdm.auto import tqdm

from harness.core.identity import FULL_DATA, row_key, versions
from harness.core.sets import MANIFEST, Manifest, load_set
from harness.core.store import COMMITTED_RESULTS, ResultStore
from harness.models.data import load_real_data
from harness.models.protocols import Protocol, reference_protocol
from harness.models.training import train_student
from harness.runtime.allocator import keep_freed_memory, release_freed_memory
from harness.runtime.data_parallel import run_data_parallel


@dataclass
class EvalTrial:
    """One student trained on one distilled set under one protocol with one seed: one result row."""

    suite: str
    method: str
    config_hash: str
    ipc: int
    set_path: str
    student: str
    protocol: str
    protocol_hash: str
    seed: int
    distill_seconds_per_image: float
    peak_memory_bytes: int

    def key(self) -> tuple:
        return row_key(vars(self))


def full_data_protocol(suite) -> Protocol:
    """The suite's reference recipe, run for `full_data.epochs` over the whole training split."""
    f = suite.full_data
    return reference_protocol(suite.protocols).full_data(f.epochs, f.batch_size, f.patience, f.lr_drops)


def plan_trials(
    suite,
    manifests: list[Manifest],
    students: list[str],
    seeds: int,
    real_fingerprint: str | None = None,
    prepared=None,
    device: str = "cpu",
) -> list[EvalTrial]:
    """Every (set, student, protocol, seed), plus one full-data trial per student when the suite asks for it.
    `device` is where the trials run: a recipe whose precision follows the device is keyed as it runs there."""
    trials = []
    protocol_hash = prepared.protocol_hash if prepared is not None else (lambda p: p.identity())
    if suite.full_data.epochs and real_fingerprint:
        full = full_data_protocol(suite)
        trials += [
            EvalTrial(
                suite.name, FULL_DATA, real_fingerprint[:12], 0, "", student, full.name, full.identity(), 0, 0.0, 0
            )
            for student in students
        ]
    for m in manifests:
        for student in students:
            for name, protocol in suite.protocols.items():
                for seed in range(seeds):
                    trials.append(
                        EvalTrial(
                            m.suite,
                            m.method,
                            m.config_hash,
                            m.ipc,
                            m.path,
                            student,
                            name,
                            protocol_hash(protocol.for_student(student).on_device(device)),
                            seed,
                            m.seconds_per_image,
                            m.peak_memory_bytes,
                        )
                    )
    return trials


def expected_images(path: Path, ipc: int, classes: int) -> int:
    """IPC × classes; for a set made elsewhere (`ddbench evaluate`, whose classes may be uneven), the counts its
    manifest records."""
    external = Manifest.read(path).external if (path / MANIFEST).exists() else None
    return sum(external["counts"]) if external else ipc * classes


def _trial_data(trial: EvalTrial, protocol: Protocol, classes, channels, suite):
    """The trial's training images, labels and recipe, and the validation split where the recipe follows it."""
    if trial.method == FULL_DATA:
        real = load_real_data(suite.data)
        full = full_data_protocol(suite)
        validation = (real.val.load(torch.arange(len(real.val))), real.val.labels) if full.plateau_rule() else None
        return real.train.load(torch.arange(len(real.train))), real.train.labels, full, validation
    images, labels = load_set(Path(trial.set_path), classes, channels)
    expected = expected_images(Path(trial.set_path), trial.ipc, len(classes))
    if len(labels) != expected:  # lost since distill verified it at the start of this run
        raise RuntimeError(f"{trial.set_path} holds {len(labels)} images, not {expected}: run again to repair it")
    return images, labels, protocol, None


def _rows(trials: list[EvalTrial], results: list[dict]) -> list[dict]:
    rows = []
    for trial, result in zip(trials, results):
        row = asdict(trial)
        row.pop("set_path")
        row.update(result, kind="measured", versions=versions(), finished_at=time.time())
        rows.append(row)
    return rows


def _train_group(
    trials: list[EvalTrial],
    protocol: Protocol,
    classes: list[str],
    channels: int,
    test,
    device: str,
    suite,
    prepared,
    teacher,
    **options,
) -> list[dict]:
    """Load the group's set (or the real training split) and its teacher, train its seeds, make its rows."""
    keep_freed_memory()
    release_freed_memory()  # what an earlier group on this (reused) worker freed: it may sit below live blocks
    started = time.perf_counter()
    images, labels, protocol, validation = _trial_data(trials[0], protocol, classes, channels, suite)
    if teacher is None and protocol.needs_teacher:
        teacher = prepared.load_relabel_teacher(device)
    loading = time.perf_counter() - started
    results = train_student(
        trials[0].student,
        images,
        labels,
        test[0],
        test[1],
        len(classes),
        trials[0].ipc,
        protocol,
        [t.seed for t in trials],
        device=device,
        teacher=teacher,
        validation=validation,
        **options,
    )
    for result in results:  # the set and teacher loaded: data movement, as the profile counts it
        result["setup_seconds"] += loading / len(results)
    return _rows(trials, results)


def run_group(
    trials: list[EvalTrial],
    protocol: Protocol,
    classes: list[str],
    channels: int,
    test: tuple[torch.Tensor, torch.Tensor],
    device: str,
    threads: int,
    suite=None,
    prepared=None,
    teacher=None,
) -> list[dict]:
    """The seeds of one (set, student, protocol), trained together in one process; one row per seed."""
    torch.set_num_threads(threads)
    return _train_group(trials, protocol, classes, channels, test, device, suite, prepared, teacher)


def run_group_distributed(
    trials: list[EvalTrial],
    protocol: Protocol,
    classes: list[str],
    channels: int,
    test,
    workers: int,
    use_gpu: bool,
    suite=None,
    prepared=None,
    teacher=None,
    storage_path: str | None = None,
) -> list[dict]:
    """The same group through Ray Train: `workers` DDP processes (one GPU each where GPUs exist) run
    `train_student` on their slices of every batch; rank 0 reports the rows."""

    def work(worker):
        rows = _train_group(
            trials,
            protocol,
            classes,
            channels,
            test,
            worker.device,
            suite,
            prepared,
            teacher,
            vectorise=False,
            rank=worker.rank,
            world=worker.world,
            wrap=worker.wrap,
        )
        (worker.folder / "rows.json").write_text(json.dumps(rows))

    return run_data_parallel(
        work, workers, use_gpu, lambda folder: json.loads((folder / "rows.json").read_text()), storage_path
    )


def student_device() -> str:
    """Where this run's student trials go, known before any starts: the attached cluster's GPUs, or for a local
    cluster (started only when work needs it) this machine's."""
    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else torch.cuda.device_count()
    return "cuda" if gpus else "cpu"


def trial_resources() -> tuple[dict, str]:
    """Per-trial Ray resources and device: small students share a GPU four ways; on CPU each trial is a
    single-threaded task on one core."""
    if ray.cluster_resources().get("GPU", 0):
        return {"num_gpus": 0.25, "num_cpus": 1}, "cuda"
    return {"num_cpus": 1}, "cpu"


def group_seeds(todo: list[EvalTrial]) -> list[list[EvalTrial]]:
    """The trials that differ only in seed, together: they are trained as one SeedStack."""
    groups: dict[tuple, list[EvalTrial]] = {}
    for t in todo:
        groups.setdefault(t.key()[:-1] + (t.set_path,), []).append(t)
    return list(groups.values())


def group_cost(
    group: list[EvalTrial], protocol: Protocol, num_classes: int, train_images: int, test_images: int
) -> float:
    """A group's cost in image passes, to schedule the dearest first: training steps over its epochs (a backward
    pass about two forward ones, the teacher's relabelling one more) and each seed's test pass."""
    first = group[0]
    images = train_images if first.method == FULL_DATA else first.ipc * num_classes  # full data: dearest anyway
    epochs = protocol.for_student(first.student).epochs_for(max(first.ipc, 1))
    per_image = 3 + (1 if protocol.needs_teacher else 0)
    return len(group) * (epochs * images * per_image + test_images)


def run_trials(
    todo: list[EvalTrial],
    protocol_for,
    real,
    store,
    suite,
    prepared,
    teacher_for=None,
    extra_for=None,
    desc: str = "[evaluate] trials done",
    storage_path: str | None = None,
) -> None:
    """Run `todo` on Ray, the seeds of a setting together, and append each row to `store` as its group
    finishes. A student listed in the suite's `distributed_students` runs through Ray Train (DDP) with that
    many workers; the others are concurrent single-core (or quarter-GPU) Ray tasks."""

    options, device = trial_resources()
    protocol_of = protocol_for
    protocol_for = lambda t: protocol_of(t).on_device(device)  # noqa: E731 — as plan_trials keyed the rows
    task = ray.remote(**options)(run_group)
    distributed = ray.remote(num_cpus=0)(run_group_distributed)  # its workers hold the resources
    test_ref = ray.put((real.test.load(torch.arange(len(real.test))), real.test.labels))
    suite_ref, prepared_ref = ray.put(suite), ray.put(prepared)
    workers_for = getattr(suite, "distributed_students", {}) or {}
    futures = {}
    # The dearest groups first: concurrent tasks then end together instead of one core training an IPC 50 group
    # alone at the end while the others idle (Ray starts queued tasks in the order they were submitted).
    groups = sorted(
        group_seeds(todo),
        key=lambda g: -group_cost(g, protocol_for(g[0]), len(real.classes), len(real.train), len(real.test)),
    )
    for group in groups:
        first = group[0]
        teacher = teacher_for(first) if teacher_for else None
        if workers_for.get(first.student, 1) > 1:
            ref = distributed.remote(
                group,
                protocol_for(first),
                real.classes,
                real.channels,
                test_ref,
                workers_for[first.student],
                device == "cuda",
                suite_ref,
                prepared_ref,
                teacher,
                storage_path,
            )
        else:
            ref = task.remote(
                group,
                protocol_for(first),
                real.classes,
                real.channels,
                test_ref,
                device,
                1,
                suite_ref,
                prepared_ref,
                teacher,
            )
        futures[ref] = group
    bar = tqdm(total=len(todo), desc=desc, mininterval=2)
    while futures:
        ready, _ = ray.wait(list(futures), num_returns=1)
        group = futures.pop(ready[0])
        for trial, row in zip(group, ray.get(ready[0])):
            store.append({**row, **(extra_for(trial) if extra_for else {})})
        bar.update(len(group))
    bar.close()


def adopt_committed_references(trials: list[EvalTrial], store, committed: Path | None) -> int:
    """Copy into `store` the full-data rows the project committed for the same key: the same data (its
    fingerprint), student, recipe (its identity) and seed. Trained to a validation plateau they cost an hour
    on a laptop, the rest of the default run minutes, and training is deterministic on one machine, so a run
    that reached the same key would measure the same number. Distilled-set rows are never taken: a run
    measures what it distils."""
    path = committed / f"{trials[0].suite}.jsonl" if committed is not None and trials else None
    wanted = {t.key(): t for t in trials if t.method == FULL_DATA and not store.has(t.key())}
    if not wanted or path is None or not path.exists():
        return 0
    adopted = 0
    for row in ResultStore(path).read():
        if (
            row.get("kind") == "measured"
            and row_key(row) in wanted
            and store.append({**row, "adopted_from": str(path)})
        ):
            adopted += 1
            print(
                f"[evaluate] full-data {row['student']}: {row['accuracy']:.2%} taken from {path} (same data, "
                f"recipe and seed; measured {time.strftime('%Y-%m-%d', time.localtime(row['finished_at']))}); "
                f"not trained again",
                flush=True,
            )
    return adopted


def evaluate(
    suite,
    real,
    manifests: list[Manifest],
    store,
    students: list[str],
    seeds: int,
    connect,
    prepared=None,
    out=None,
    committed: Path | None = COMMITTED_RESULTS,
) -> int:
    """Train every (set, student, protocol, seed) not yet in the store as concurrent Ray tasks.

    Rows are appended as each task finishes, so an interrupted evaluation keeps what it finished. Full-data
    rows found under `committed` for the same key are copied, not trained (`adopt_committed_references`).
    Returns the number of trials run.
    """
    trials = plan_trials(suite, manifests, students, seeds, real.train.fingerprint(), prepared, student_device())
    adopt_committed_references(trials, store, committed)
    todo = [t for t in trials if not store.has(t.key())]
    print(
        f"[evaluate] {len(trials)} trials, {len(todo)} to run ({len(trials) - len(todo)} already in the store)",
        flush=True,
    )
    if not todo:
        return 0
    connect()
    run_trials(
        todo,
        lambda t: suite.protocols[t.protocol],
        real,
        store,
        suite,
        prepared,
        storage_path=str((Path(out) / "ray_train").resolve()) if out is not None else None,
    )
    return len(todo)
