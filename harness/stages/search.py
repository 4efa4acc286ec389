"""Search: a method's hyperparameters tuned on the validation split, with Ray Tune running the trials and Optuna
choosing them.

A trial draws a config from the method's `search_space`, distils its set into the same cache every run uses
(keyed by the config's hash: a config already made is read, not redone), trains one proxy student under one
protocol and reports the student's accuracy on the validation split (carved from the training set,
harness/models/data.py) as it trains. The test split is never loaded: the search runs on `load_real_data(...,
with_test=False)`, whose `test` is None. Optuna's TPE (seeded, multivariate) proposes configs through Ray Tune's
`OptunaSearch`, the suite's own config of the method first; ASHA stops trials whose curve falls behind at a
student-epoch milestone. The experiment lives under `<out>/search/`: a killed search restores from there
(`Tuner.restore`) and runs only the trials it had not finished.

Outputs: every trial a row of kind "search" in the result store (the board reads only "measured" rows), the
best config a suite fragment `<out>/search/<method>.yaml` that a profile includes (`include:`), and plots.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter

from harness.config.defaults import DEFAULT_TRIALS as DEFAULT_TRIALS  # re-exported
from harness.config.schema import Suite
from harness.core import atomic
from harness.core.identity import config_hash, search_key, versions
from harness.core.sets import load_set
from harness.core.store import ResultStore
from harness.models.data import RealData
from harness.models.protocols import reference_protocol
from harness.models.training import train_student
from harness.runtime.allocator import keep_freed_memory, release_freed_memory
from harness.stages.distill import distill_here, plan
from harness.stages.prepare import Prepared
from methods import get_method

ROW_KIND = "search"
METRIC = "val_accuracy"
# Where Ray keeps a session's files (`ray.init(_temp_dir=...)` moves it): a killed search's intact state is there.
RAY_TEMP = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"


class SearchError(Exception):
    """A search cannot run as asked; one line."""


@dataclass(frozen=True)
class SearchSpec:
    """One search: `method`'s space, its sets at `ipc`, scored by `student` trained under `protocol`."""

    method: str
    ipc: int
    student: str
    protocol: str
    trials: int
    seed: int = 0  # TPE's sampler and the proxy student's seed
    max_concurrent: int = 0  # 0: as many trials as the cluster has GPUs (else CPUs)
    reports: int = 10  # validation evaluations over the student's epochs: ASHA's milestones
    grace_reports: int = 2  # no trial stops before this many reports
    reduction_factor: int = 3  # ASHA keeps the best 1/η at each rung
    # A protocol search: `protocol`'s recipe for `student` (its search_space) is tuned on the set of `method` at
    # the suite's config, instead of the method's config.
    protocol_search: bool = False

    @property
    def subject(self) -> str:
        """What is searched: the method, or the protocol for the student."""
        return f"{self.protocol}-{self.student}" if self.protocol_search else self.method


def space_of(suite: Suite, spec: SearchSpec) -> dict[str, tuple]:
    return suite.protocols[spec.protocol].search_space if spec.protocol_search else get_method(spec.method).search_space


def tune_space(space: dict[str, tuple]) -> dict:
    """A method's declared ranges as Ray Tune's distributions (OptunaSearch turns them into Optuna's)."""
    out = {}
    for name, spec in space.items():
        kind = spec[0]
        if kind == "float":
            out[name] = tune.uniform(spec[1], spec[2])
        elif kind == "log":
            out[name] = tune.loguniform(spec[1], spec[2])
        elif kind == "int":
            out[name] = tune.randint(spec[1], spec[2] + 1)  # randint's upper bound is exclusive
        elif kind == "choice":
            out[name] = tune.choice(list(spec[1]))
        else:
            raise SearchError(f"search_space.{name}: unknown kind {kind!r} (float, log, int or choice)")
    return out


