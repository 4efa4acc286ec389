"""`--plan`: every suite planned without its data or models, FLOPs checked against published figures, method
work counted as the methods run, and measured costs preferred where a run left them."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config.loader import load_suite
from harness.models.generators.pretrained_dit import DIT_XL_2, KNOWN_DITS
from harness.pipeline import Run
from harness.report.plan import backbone_flops, classifier_flops
from methods import get_method, list_methods
from tests.factories import write_suite

SUITES = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "benchmarks").glob("*.yaml"))


@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_plans_without_data(suite, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path / "no-imagenet-here"))
    monkeypatch.setattr(Run, "board", lambda *a, **k: pytest.fail("--plan ran the suite"))
    assert main(["--suite", suite, "--plan", "--out", str(tmp_path), "--gpus", "4"]) == 0
    text = capsys.readouterr().out
    total = re.search(r"total ≈ ([\d,.]+) GPU-hours; ≈ ([\d,.]+) h of wall clock on 4 GPU", text)
    assert total, text
    assert float(total.group(1).replace(",", "")) > 0
    loaded = load_suite(suite, check_files=False)
    for method in loaded.methods:
        assert re.search(rf"^  {re.escape(method)} ", text, re.M), method
    assert not list(tmp_path.iterdir())  # wrote nothing


def test_imagenet_plan_counts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path / "absent"))
    suite = load_suite("imagenet", check_files=False)
    text = Run(suite, ["diffusion"], tmp_path).plan(8, 25.0)
    images = sum(suite.ipcs) * 1000
    row = re.search(r"^  diffusion +(\d+) +(\d+) +([\d,]+) +([\d,]+) ", text, re.M)
    assert row and int(row.group(1)) == len(suite.ipcs) and int(row.group(2)) == len(suite.ipcs) * 1000
    assert int(row.group(3).replace(",", "")) == images
    config = suite.method_config("diffusion")
    assert int(row.group(4).replace(",", "")) == images * config.steps * 2  # guided: two evaluations a step
    assert "ImageNet's split sizes" in text


def test_flops_match_published_figures(tiny_suite):
    imagenet = load_suite("imagenet", check_files=False)
    transformer, vae, params, _ = backbone_flops(imagenet, 3, 1000)
    # DiT paper, Table 4: DiT-XL/2 at 256 px costs 118.6 Gflops (multiply-adds); torch counts two FLOPs each.
    assert transformer / 2 / 1e9 == pytest.approx(118.6, rel=0.01)
    assert vae > 0 and params > 6e8
    # torchvision's ResNet-18 card: 1.81 GFLOPS (multiply-adds) at 224 px.
    assert classifier_flops("resnet18", 1000, 3, 224, {}, pretrained=True) / 2 / 1e9 == pytest.approx(1.81, rel=0.01)
    assert KNOWN_DITS["facebook/DiT-XL-2-256"]["num_layers"] == DIT_XL_2["num_layers"] == 28


def test_every_method_declares_its_work():
    for name in list_methods():
        cls = get_method(name)
        if not cls.__module__.startswith("methods."):
            continue  # registered by a test
        work = cls.work(cls.default_config(), 10, 1300)
        assert work is not None, name
        assert min(work.backbone, work.vae, work.teacher) >= 0
        if "backbone" in cls.needs:
            assert work.backbone > 0, name


def test_method_work_follows_the_config():
    cao2 = get_method("cao2")
    full = cao2.work(cao2.default_config(), 10, 1300)
    c = cao2.default_config()
    assert full.backbone == 10 * c.pool_factor * c.steps * 2 + 10 * c.iterations * 3
    no_clo = cao2.work(get_method("cao2-oss-only").default_config(), 10, 1300)
    assert no_clo.backbone == 10 * c.pool_factor * c.steps * 2
    d4m = get_method("d4m")
    w = d4m.work(d4m.default_config(), 10, 1300)
    assert w.backbone == 10 * int(50 * 0.7) * 2 and w.vae == 1300 + 10  # every real image is encoded
    herding = get_method("herding")
    assert herding.work(herding.default_config(), 10, 1300).teacher == 1300


def test_measured_costs_are_preferred(tmp_path, capsys):
    """A run's own figures replace the FLOP estimate: a manifest's seconds per image, a row's seconds per
    image-epoch."""
    suite = load_suite("fashion-mnist")
    folder = tmp_path / "distilled" / suite.name / "diffusion" / "abc" / "ipc10"
    folder.mkdir(parents=True)
    config = dataclasses.asdict(suite.method_config("diffusion"))
    (folder / "manifest.json").write_text(
        json.dumps(
            {"method": "diffusion", "config": config, "distill_seconds": 50.0, "images": 100, "device": "NVIDIA H100"}
        )
    )
    # A set made under other settings (a quick profile's fewer steps) prices nothing.
    other = tmp_path / "distilled" / suite.name / "diffusion" / "fast" / "ipc10"
    other.mkdir(parents=True)
    (other / "manifest.json").write_text(
        json.dumps(
            {
                "method": "diffusion",
                "config": {**config, "steps": 2},
                "distill_seconds": 1.0,
                "images": 100,
                "device": "cpu",
            }
        )
    )
    (tmp_path / "results").mkdir()
    row = {
        "kind": "measured",
        "suite": suite.name,
        "student": "convnet3",
        "protocol": "hard-label",
        "ipc": 10,
        "epochs": 100,
        "train_seconds": 2.0,
        "method": "diffusion",
        "seed": 0,
        "config_hash": "abc",
        "protocol_hash": suite.protocols["hard-label"].identity(),
        "accuracy": 0.5,
    }
    stale = {**row, "protocol_hash": "an-older-recipe", "train_seconds": 99.0, "seed": 1}
    (tmp_path / "results" / f"{suite.name}.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(stale) + "\n")
    text = Run(suite, ["diffusion", "random-real"], tmp_path).plan(1, 25.0)
    assert re.search(r"^  diffusion .*measured in .* on NVIDIA H100: 0\.5 s/image", text, re.M)
    assert re.search(r"^  random-real .*FLOPs", text, re.M)
    per = 2.0 / (100 * 10 * 10)
    assert re.search(rf"^  convnet3 +hard-label .*measured in .*: {per:.3g} s/image-epoch", text, re.M)
    assert re.search(r"^  convnet3 +soft-label .*FLOPs", text, re.M)


def test_plan_rejects_bad_numbers(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--suite", "fashion-mnist", "--plan", "--gpu-tflops", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--gpu-tflops" in err


def test_a_plan_without_data_needs_named_classes(tmp_path, capsys):
    """`classes: auto` reads the class folders, so before the data is present the plan asks for the names."""
    raw = yaml.safe_load((Path(__file__).resolve().parent.parent / "benchmarks" / "imagewoof.yaml").read_text())
    raw["data"].update(root=str(tmp_path / "absent"), classes="auto")
    raw.pop("reported")
    path = write_suite(raw, tmp_path / "auto.yaml")
    with pytest.raises(SystemExit) as e:
        main(["--suite", str(path), "--plan"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.classes" in err and "auto" in err


def test_a_plan_prices_searched_configs_and_fine_tunes(tmp_path):
    """A searched config is one more set per IPC; a fine-tune is priced once for the methods that share it."""
    suite = load_suite("fashion-mnist", "leaderboard")
    text = Run(suite, ["diffusion", "minimax", "ims3", "ims3-im-only"], tmp_path).plan(1, 25.0)
    assert re.search(r"^  diffusion, searched +3 +30 +610 ", text, re.M) and "  15 sets, 150 shards" in text
    assert re.search(rf"^  convnet3 +hard-label +28 +{5 * 3 * suite.seeds} ", text, re.M)
    fine = re.findall(r"prepare: fine-tunes the backbone for (\S+), ([\d,]+) steps of (\d+) images", text)
    minimax, ims3 = suite.method_config("minimax"), suite.method_config("ims3")
    assert get_method("ims3-im-only").fine_tuning(suite.method_config("ims3-im-only")) == get_method(
        "ims3"
    ).fine_tuning(ims3)  # so one line prices both
    assert fine == [
        ("minimax", f"{minimax.max_steps:,}", str(minimax.fine_tune_batch_size)),
        ("ims3", f"{ims3.max_steps:,}", str(ims3.fine_tune_batch_size)),
    ]


def test_the_plan_shows_each_generators_rows_with_their_rehearsed_memory(capsys, tmp_path, monkeypatch):
    """ImageWoof's SD and MAR rows sit on their own backbones' unit FLOPs and show the peaks the true-size
    rehearsal measured (benchmarks/rehearsal/imagewoof.json): SD v1.5 at 512 px is the dearest generator there."""
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path / "absent"))
    methods = "d4m,d4m-sd,patch-selection-sd,mar,cao2-mar"
    assert main(["--suite", "imagewoof", "--plan", "--methods", methods, "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ") and "FLOPs" in line}
    peak = {name: float(re.search(r" ([\d.]+) GB ", rows[name]).group(1)) for name in methods.split(",")}
    assert peak["d4m-sd"] > 3 * peak["d4m"] and peak["patch-selection-sd"] > 40 and peak["mar"] < peak["d4m"]
    assert "backbones.mar MAR-Base (published architecture) + KL-16 VAE" in text
    assert "model loads: dit backbone ×1, stable-diffusion backbone ×1, mar backbone ×1" in text
