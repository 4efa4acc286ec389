"""Faults a long run meets, on a real local Ray cluster: a generation actor killed mid-run (its shard is
retried on a new actor), damaged outputs and caches (verified, and only what is damaged is redone), and two
runs on one output folder (the second waits; every result is stored once)."""

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness.config.loader import load_suite
from harness.core.identity import ROW_KEY_FIELDS as KEY_FIELDS
from harness.core.sets import shard_damage
from harness.core.store import ResultStore
from harness.pipeline import Run
from harness.stages.distill import ShardWorker, distill, plan
from harness.stages.prepare import Prepared
from tests.factories import tiny_suite_raw, write_suite
from tests.kill_once import KillOnce, KillOnceConfig

ROOT = Path(__file__).resolve().parent.parent


def _stub_prepared(suite, real) -> Prepared:
    return Prepared(
        list(real.classes), suite.backbone, "", "", list(range(len(real.classes))), suite.teacher, "", "", None, None
    )


def test_a_killed_actor_is_replaced_and_its_shard_retried(tmp_path, ray_cluster, tiny_suite, tiny_real, capsys):
    victim = tiny_real.classes[3]
    config = KillOnceConfig(str(tmp_path / "killed-once"), victim)
    suite = dataclasses.replace(tiny_suite, methods={KillOnce.name: config}, ipcs=[2])
    prepared = _stub_prepared(suite, tiny_real)
    (job,) = plan(suite, prepared, tmp_path / "disturbed", [KillOnce.name], suite.ipcs)
    (manifest,) = distill(suite, tiny_real, prepared, [job], lambda: None, max_actors=2)
    assert manifest.images == 2 * len(tiny_real.classes)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "retrying" in line]
    assert f"retrying {KillOnce.name} IPC 2 class {victim} on a new actor (retry 1 of 3): its actor died" in line
    # The same set made in this process, where nothing dies (the marker exists): byte for byte the same.
    (undisturbed,) = plan(suite, prepared, tmp_path / "undisturbed", [KillOnce.name], suite.ipcs)
    worker = ShardWorker(suite, prepared, "cpu", real=tiny_real)
    for label in range(len(tiny_real.classes)):
        worker.run_shard(undisturbed, label)
    sets = {
        name: {p.relative_to(tmp_path / name): p.read_bytes() for p in sorted((tmp_path / name).rglob("*.png"))}
        for name in ("disturbed", "undisturbed")
    }
    assert len(sets["disturbed"]) == 2 * len(tiny_real.classes)
    assert sets["disturbed"] == sets["undisturbed"]


def _small_suite(tmp_path: Path) -> Path:
    """The tiny suite cut to what these tests need: two methods (one needs the backbone), IPC 1, one seed, one
    protocol, one-epoch students."""
    raw = tiny_suite_raw()
    raw["methods"] = {"random-real": {}, "diffusion": {"cfg_scale": 2.0, "steps": 2}}
    raw["ipcs"], raw["seeds"] = [1], 1
    raw["protocols"] = {"hard-label": {**raw["protocols"]["hard-label"], "epochs": {1: 1}}}
    raw["full_data"]["epochs"] = 0
    raw.pop("cross_arch")
    path = write_suite(raw, tmp_path / "small.yaml")
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory, ray_cluster, tiny_real):
    """A finished run of the small suite: the state every damage test starts from (a copy of it)."""
    folder = tmp_path_factory.mktemp("small")
    suite = load_suite(str(_small_suite(folder)))
    Run(suite, list(suite.methods), folder / "out", tiny_real).board()
    return suite, folder / "out"