def default_point(suite: Suite, spec: SearchSpec) -> dict:
    """The suite's own config of the method on the searched fields (the paper's defaults unless the suite sets
    them): the first trial, so the search's best is never worse than the default on validation."""
    if spec.protocol_search:
        point, where = suite.protocols[spec.protocol].search_point(spec.student), f"protocols.{spec.protocol}"
    else:
        config, where = suite.method_config(spec.method), f"methods.{spec.method}"
        point = {name: getattr(config, name) for name in space_of(suite, spec)}
    for name, (kind, *bounds) in space_of(suite, spec).items():
        value = point[name]
        if kind == "choice" and value not in bounds[0] or kind != "choice" and not bounds[0] <= value <= bounds[1]:
            raise SearchError(
                f"{suite.source}: {where}.{name}: the suite's {value!r} lies outside the search range "
                f"{bounds}: the default must be one of the trials"
            )
    return point


def search_id(suite: Suite, prepared: Prepared, spec: SearchSpec, real: RealData) -> str:
    """What decides the search's trials: a rerun with the same id is the same search, resumed."""
    protocol = suite.protocols[spec.protocol]
    fields = dataclasses.asdict(spec)
    if not spec.protocol_search:  # added with protocol searches: method searches' ids stay what they were
        del fields["protocol_search"]
    return search_key(
        suite.name,
        fields,
        default_point(suite, spec),
        {k: list(v) for k, v in space_of(suite, spec).items()},
        protocol.identity(),
        real.val.fingerprint(),
        prepared.for_method(spec.method).backbone_hash,
        prepared.teacher_hash,
    )


def experiment_name(spec: SearchSpec, sid: str) -> str:
    if spec.protocol_search:
        return f"{spec.protocol}-{spec.student}-on-{spec.method}-ipc{spec.ipc}-{sid}"
    return f"{spec.method}-ipc{spec.ipc}-{spec.student}-{spec.protocol}-{sid}"


def trial_recipe(suite: Suite, spec: SearchSpec, drawn: dict):
    """The protocol a trial's student trains under: the suite's, or in a protocol search the drawn settings
    for the student."""
    protocol = suite.protocols[spec.protocol]
    if not spec.protocol_search:
        return protocol
    cast = {k: float(v) for k, v in drawn.items()}
    mine = {**protocol.per_student.get(spec.student, {}), **cast}
    return dataclasses.replace(protocol, per_student={**protocol.per_student, spec.student: mine})


def _typed(suite: Suite, method: str, drawn: dict):
    """The trial's config: the suite's, with the drawn fields cast to the config's types (Optuna's ints are
    numpy ints, a float field may be drawn as an int)."""
    base = suite.method_config(method)
    cast = {name: type(getattr(base, name))(value) for name, value in drawn.items()}
    return dataclasses.replace(base, **cast)


def run_trial(
    drawn: dict, suite: Suite, prepared: Prepared, real: RealData, spec: SearchSpec, out: str, epochs: int, ledger: str
) -> None:
    """One trial, in a Ray Tune worker: the drawn config's set (made here, or read from the cache), then the
    proxy student, its validation accuracy reported every epochs/reports epochs.

    The `ledger` folder keeps each finished trial's curve, written before Ray Tune hears the trial end: Tune
    saves its state every ten seconds or more, so a search killed before it recorded a finished trial reruns that
    trial on resume, and the rerun replays the curve instead of training again. `trained.log` there gets a line
    per student actually trained, so that reruns can be counted."""
    trial = tune.get_context().get_trial_id()
    done = Path(ledger) / f"{trial}.json"
    if done.exists():
        for point in json.loads(done.read_text())["reports"]:
            tune.report(point)
        return
    torch.set_num_threads(1)
    keep_freed_memory()
    release_freed_memory()  # what an earlier trial on this (reused) worker freed
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    trial_suite = (
        suite if spec.protocol_search else suite.with_method_config(spec.method, _typed(suite, spec.method, drawn))
    )
    t0 = time.perf_counter()
    (job,) = plan(trial_suite, prepared, Path(out), [spec.method], [spec.ipc])
    manifest = distill_here(trial_suite, real, prepared, job, device)
    distill_seconds = time.perf_counter() - t0
    images, labels = load_set(Path(manifest.path), real.classes, real.channels)
    protocol = trial_recipe(suite, spec, drawn)
    teacher = prepared.load_relabel_teacher(device) if protocol.needs_teacher else None
    val_images, val_labels = real.val.load(torch.arange(len(real.val))), real.val.labels
    t1 = time.perf_counter()

    reports = []
    every = max(1, math.ceil(epochs / spec.reports))

    def report(epoch: int, accuracy: float) -> None:
        reports.append(
            {
                "epoch": epoch,
                METRIC: accuracy,
                "config_hash": manifest.config_hash,
                "distill_seconds": distill_seconds,
                "train_seconds": time.perf_counter() - t1,
            }
        )
        if epoch == epochs:  # the ledger first: see above
            atomic.write_json(done, {"config": {k: _plain(v) for k, v in drawn.items()}, "reports": reports})
        tune.report(reports[-1])

    with open(Path(ledger) / "trained.log", "a") as log:
        log.write(f"{trial}\n")
    # The validation split stands where evaluation passes the test split: the student never sees a test image.
    train_student(
        spec.student,
        images,
        labels,
        val_images,
        val_labels,
        len(real.classes),
        spec.ipc,
        protocol,
        spec.seed,
        device=device,
        teacher=teacher,
        report=report,
        report_every=every,
    )


