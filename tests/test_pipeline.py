"""The whole spine on a real local Ray cluster: suite → prepare → distill → evaluate → leaderboard, the rerun
that recomputes nothing, and a run killed mid-distillation that resumes to byte-identical images."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.config.loader import load_suite
from harness.pipeline import Run
from tests.factories import tiny_suite_raw, write_suite

ROOT = Path(__file__).resolve().parent.parent


def snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, ray_cluster, tiny_suite, tiny_real):
    out = tmp_path_factory.mktemp("run")
    Run(tiny_suite, list(tiny_suite.methods), out, tiny_real).board()
    return out


def test_run_writes_sets_store_and_leaderboard(first_run, tiny_suite, tiny_real):
    manifests = sorted(first_run.glob("distilled/tiny/*/*/ipc*/manifest.json"))
    assert len(manifests) == len(tiny_suite.methods) * len(tiny_suite.ipcs)
    for path in manifests:
        m = json.loads(path.read_text())
        assert m["images"] == m["ipc"] * 10 and m["seconds_per_image"] >= 0 and m["peak_memory_bytes"] > 0
        assert set(m["seeds"]) == set(tiny_real.classes) and "torch" in m["versions"]
        assert m["peak_memory_kind"] in ("shard_peak_rss", "process_max_rss") and isinstance(m["stage_seconds"], dict)
        assert m["device"] == "cpu" and m["torch_threads"] == 1  # single-threaded CPU actors
        (measured,) = json.loads((path.parent / "diversity.json").read_text()).values()
        assert measured["images"] == m["images"] and measured["extractor"] == "teacher"
        assert 0 <= m["backbone_check"]["agreement"] <= 1
        for key in tiny_real.classes:
            assert len(list((path.parent / key).glob("*.png"))) == m["ipc"]
    rows = [json.loads(line) for line in (first_run / "results" / "tiny.jsonl").read_text().splitlines()]
    full = [r for r in rows if r["method"] == "full-data"]
    assert len(full) == len(tiny_suite.students) and full[0]["ipc"] == 0
    rows = [r for r in rows if r["method"] != "full-data"]
    assert len(rows) == len(tiny_suite.methods) * len(tiny_suite.ipcs) * tiny_suite.seeds * 2  # two protocols
    assert {r["protocol"] for r in rows} == {"hard-label", "soft-label"}
    assert all(0 <= r["accuracy"] <= 1 and r["kind"] == "measured" for r in rows)
    board = (first_run / "leaderboard" / "tiny.md").read_text()
    for method in tiny_suite.methods:
        assert f"| {method} |" in board
    assert "- a tiny suite: its numbers mean nothing" in board  # the suite's own notes head the board
    assert "## Full-data reference" in board and "## DD-Ranking label-robust score" in board
    assert (first_run / "leaderboard" / "tiny.csv").exists() and (first_run / "leaderboard" / "tiny-lrs.csv").exists()
    cost = board[board.index("## Cost of distillation") : board.index("## Diversity and fidelity")]
    div = board[board.index("## Diversity and fidelity") :]
    for method in tiny_suite.methods:
        for ipc in tiny_suite.ipcs:
            assert f"| {method} | {ipc} | {10 * ipc} |" in cost and f"| {method} | {ipc} | {10 * ipc} |" in div
    assert (first_run / "leaderboard" / "tiny-cost.csv").exists()
    assert (first_run / "leaderboard" / "tiny-diversity.csv").exists()
    # …and the site beside it: a grid of every set, the page linking each (tests/test_site.py opens one).
    page = (first_run / "site" / "tiny.html").read_text()
    assert len(list((first_run / "site" / "tiny" / "grids").glob("*.png"))) == len(tiny_suite.methods) * len(
        tiny_suite.ipcs
    )
    assert all(f'id="set-{method}-ipc-{ipc}"' in page for method in tiny_suite.methods for ipc in tiny_suite.ipcs)


def test_rerun_recomputes_nothing(first_run, tiny_suite, tiny_real, capsys):
    before = snapshot(first_run / "distilled")
    store = (first_run / "results" / "tiny.jsonl").read_bytes()
    Run(tiny_suite, list(tiny_suite.methods), first_run, tiny_real).board()
    printed = capsys.readouterr().out
    assert "0 shards to make" in printed and "0 to run" in printed and "0 to measure" in printed
    assert snapshot(first_run / "distilled") == before
    assert (first_run / "results" / "tiny.jsonl").read_bytes() == store


def test_cross_architecture_table_and_heatmap(first_run, tiny_suite, tiny_real, capsys):
    c = tiny_suite.cross_arch
    Run(tiny_suite, list(tiny_suite.methods), first_run, tiny_real, cross_arch=True).cross_arch_study()
    rows = [json.loads(line) for line in (first_run / "results" / "tiny-cross-arch.jsonl").read_text().splitlines()]
    assert len(rows) == len(c.teachers) * len(c.students) * c.seeds
    assert len({r["teacher_hash"] for r in rows}) == len(c.teachers) and {r["student"] for r in rows} == set(c.students)
    table = (first_run / "leaderboard" / "tiny-cross-arch.md").read_text()
    assert "| convnet3 [" in table and "| resnetap10 (width 4) [" in table
    png = (first_run / "leaderboard" / "tiny-cross-arch.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    Run(
        tiny_suite, list(tiny_suite.methods), first_run, tiny_real, cross_arch=True
    ).cross_arch_study()  # cached: nothing new
    assert "0 of" in capsys.readouterr().out


def test_killed_distillation_resumes_to_identical_images(tmp_path, first_run, ray_cluster, tiny_real):
    raw = tiny_suite_raw()
    raw["methods"] = {"diffusion": {"cfg_scale": 2.0, "steps": 150}}  # slow enough to be killed midway
    raw["protocols"].pop("soft-label")
    raw.pop("cross_arch")
    suite_path = write_suite(raw, tmp_path / "slow.yaml")
    suite = load_suite(str(suite_path))
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for out in (killed, clean):  # the same prepared backbone and teacher for both
        shutil.copytree(first_run / "cache", out / "cache")
    proc = subprocess.Popen(
        [sys.executable, "benchmark.py", "--suite", str(suite_path), "--out", str(killed)],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, shards = time.time() + 240, []
    while time.time() < deadline and proc.poll() is None:
        shards = list(killed.glob("distilled/tiny/diffusion/*/ipc*/*/shard.json"))
        if len(shards) >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= len(shards) < 20, "the run must be killed during distillation"
    assert not list(killed.glob("distilled/tiny/diffusion/*/ipc*/manifest.json"))
    # The sets alone (`manifests`: distillation, no evaluation): the images are what a resume must get right;
    # evaluating resumed sets is what test_rerun_recomputes_nothing and tests/test_faults.py cover.
    for out in (killed, clean):
        assert [m.images for m in Run(suite, ["diffusion"], out, tiny_real).manifests] == [10, 20]
    resumed = sorted(killed.glob("distilled/**/*.png"))
    assert len(resumed) == 30
    for png in resumed:
        assert png.read_bytes() == (clean / png.relative_to(killed)).read_bytes()


def test_imagenet_family_path_on_tiny_local_models(tmp_path, ray_cluster):
    """The path a DiT-XL/2 + timm-teacher suite takes, on an ImageNet-style folder, a tiny latent DiT saved in the
    hub layout and tiny local timm weights: no hub, no ImageNet."""
    import numpy as np
    import timm
    import torch
    from PIL import Image

    from harness.models.data import load_real_data
    from harness.models.generators.dit import save_dit_backbone
    from tests.factories import tiny_latent_dit

    rng = np.random.default_rng(0)
    wnids = ["n02102040", "n01440764"]
    for split, n in (("train", 10), ("val", 3)):  # 8 left per class: patch selection stitches 4 × IPC
        for w in wnids:
            (tmp_path / "data" / split / w).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / w / f"{i}.JPEG"
                )
    (tmp_path / "classes.txt").write_text("\n".join(wnids) + "\n")
    save_dit_backbone(tiny_latent_dit(), tmp_path / "dit")
    torch.save(timm.create_model("test_resnet", num_classes=1000).state_dict(), tmp_path / "teacher.pth")
    suite_path = tmp_path / "folder.yaml"
    suite_path.write_text(
        yaml.safe_dump(
            {
                "name": "folder",
                "data": {
                    "format": "imagefolder",
                    "root": str(tmp_path / "data"),
                    "classes": str(tmp_path / "classes.txt"),
                    "image_size": 32,
                    "val_per_class": 2,
                },
                "backbone": {
                    "kind": "dit",
                    "pretrained": str(tmp_path / "dit"),
                    "check_per_class": 2,
                    "check_steps": 2,
                    "check_min_agreement": 0.0,
                },  # a random DiT: the check runs, and does not stop it
                # Selection with the ImageNet-1k classifier; soft labels from a classifier `prepare` trains on the
                # subset.
                "teacher": {
                    "kind": "timm",
                    "arch": "test_resnet",
                    "weights": str(tmp_path / "teacher.pth"),
                    "input_size": 32,
                    "relabel": {
                        "kind": "trained",
                        "arch": "test_resnet",
                        "input_size": 28,
                        "recipe": {"epochs": 1, "batch_size": 4},
                    },
                },
                # As the ImageNet suites sample; patch selection at its paper defaults but for cost (draws, DIFT
                # ensemble).
                "methods": {
                    "diffusion": {"steps": 2, "sampler": "ddpm"},
                    "herding": {},
                    "patch-selection": {"draws": 2, "dift_ensemble": 1, "clusters": 4, "top_clusters": 2},
                },
                "ipcs": [2],
                "seeds": 1,
                "students": ["convnet3"],
                # The ImageNet suites' settings scaled from 256-px to 32-px images: hard labels crop to 28 and test
                # on the image resized to 28 (Minimax), soft labels test on a centre crop of 28 from 32 (RDED).
                "protocols": {
                    "hard-label": {
                        "epochs": {2: 1},
                        "student_kwargs": {"convnet3": {"width": 8}},
                        "input_size": 28,
                        "test_resize": 28,
                        "lighting": 0.1,
                        "color_jitter_order": "random",
                        "clip_colours": False,
                    },
                    "soft-label": {
                        "epochs_beyond": 1,
                        "student_kwargs": {"convnet3": {"width": 8}},
                        "input_size": 28,
                        "test_resize": 32,
                    },
                },
                "reported": {
                    "papers": {"Tiny": "a made-up paper for this test"},
                    "not_implemented": {"ddvlcp": "DDVLCP"},
                    "entries": [
                        {
                            "paper": "Tiny",
                            "table": "Table 1",
                            "method": "diffusion",
                            "ipc": 2,
                            "student": "convnet3",
                            "protocol": "hard-label",
                            "accuracy": 42.0,
                            "std": 1.0,
                        },
                        {
                            "paper": "Tiny",
                            "table": "Table 1",
                            "method": "ddvlcp",
                            "ipc": 2,
                            "student": "convnet3",
                            "protocol": "hard-label",
                            "accuracy": 55.5,
                        },
                    ],
                },
            }
        )
    )
    suite = load_suite(str(suite_path))
    real = load_real_data(suite.data)
    assert real.classes == wnids and real.channels == 3 and len(real.train) == 16
    out = tmp_path / "out"
    Run(suite, ["diffusion", "herding", "patch-selection"], out, real).board()
    for method in ("diffusion", "herding", "patch-selection"):
        (manifest,) = out.glob(f"distilled/folder/{method}/*/ipc2/manifest.json")
        assert json.loads(manifest.read_text())["images"] == 4
        with Image.open(next((manifest.parent / wnids[0]).glob("*.png"))) as img:
            assert img.size == (32, 32) and img.mode == "RGB"
    rows = [json.loads(line) for line in (out / "results" / "folder.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["protocol"]) for r in rows) == sorted(
        (m, p) for m in ("diffusion", "herding", "patch-selection") for p in ("hard-label", "soft-label")
    )
    # Soft-label rows carry the relabelling teacher in their key; hard-label rows the recipe alone.
    for r in rows:
        same = r["protocol_hash"] == suite.protocols[r["protocol"]].identity()
        assert same == (r["protocol"] == "hard-label"), r
    board = (out / "leaderboard" / "folder.md").read_text()
    measured = next(r["accuracy"] for r in rows if r["method"] == "diffusion" and r["protocol"] == "hard-label")
    assert "Reported by the papers" in board and "55.5" in board and "made-up paper" in board
    # The reported number sits beside the measured one with their difference, in points.
    diff = f"{measured * 100 - 42.0:+.1f}"
    assert any("42.0" in line and diff in line for line in board.splitlines()), board
    assert "soft labels from: test_resnet trained on" in board  # the notes say which teacher relabelled
    assert (out / "leaderboard" / "folder-reported.csv").is_file()