def _files(folder: Path) -> dict:
    return {
        p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_damaged_sets_are_verified_and_only_the_damage_redone(small, tmp_path, tiny_real, capsys):
    suite, first = small
    out = tmp_path / "out"
    shutil.copytree(first, out)
    (real_set,) = out.glob("distilled/tiny/random-real/*/ipc1")
    (diffusion_set,) = out.glob("distilled/tiny/diffusion/*/ipc1")
    deleted = real_set / tiny_real.classes[2] / "0000.png"
    truncated = diffusion_set / tiny_real.classes[5] / "0000.png"
    torn = diffusion_set / "manifest.json"
    originals = {p: p.read_bytes() for p in (deleted, truncated, torn)}
    before = _files(out / "distilled")
    deleted.unlink()
    truncated.write_bytes(originals[truncated][: len(originals[truncated]) // 2])
    torn.write_bytes(originals[torn][: len(originals[torn]) // 2])
    # What killed writes of the diversity caches leave behind.
    temps = [diffusion_set / ".diversity.json.tmp-999999", out / "cache" / ".diversity-real-x.pt.tmp-999999"]
    for temp in temps:
        temp.write_text("half")
    store = (out / "results" / "tiny.jsonl").read_bytes()
    Run(suite, list(suite.methods), out, tiny_real).board()
    log = capsys.readouterr().out
    assert f"random-real IPC 1 at {real_set} is damaged; redoing class {tiny_real.classes[2]} (missing 0000.png)" in log
    assert (
        f"diffusion IPC 1 at {diffusion_set} is damaged; redoing class {tiny_real.classes[5]} (0000.png does not "
        f"match its checksum); rewriting manifest.json (unreadable manifest.json)"
    ) in log
    assert "2 shards to make" in log and "0 to run" in log and "0 to measure" in log
    after = _files(out / "distilled")
    assert after.keys() == before.keys()
    redone = {deleted.parent, truncated.parent}
    for rel, (mtime, data) in before.items():
        if (out / "distilled" / rel).parent in redone or rel.name == "manifest.json":
            if rel.suffix == ".png":  # made again, bit for bit (a redone shard's record has its own timings)
                assert after[rel][1] == data, rel
        else:
            assert after[rel] == (mtime, data), f"{rel} was rewritten, though undamaged"
    for manifest in (real_set / "manifest.json", torn):
        m = json.loads(manifest.read_text())
        assert m["images"] == 10 and set(m["checksums"]) == set(tiny_real.classes)
    assert json.loads(torn.read_text())["checksums"] == json.loads(originals[torn])["checksums"]
    assert (out / "results" / "tiny.jsonl").read_bytes() == store
    assert not [t for t in temps if t.exists()]


def test_checksums_are_recorded_and_old_sets_checked_by_decoding(small, tmp_path, tiny_real):
    suite, first = small
    (real_set,) = first.glob("distilled/tiny/random-real/*/ipc1")
    key = tiny_real.classes[0]
    record = json.loads((real_set / key / "shard.json").read_text())
    manifest = json.loads((real_set / "manifest.json").read_text())
    assert manifest["checksums"][key] == record["sha256"]
    assert record["sha256"]["0000.png"] == hashlib.sha256((real_set / key / "0000.png").read_bytes()).hexdigest()
    old = tmp_path / key  # a shard recorded before checksums existed: count and decoding
    shutil.copytree(real_set / key, old)
    (old / "shard.json").write_text(json.dumps({k: v for k, v in record.items() if k != "sha256"}))
    assert shard_damage(old) is None
    data = (old / "0000.png").read_bytes()
    (old / "0000.png").write_bytes(data[: len(data) - 20])
    assert shard_damage(old) == "0000.png does not decode"
    (old / "0000.png").unlink()
    assert shard_damage(old) == "missing 0000.png"


def test_damaged_caches_and_a_torn_store_line_are_redone(small, tmp_path, tiny_real, capsys):
    suite, first = small
    out = tmp_path / "out"
    shutil.copytree(first, out)
    (teacher,) = out.glob("cache/teacher-*/teacher.pt")
    (weights,) = out.glob("cache/backbone-*/model/transformer/*.safetensors")
    (check,) = out.glob("cache/backbone-check-*.json")
    teacher.write_bytes(teacher.read_bytes()[:1000])
    weights.write_bytes(weights.read_bytes()[:1000])
    check.write_text(check.read_text()[:20])
    store = out / "results" / "tiny.jsonl"
    lines = store.read_text().splitlines(keepends=True)
    torn_row = json.loads(lines[-1])
    store.write_text("".join(lines[:-1]) + lines[-1][:40])  # the last row's write was cut short
    Run(suite, list(suite.methods), out, tiny_real).board()
    log = capsys.readouterr().out
    assert f"[prepare] teacher: the cached {teacher} is damaged" in log and "training it again" in log
    assert f"[prepare] backbone: the cached {weights.parent.parent} is damaged" in log
    assert f"[prepare] backbone check: the cached {check} is damaged" in log
    assert f"[store] {store} ends in a torn line" in log
    assert "0 shards to make" in log and "1 to run (1 already in the store)" in log
    rows = ResultStore(store).read()
    assert len(rows) == len(lines) and {r["method"] for r in rows} >= {torn_row["method"]}
    assert len({tuple(r[k] for k in KEY_FIELDS) for r in rows}) == len(rows)


def test_teacher_validation_accuracy_cache_is_measured_again_when_torn(small, tmp_path, tiny_real, capsys):
    from harness.stages.prepare import prepare, teacher_val_accuracy

    suite, first = small
    out = tmp_path / "out"
    shutil.copytree(first / "cache", out / "cache")
    prepared = prepare(suite, tiny_real, out, check=False)
    acc = teacher_val_accuracy(suite, tiny_real, out, prepared.teacher_source, prepared.teacher_hash)
    (cache,) = out.glob("cache/teacher-val-*.json")
    cache.write_text(cache.read_text()[:10])
    assert teacher_val_accuracy(suite, tiny_real, out, prepared.teacher_source, prepared.teacher_hash) == acc
    assert f"[prepare] teacher: the cached {cache} is damaged" in capsys.readouterr().out


def test_two_stores_on_one_file_store_each_key_once(tmp_path):
    row = dict.fromkeys(KEY_FIELDS, "x") | {"ipc": 1, "seed": 0, "accuracy": 0.5}
    a, b = ResultStore(tmp_path / "r.jsonl"), ResultStore(tmp_path / "r.jsonl")  # neither has seen the other
    results = []
    threads = [threading.Thread(target=lambda s=s: results.append(s.append(row))) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, True]
    assert len(ResultStore(tmp_path / "r.jsonl").read()) == 1


def test_two_runs_on_one_out_store_each_result_once(small, tmp_path):
    suite, first = small
    out = tmp_path / "out"
    for folder in ("cache", "distilled"):  # the prepared models and the sets: evaluation is what remains
        shutil.copytree(first / folder, out / folder)
    command = [
        sys.executable,
        "benchmark.py",
        "--suite",
        str(first.parent / "small.yaml"),
        "--out",
        str(out),
        "--methods",
        "random-real",
    ]
    procs = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    waited = [log for log in logs if "[lock]" in log]
    assert len(waited) == 1, logs
    assert f"{out} is in use by pid {procs[logs.index(waited[0]) ^ 1].pid} on" in waited[0]
    assert "1 trials, 0 to run" in waited[0] and "1 trials, 1 to run" in logs[logs.index(waited[0]) ^ 1]
    rows = ResultStore(out / "results" / "tiny.jsonl").read()
    assert [(r["method"], r["student"]) for r in rows] == [("random-real", "convnet3")]


def test_a_torn_manifest_alone_is_rewritten_not_redone(tmp_path, monkeypatch, capsys):
    """Only the manifest is damaged: the line says it is rewritten (it said "redoing rewriting manifest.json")."""
    from types import SimpleNamespace

    from harness.stages import distill as stage

    path = tmp_path / "set"
    (path / "coat").mkdir(parents=True)
    (path / "manifest.json").write_text("{torn")
    job = SimpleNamespace(
        method="herding", ipc=1, path=path, selects=False, manifest_path=path / "manifest.json", done=lambda: True
    )
    monkeypatch.setattr(stage, "shard_damage", lambda _: None)
    monkeypatch.setattr(stage, "manifest_damage", lambda _: "unreadable manifest.json")
    stage.repair_sets([job], ["coat"])
    out = capsys.readouterr().out.strip()
    assert out == f"[distill] herding IPC 1 at {path} is damaged; rewriting manifest.json (unreadable manifest.json)"
    assert not (path / "manifest.json").exists() and (path / "coat").is_dir()
