"""The hyperparameter search (harness/stages/search.py) on a tiny suite, with a real local Ray cluster, Ray Tune
and Optuna: it runs on a copy of Fashion-MNIST whose test files are absent (so it cannot have read them), tries
the suite's own config first, lets ASHA stop trials, writes a suite fragment that a profile includes, and resumes a
search killed with kill -9 without training a finished trial again."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.config.loader import load_suite
from harness.config.schema import SuiteError
from harness.core.store import ResultStore
from harness.models.data import DataError, load_real_data
from harness.report.rows import aggregate
from harness.stages.distill import ShardWorker, plan
from harness.stages.prepare import prepare
from harness.stages.search import (
    ROW_KIND,
    SearchSpec,
    _typed,
    default_point,
    experiment_name,
    run_search,
    search_id,
    write_outputs,
)
from tests.factories import FASHION_ROOT, tiny_suite_raw, write_suite

ROOT = Path(__file__).resolve().parent.parent


def _suite_yaml(tmp: Path, data_root: Path, extra: dict | None = None) -> Path:
    raw = tiny_suite_raw()
    raw["data"]["root"] = str(data_root)
    raw["methods"] = {"diffusion": {"cfg_scale": 2.0, "steps": 10}}
    raw["ipcs"] = [1]
    raw["protocols"] = {"hard-label": {"epochs": {1: 6}, "student_kwargs": {"convnet3": {"width": 8}}}}
    raw.pop("cross_arch")
    raw.update(extra or {})
    path = write_suite(raw, tmp / "suite.yaml")
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory, ray_cluster):
    tmp = tmp_path_factory.mktemp("search")
    data = tmp / "fashion-train-only"  # the training files only: a read of the test split fails
    data.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (data / name).symlink_to(FASHION_ROOT / name)
    suite = load_suite(str(_suite_yaml(tmp, data)))
    real = load_real_data(suite.data, with_test=False)
    out = tmp / "out"
    prepared = prepare(suite, real, out, check=False)
    spec = SearchSpec(
        "diffusion", 1, "convnet3", "hard-label", trials=5, reports=6, grace_reports=1, reduction_factor=2
    )
    outcome = run_search(suite, real, prepared, spec, out)
    store = ResultStore(out / "results" / "tiny.jsonl")
    written = write_outputs(outcome, suite, out, store)
    return dict(
        tmp=tmp,
        data=data,
        suite=suite,
        real=real,
        out=out,
        prepared=prepared,
        outcome=outcome,
        store=store,
        written=written,
    )


def test_search_never_reads_the_test_split(env):
    with pytest.raises(DataError, match="t10k-images"):  # the evaluation's loader needs what is absent
        load_real_data(env["suite"].data)
    assert env["real"].test is None
    trials = env["outcome"].trials
    assert len(trials) == 5 and all(t.status != "error" for t in trials)
    assert all(0 <= t.val_accuracy <= 1 for t in trials)


def test_the_suite_config_is_the_first_trial_and_asha_stops_some(env):
    outcome = env["outcome"]
    first = outcome.trials[0]
    assert first.index == 0 and first.config == default_point(env["suite"], outcome.spec) == {
        "cfg_scale": 2.0,
        "steps": 10,
    }
    assert len({json.dumps(t.config, sort_keys=True) for t in outcome.trials}) == 5  # Optuna proposed the rest
    stopped, saved = outcome.early_stopping()
    assert stopped >= 1 and saved > 0
    assert all(t.epochs < outcome.max_epochs for t in outcome.trials if t.status == "stopped early")
    assert "ASHA stopped" in outcome.summary() and f"{stopped} of 5" in outcome.summary()


def test_outputs_store_rows_fragment_round_trip_and_plots(env):
    outcome, suite = env["outcome"], env["suite"]
    rows = [r for r in env["store"].read() if r.get("kind") == ROW_KIND]
    assert [r["trial"] for r in rows] == list(range(5)) and rows[0]["paper_default"]
    assert {r["status"] for r in rows} <= {"finished", "stopped early"}
    assert aggregate(env["store"].read()).empty  # the board's reader takes measured rows only
    fragment = env["out"] / "search" / "diffusion.yaml"
    assert fragment in env["written"] and all(p.exists() for p in env["written"])
    assert {p.name for p in env["written"] if p.suffix == ".png"} == {
        "diffusion-history.png",
        "diffusion-importance.png",
        "diffusion-parallel.png",
    }
    raw = yaml.safe_load(Path(suite.source).read_text())
    raw["profiles"] = {"searched": {"include": [str(fragment)]}}
    path = write_suite(raw, env["tmp"] / "with-searched.yaml")
    searched = load_suite(str(path), "searched")
    best = outcome.best()
    assert searched.searched["diffusion"].config == best.config
    assert searched.searched["diffusion"].trials == 5
    config = searched.searched_config("diffusion")
    assert (config.cfg_scale, config.steps) == (best.config["cfg_scale"], best.config["steps"])
    assert load_suite(str(path)).searched == {}  # only the profile includes it


def test_a_search_space_naming_a_missing_field_fails_at_suite_load(tmp_path):
    from methods import registry
    from methods.diffusion import Diffusion

    registry.register_variant("test-misnamed-space", Diffusion, search_space={"guidance": ("float", 1.0, 9.0)})
    try:
        raw = tiny_suite_raw()
        raw["methods"] = {"test-misnamed-space": {}}
        path = write_suite(raw, tmp_path / "misnamed.yaml")
        with pytest.raises(SuiteError) as error:
            load_suite(str(path), check_files=False)
        message = str(error.value)
        assert "\n" not in message and "methods.test-misnamed-space: its search_space names guidance" in message
    finally:
        registry._REGISTRY.pop("test-misnamed-space")


def _search_in_a_subprocess(env, seed: int, finished: int):
    """A 4-trial search driven by another process with its own Ray cluster, returned once `finished` trials are
    in its ledger: the driver, the search's spec, its ledger folder and the driver's stderr (a file: a pipe
    nobody reads could fill and stall the driver)."""
    suite, real, prepared, out = env["suite"], env["real"], env["prepared"], env["out"]
    spec = SearchSpec("diffusion", 1, "convnet3", "hard-label", trials=4, reports=6, grace_reports=6, seed=seed)
    driver = (
        f"from harness.config.loader import load_suite; from harness.models.data import load_real_data; "
        f"from harness.stages.prepare import prepare; from harness.stages.search import SearchSpec, run_search; "
        f"import ray\n"
        f"ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        f"s = load_suite({suite.source!r}); r = load_real_data(s.data, with_test=False)\n"
        f"run_search(s, r, prepare(s, r, {str(out)!r}, check=False), {spec!r}, {str(out)!r})\n"
    )
    stderr = out / f"driver-{seed}.err"
    proc = subprocess.Popen(
        [sys.executable, "-c", driver],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=stderr.open("w"),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    ledger = out / "search" / experiment_name(spec, search_id(suite, prepared, spec, real)) / "ledger"
    deadline = time.time() + 120
    while len(list(ledger.glob("*.json"))) < finished and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    return proc, spec, ledger, stderr


@pytest.mark.slow  # two Ray clusters and a kill -9: ~2 minutes on two shared cores
def test_a_search_killed_with_kill_9_resumes_without_training_a_finished_trial_again(env):
    proc, spec, ledger, _ = _search_in_a_subprocess(env, seed=1, finished=2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_before = {p.stem for p in ledger.glob("*.json")}
    assert len(finished_before) >= 2
    outcome = run_search(env["suite"], env["real"], env["prepared"], spec, env["out"], resume=True)
    trained = (ledger / "trained.log").read_text().split()
    assert len(outcome.trials) == 4 and all(t.status == "finished" for t in outcome.trials)
    assert all(trained.count(t) == 1 for t in finished_before)  # none of them trained again
    # A trial Tune had not yet recorded at all when the driver died is unknown to the restored search: it runs a
    # new draw in its place (its curve stays in the ledger). Every finished trial the search holds trained once.
    print(
        f"kill -9 after {len(finished_before)} finished trials; resumed: {len(trained)} trainings in all, "
        f"{len(set(trained))} trials"
    )


@pytest.mark.slow  # a second Ray cluster and a search run twice: ~2 minutes on two shared cores
def test_a_search_stopped_with_ctrl_c_is_not_published_and_resumes_to_all_its_trials(env):
    """Ctrl-C reaches the driver as a KeyboardInterrupt (Ray Tune's own handler, which saved its state and
    returned from fit() as if done, is off): no result is published, and --resume runs the search to all its
    trials. (Through the CLI it is one line and exit 130: tests/test_signals.py.)"""
    proc, spec, _, stderr = _search_in_a_subprocess(env, seed=2, finished=1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) != 0 and "KeyboardInterrupt" in stderr.read_text()
    outcome = run_search(env["suite"], env["real"], env["prepared"], spec, env["out"], resume=True)
    assert len(outcome.trials) == 4 and all(t.status == "finished" for t in outcome.trials)


def test_the_board_shows_a_searched_config_as_its_own_row(env, tmp_path):
    from harness.report.leaderboard import render
    from harness.report.rows import searched_label, with_searched_labels

    suite, outcome = env["suite"], env["outcome"]
    default = outcome.default()
    best = next(t for t in outcome.trials if t.config_hash != default.config_hash)
    rows = [
        {
            "kind": "measured",
            "suite": suite.name,
            "method": "diffusion",
            "config_hash": t.config_hash,
            "ipc": 1,
            "student": "convnet3",
            "protocol": "hard-label",
            "protocol_hash": "p",
            "seed": seed,
            "accuracy": t.val_accuracy,
            "train_seconds": 1.0,
            "distill_seconds_per_image": 0.1,
            "peak_memory_bytes": 0,
        }
        for t in (default, best)
        for seed in (0, 1)
    ]
    rows += env["store"].read()  # the search rows ride along and are not shown
    labels = {("diffusion", best.config_hash): searched_label("diffusion", len(outcome.trials))}
    current = {("diffusion", default.config_hash), ("diffusion", best.config_hash)}
    rows, current, _, order = with_searched_labels(rows, current, [], ["diffusion"], labels)
    assert order == ["diffusion", "diffusion, searched on val (5 trials)"]
    md, _ = render(suite, rows, current, tmp_path, order, [])
    table = md.read_text().replace("**", "")  # the leader is bold where its lead is resolved
    assert f"| diffusion | {100 * default.val_accuracy:.1f} ± 0.0 (2) |" in table
    assert f"| diffusion, searched on val (5 trials) | {100 * best.val_accuracy:.1f} ± 0.0 (2) |" in table


@pytest.mark.slow  # a second Ray Tune experiment: ~30-70 s on two shared cores
def test_a_protocol_search_tunes_the_students_lr_and_publishes_the_recipe(env):
    suite, out = env["suite"], env["out"]
    spec = SearchSpec(
        "diffusion", 1, "convnet3", "hard-label", trials=3, reports=6, grace_reports=6, protocol_search=True
    )
    outcome = run_search(suite, env["real"], env["prepared"], spec, out)
    assert outcome.trials[0].config == {"lr": suite.protocols["hard-label"].lr}  # the suite's recipe first
    assert len({t.config["lr"] for t in outcome.trials}) == 3
    written = write_outputs(outcome, suite, out, env["store"])
    fragment = out / "search" / "hard-label-convnet3.yaml"
    assert fragment in written
    raw = yaml.safe_load(Path(suite.source).read_text())
    raw["profiles"] = {"searched-recipe": {"include": [str(fragment)]}}
    path = write_suite(raw, env["tmp"] / "with-recipe.yaml")
    recipe = load_suite(str(path), "searched-recipe").protocols["hard-label"]
    assert recipe.for_student("convnet3").lr == outcome.best().config["lr"]
    assert recipe.for_student("resnet18").lr == suite.protocols["hard-label"].lr  # other students keep theirs
    rows = [r for r in env["store"].read() if r.get("target") == "protocol"]
    assert len(rows) == 3 and all(r["protocol_hash"] == f"search-{outcome.search}" for r in rows)


def test_a_searched_config_is_distilled_with_its_own_settings(env):
    """At an IPC the search never made, a searched config's set is made by its own config, not the suite's."""
    suite = env["suite"]
    drawn = next(t.config for t in env["outcome"].trials if t.config != default_point(suite, env["outcome"].spec))
    searched = suite.with_method_config("diffusion", _typed(suite, "diffusion", drawn))
    (job,) = plan(searched, env["prepared"], env["out"], ["diffusion"], [2])
    worker = ShardWorker(suite, env["prepared"], real=env["real"])  # the suite's own config, as a run's worker
    method = worker._method(job)
    assert dataclasses.asdict(method.config) == job.config != dataclasses.asdict(suite.method_config("diffusion"))