def _readable(path: Path) -> bool:
    """A whole state file: JSON, or a pickle (Ray names its pickled search-generator state `.json` too)."""
    data = path.read_bytes()
    for load in (json.loads, pickle.loads):
        try:
            load(data)
            return True
        except Exception:  # a torn file fails in as many ways as its format has
            pass
    return False


def _stages(staging: Path, storage: Path) -> bool:
    """Whether a staging folder was this storage folder's: the same search run into another `--out` has the same
    experiment name. Its trials' storage context (pickled, hex-encoded in the experiment state) names the path."""
    mark = str(storage).encode().hex()
    return any(mark in f.read_text(errors="replace") for f in staging.glob("experiment_state-*.json"))


def repair_torn_state(path: Path) -> list[str]:
    """Ray Tune writes its driver state (experiment, search generator, searcher) in the session's staging folder by
    rename, then copies it into the storage folder in place: a kill -9 during the copy leaves a torn file there
    (the searcher's pickle, most often), and `Tuner.restore` then starts the search algorithm afresh. The staging
    folder of the dead session still holds the intact file; put it back. Returns the names repaired."""
    repaired = []
    for f in sorted(path.glob("*state*")):
        if f.name.startswith(".") or not f.is_file() or _readable(f):
            continue
        copies = sorted(
            (
                c
                for c in RAY_TEMP.glob(f"session_*/artifacts/*/{path.name}/driver_artifacts/{f.name}")
                if _stages(c.parent, path.parent)
            ),
            key=lambda c: c.stat().st_mtime,
            reverse=True,
        )
        intact = next((c for c in copies if _readable(c)), None)
        if intact is None:
            raise SearchError(
                f"{f} is torn (the search was killed while Ray Tune wrote it) and no intact copy is "
                f"left in {RAY_TEMP}: remove {path} to start the search again"
            )
        with atomic.replacing(f) as tmp:
            tmp.write_bytes(intact.read_bytes())
        repaired.append(f.name)
    return repaired


