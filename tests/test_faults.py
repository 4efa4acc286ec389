"""Faults a long run meets, on a real local Ray cluster: a generation actor killed mid-run (its shard is
retried on a new actor), damaged outputs and caches (verified, and only what is damaged is redone), and two
runs on one output folder (the second waits; every result is stored once)."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

from harness.distill import distill, plan
from harness.prepare import Prepared
from harness.store import KEY_FIELDS, ResultStore
from tests.conftest import TINY_SUITE
from tests.kill_once import KillOnce, KillOnceConfig

ROOT = Path(__file__).resolve().parent.parent


def _stub_prepared(suite, real) -> Prepared:
    return Prepared(list(real.classes), suite.backbone, "", "", list(range(len(real.classes))), suite.teacher,
                    "", "", None, None)


def test_a_killed_actor_is_replaced_and_its_shard_retried(tmp_path, ray_cluster, tiny_suite, tiny_real, capsys):
    victim = tiny_real.classes[3]
    config = KillOnceConfig(str(tmp_path / "killed-once"), victim)
    suite = dataclasses.replace(tiny_suite, methods={KillOnce.name: config}, ipcs=[2])
    prepared = _stub_prepared(suite, tiny_real)
    sets = {}
    for name in ("disturbed", "undisturbed"):  # the second finds the marker: nothing kills its actors
        jobs = plan(suite, prepared, tmp_path / name, [KillOnce.name], suite.ipcs)
        (manifest,) = distill(suite, tiny_real, prepared, jobs, lambda: None, max_actors=2)
        assert manifest.images == 2 * len(tiny_real.classes)
        sets[name] = {p.relative_to(tmp_path / name): p.read_bytes()
                      for p in sorted((tmp_path / name).rglob("*.png"))}
        log = capsys.readouterr().out
        if name == "disturbed":
            (line,) = [line for line in log.splitlines() if "retrying" in line]
            assert f"retrying {KillOnce.name} IPC 2 class {victim} on a new actor (retry 1 of 3)" in line
            assert "died" in line
        else:
            assert "retrying" not in log
    assert len(sets["disturbed"]) == 2 * len(tiny_real.classes)
    assert sets["disturbed"] == sets["undisturbed"]