def trial_resources(max_concurrent: int) -> tuple[dict, int]:
    """A GPU per trial where the cluster has GPUs, else one CPU core; and how many trials run at once."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    per_trial = {"cpu": 1, "gpu": 1} if gpus else {"cpu": 1}
    return per_trial, max_concurrent or (gpus or cpus)


def run_search(
    suite: Suite, real: RealData, prepared: Prepared, spec: SearchSpec, out: Path, resume: bool = False
) -> SearchOutcome:
    """Run (or resume) one method's search; returns its trials. `real.test` must be None: the search reads
    the training and validation splits only."""
    if real.test is not None:
        raise SearchError("a search loads the data without its test split (load_real_data(..., with_test=False))")
    if not space_of(suite, spec):
        raise SearchError(f"{suite.source}: {spec.subject}: declares no search_space: nothing to search")
    out = Path(out).absolute()
    protocol = suite.protocols[spec.protocol]
    epochs = protocol.epochs_for(spec.ipc)
    sid = search_id(suite, prepared, spec, real)
    storage, name = out / "search", experiment_name(spec, sid)
    path = storage / name
    ledger = path / "ledger"
    ledger.mkdir(parents=True, exist_ok=True)
    trainable = tune.with_parameters(
        run_trial, suite=suite, prepared=prepared, real=real, spec=spec, out=str(out), epochs=epochs, ledger=str(ledger)
    )
    per_trial, concurrent = trial_resources(spec.max_concurrent)
    trainable = tune.with_resources(trainable, per_trial)
    t0 = time.perf_counter()
    if tune.Tuner.can_restore(str(path)):
        if not resume:
            raise SearchError(
                f"{path} holds this search already: pass --resume to continue it (finished trials "
                f"are kept), or remove the folder to start again"
            )
        for name_ in repair_torn_state(path):
            print(f"[search] {spec.subject}: {name_} was torn by the kill; put back the intact copy", flush=True)
        print(f"[search] {spec.subject}: resuming {path}", flush=True)
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        every = max(1, math.ceil(epochs / spec.reports))
        searcher = OptunaSearch(
            metric=METRIC,
            mode="max",
            points_to_evaluate=[default_point(suite, spec)],
            sampler=TPESampler(seed=spec.seed, multivariate=True),
        )
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=epochs,
            grace_period=min(epochs, every * spec.grace_reports),
            reduction_factor=spec.reduction_factor,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(space_of(suite, spec)),
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                num_samples=spec.trials,
                scheduler=scheduler,
                reuse_actors=True,
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrent),
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=str(storage), verbose=0, failure_config=tune.FailureConfig(max_failures=1)
            ),
        )
    # Ray Tune answers Ctrl-C by logging a warning, saving its state and returning from fit() with trials unfinished,
    # which a caller cannot tell from another early end; with its handler off (TUNE_DISABLE_SIGINT_HANDLER, its
    # documented switch, read when fit() starts) Ctrl-C is the KeyboardInterrupt the CLI answers with one line and
    # exit 130, as everywhere else. The search resumes as after a kill: from Tune's last saved state and the ledger,
    # which replays every finished trial's curve rather than training it again.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    grid = tuner.fit()
    # A search cut short otherwise (a SIGTERM's end of fit()) must not publish its best-so-far as its result.
    unfinished = len(grid) - grid.num_terminated - grid.num_errors
    if unfinished or len(grid) < spec.trials:
        raise SearchError(
            f"{spec.subject}: the search was interrupted with {len(grid) - unfinished} of "
            f"{spec.trials} trials done; nothing was written: rerun with --resume to continue it"
        )
    return SearchOutcome.from_grid(spec, sid, str(path), epochs, grid, time.perf_counter() - t0)


@dataclass
class TrialRecord:
    index: int  # creation order: 0 is the suite's own config
    config: dict
    config_hash: str | None
    val_accuracy: float | None
    epochs: int
    status: str  # finished | stopped early | error
    seconds: float  # the trial's wall time (set made or read, student trained)
    distill_seconds: float
    train_seconds: float
    curve: list[tuple[int, float]]


@dataclass
class SearchOutcome:
    spec: SearchSpec
    search: str
    path: str
    max_epochs: int
    trials: list[TrialRecord]
    wall_seconds: float

    @classmethod
    def from_grid(cls, spec, sid, path, max_epochs, grid, wall_seconds) -> SearchOutcome:
        records = []
        for result in grid:
            m, df = result.metrics or {}, result.metrics_dataframe
            curve = [] if df is None or df.empty else [(int(e), float(a)) for e, a in zip(df["epoch"], df[METRIC])]
            epochs = curve[-1][0] if curve else 0
            status = "error" if result.error else "finished" if epochs >= max_epochs else "stopped early"
            records.append(
                TrialRecord(
                    _trial_index(result, len(records)),
                    {k: _plain(v) for k, v in result.config.items()},
                    m.get("config_hash"),
                    curve[-1][1] if curve else None,
                    epochs,
                    status,
                    float(m.get("time_total_s", 0.0)),
                    float(m.get("distill_seconds", 0.0)),
                    float(m.get("train_seconds", 0.0)),
                    curve,
                )
            )
        records.sort(key=lambda r: r.index)
        return cls(spec, sid, path, max_epochs, records, wall_seconds)

    def best(self) -> TrialRecord | None:
        scored = [t for t in self.trials if t.val_accuracy is not None and t.status != "error"]
        # Only curves run to the end compete: a stopped trial's accuracy is of fewer epochs.
        full = [t for t in scored if t.status == "finished"] or scored
        return max(full, key=lambda t: t.val_accuracy) if full else None

    def default(self) -> TrialRecord | None:
        return self.trials[0] if self.trials and self.trials[0].index == 0 else None

    def early_stopping(self) -> tuple[int, float]:
        """Trials ASHA stopped, and the student-training seconds that saved: each stopped trial's epochs not
        run, at that trial's own seconds per epoch."""
        stopped = [t for t in self.trials if t.status == "stopped early" and t.epochs]
        saved = sum((self.max_epochs - t.epochs) * t.train_seconds / t.epochs for t in stopped)
        return len(stopped), saved

    def rows(self, suite: Suite) -> list[dict]:
        """One result-store row per trial, of kind "search": keyed by the search id as its protocol hash and the
        trial's index as its seed, so no row of a search ever takes the key of a measured one."""
        protocol_hash = f"search-{self.search}"
        return [
            {
                "kind": ROW_KIND,
                "target": "protocol" if self.spec.protocol_search else "method",
                "suite": suite.name,
                "method": self.spec.method,
                "config_hash": t.config_hash or config_hash(t.config),
                "ipc": self.spec.ipc,
                "student": self.spec.student,
                "protocol": self.spec.protocol,
                "protocol_hash": protocol_hash,
                "seed": t.index,
                "search": self.search,
                "trial": t.index,
                "config": t.config,
                "paper_default": t.index == 0,
                "val_accuracy": t.val_accuracy,
                "epochs": t.epochs,
                "max_epochs": self.max_epochs,
                "status": t.status,
                "seconds": t.seconds,
                "distill_seconds": t.distill_seconds,
                "train_seconds": t.train_seconds,
                "curve": t.curve,
                "versions": versions(),
                "finished_at": time.time(),
            }
            for t in self.trials
        ]

    def fragment(self) -> dict:
        """The best config as a suite fragment: `searched.<method>`, for a profile's `include:`."""
        best, default = self.best(), self.default()
        if self.spec.protocol_search:  # the recipe for the student; the search's rows are its record
            return {"protocols": {self.spec.protocol: {"per_student": {self.spec.student: best.config}}}}
        return {
            "searched": {
                self.spec.method: {
                    "config": best.config,
                    "trials": len(self.trials),
                    "search": self.search,
                    "ipc": self.spec.ipc,
                    "student": self.spec.student,
                    "protocol": self.spec.protocol,
                    "val_accuracy": best.val_accuracy,
                    "default_val_accuracy": default.val_accuracy if default else None,
                }
            }
        }

    def summary(self) -> str:
        best, default = self.best(), self.default()
        stopped, saved = self.early_stopping()
        n = len(self.trials)
        on = (f"on the {self.spec.method} set " if self.spec.protocol_search else "") + f"under {self.spec.protocol}"
        lines = [
            f"[search] {self.spec.subject}: {n} trials ({sum(t.status == 'finished' for t in self.trials)} "
            f"finished, {stopped} stopped early, {sum(t.status == 'error' for t in self.trials)} failed) in "
            f"{self.wall_seconds:.0f} s; validation accuracy of {self.spec.student} {on} "
            f"at IPC {self.spec.ipc}"
        ]
        if default is not None and default.val_accuracy is not None:
            lines.append(f"[search]   suite's config (trial 0): {default.val_accuracy:.2%} {default.config}")
        if best is not None:
            lines.append(f"[search]   best (trial {best.index}): {best.val_accuracy:.2%} {best.config}")
        spent = sum(t.train_seconds for t in self.trials)
        lines.append(
            f"[search]   ASHA stopped {stopped} of {n} trials ({stopped / max(n, 1):.0%}) early, saving "
            f"~{saved:.0f} s of student training ({saved / max(spent + saved, 1e-9):.0%} of it)"
        )
        return "\n".join(lines)


def _trial_index(result, fallback: int) -> int:
    """The trial's creation index: Ray Tune names a trial's folder `run_trial_<id>_<n>_<config>_<date>`, n
    counting trials from 1."""
    found = re.match(r"run_trial_[0-9a-f]+_(\d+)_", Path(result.path or "").name)
    return int(found.group(1)) - 1 if found else fallback


def _plain(value):
    """Optuna's numpy numbers as plain Python ones (for JSON and YAML)."""
    return value.item() if hasattr(value, "item") else value


def write_outputs(outcome: SearchOutcome, suite: Suite, out: Path, store: ResultStore) -> list[Path]:
    """The trials into the result store, the best config as `<out>/search/<method>.yaml`, and the plots."""
    for row in outcome.rows(suite):
        store.append(row)
    folder = Path(out) / "search"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if outcome.best() is not None:
        fragment = folder / f"{outcome.spec.subject}.yaml"
        default = outcome.default()
        default_accuracy = default.val_accuracy if default and default.val_accuracy is not None else float("nan")
        header = (
            f"# The best of {len(outcome.trials)} trials of {outcome.spec.subject}'s search on the validation "
            f"split (search {outcome.search}; every trial is a row of kind '{ROW_KIND}' in the result "
            f"store).\n# Validation accuracy: {outcome.best().val_accuracy:.4f} (trial {outcome.best().index}), the "
            f"suite's own settings {default_accuracy:.4f} (trial 0); "
            f"{outcome.spec.student}, IPC {outcome.spec.ipc}.\n"
            f"# Include it in a suite profile: profiles: {{searched: {{include: [{fragment}]}}}}\n"
        )
        fragment.write_text(header + yaml.safe_dump(outcome.fragment(), sort_keys=False))
        written.append(fragment)
    written += plot(outcome, folder)
    return written


def plot(outcome: SearchOutcome, folder: Path) -> list[Path]:
    """Optimisation history, parameter importances (|Spearman ρ| of each parameter with the validation accuracy)
    and parallel coordinates, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy.stats import spearmanr

    trials = [t for t in outcome.trials if t.val_accuracy is not None]
    if not trials:
        return []
    stem, paths = folder / outcome.spec.subject, []
    params = list(trials[0].config)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    acc = [100 * t.val_accuracy for t in trials]
    colours = ["tab:blue" if t.status == "finished" else "tab:grey" for t in trials]
    ax.scatter([t.index for t in trials], acc, c=colours, s=18)
    # The best so far among trials run to the end: how `best()` chooses.
    finished = [a if t.status == "finished" else -np.inf for t, a in zip(trials, acc)]
    best = np.maximum.accumulate(finished)
    ax.plot(
        [t.index for t in trials],
        np.where(np.isfinite(best), best, np.nan),
        color="tab:red",
        label="best finished so far",
    )
    ax.set(
        xlabel="trial",
        ylabel="validation accuracy (%)",
        title=f"{outcome.spec.subject}: optimisation history (grey: stopped early)",
    )
    ax.legend()
    paths.append(_save(fig, f"{stem}-history.png"))
    if len(trials) >= 3:
        rho = []
        for p in params:
            r = spearmanr([float(t.config[p]) for t in trials], acc).statistic
            rho.append(0.0 if np.isnan(r) else abs(r))
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(params)))
        ax.barh(params, rho)
        ax.set(xlabel="|Spearman ρ| with validation accuracy", title=f"{outcome.spec.subject}: parameter importance")
        paths.append(_save(fig, f"{stem}-importance.png"))
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(params), 3.5))
    values = np.array([[float(t.config[p]) for p in params] for t in trials])
    low, span = values.min(0), np.ptp(values, 0)
    scaled = (values - low) / np.where(span > 0, span, 1)
    cmap = plt.get_cmap("viridis")
    norm = plt.Normalize(min(acc), max(acc) if max(acc) > min(acc) else min(acc) + 1)
    for row, a in zip(scaled, acc):
        ax.plot(range(len(params)), row, color=cmap(norm(a)), alpha=0.8)
    ax.set_xticks(range(len(params)), params, rotation=20)
    ax.set(ylabel="scaled to the trials' range", title=f"{outcome.spec.subject}: parallel coordinates")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="validation accuracy (%)")
    paths.append(_save(fig, f"{stem}-parallel.png"))
    return paths


def _save(fig, path: str) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return Path(path)


def search_protocol(suite: Suite) -> str:
    """The protocol a search scores with: the suite's reference recipe (hard labels), as DD-Ranking tunes."""
    return reference_protocol(suite.protocols).name
