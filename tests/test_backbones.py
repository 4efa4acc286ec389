"""Suites with several generators (`backbones:`): a method that declares another kind (`Method.backbone_kind`)
samples that section's backbone, and every stage keys its sets, checks and prices by it; the rest sample `backbone`."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from harness.config.loader import load_suite
from harness.config.schema import SuiteError
from harness.models.data import load_real_data
from harness.models.generators.dit import save_dit_backbone
from harness.pipeline import generators_note
from harness.report.plan import make_plan
from harness.stages.distill import distill_here, plan
from harness.stages.prepare import PrepareError, prepare
from tests.factories import tiny_latent_dit, tiny_sd

WNIDS = ["n01440764", "n02102040"]  # tench, English springer: ImageNet-1k labels 0 and 217


def _tiny_imagenet_dit(folder):
    """DiT-XL/2's layout in miniature with ImageNet-1k's 1,000 labels, so that suite classes are conditioned by WNID."""
    save_dit_backbone(tiny_latent_dit(num_classes=1000), folder)
    return folder


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("two-backbones")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 2)):
        for w in WNIDS:
            (root / "data" / split / w).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    root / "data" / split / w / f"{k}.JPEG"
                )
    (root / "classes.txt").write_text("\n".join(WNIDS) + "\n")
    raw = {
        "name": "two",
        "data": {
            "format": "imagefolder",
            "root": str(root / "data"),
            "classes": str(root / "classes.txt"),
            "image_size": 8,
            "val_per_class": 1,
        },
        "backbone": {"kind": "dit", "pretrained": str(_tiny_imagenet_dit(root / "dit")), "classes": "imagenet-1k"},
        "backbones": {
            "stable-diffusion": {
                "pretrained": str(tiny_sd(root / "sd", ["tench", "English springer"])),
                "classes": "imagenet-1k",
            }
        },
        "teacher": {"kind": "trained", "train": {"epochs": 1, "width": 8}},
        "methods": {"d4m": {"steps": 4}, "d4m-sd": {"steps": 4}, "random-real": {}},
        "ipcs": [1],
        "seeds": 1,
    }
    return root, raw


def _write(root, raw, name="suite.yaml"):
    path = root / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_a_method_on_a_generator_the_suite_lacks_is_one_line(suite_file):
    root, raw = suite_file
    lacking = {**raw, "backbones": {}}
    with pytest.raises(SuiteError, match=r"methods\.d4m-sd: samples a stable-diffusion backbone; add a backbones"):
        load_suite(_write(root, lacking, "lacking.yaml"))


@pytest.mark.parametrize(
    "backbones, message",
    [
        ({"dit": {"pretrained": "x"}}, r"backbones\.dit: is the suite's own backbone's kind"),
        ({"stable-diffusion": {"kind": "dit"}}, r"backbones\.stable-diffusion\.kind: a section of backbones is named"),
        ({"stable-diffusion": {}}, r"backbones\.stable-diffusion\.classes: required for a text-conditioned"),
        (
            {"stable-diffusion": {"pretrained": "x", "classes": "imagenet-1k", "train": {"steps": 1}}},
            r"backbones\.stable-diffusion\.train: kind stable-diffusion is not trained by prepare",
        ),
        ({"magic": {}}, r"backbones\.magic\.kind: must be"),
    ],
)
def test_a_further_sections_mistake_names_its_place(suite_file, backbones, message):
    root, raw = suite_file
    with pytest.raises(SuiteError, match=message):
        load_suite(_write(root, {**raw, "backbones": backbones}, "bad.yaml"), check_files=False)


def test_each_method_samples_its_declared_backbone_end_to_end(suite_file, tmp_path):
    root, raw = suite_file
    suite = load_suite(_write(root, raw))
    assert suite.backbone_of("d4m").kind == "dit" and suite.backbone_of("d4m-sd").kind == "stable-diffusion"
    # D4M's guidance is mapped where it samples DiT, and is its paper's where it samples Stable Diffusion.
    assert suite.methods["d4m"].cfg_scale == pytest.approx(4.2308) and suite.methods["d4m-sd"].cfg_scale == 8.0
    notes = [n for n in suite.notes if "guidance mapped" in n]
    assert len(notes) == 1 and notes[0].startswith("d4m:")

    real = load_real_data(suite.data)
    out = tmp_path / "out"
    prepared = prepare(suite, real, out, check=False)
    assert list(prepared.others) == ["stable-diffusion"]  # prepared because d4m-sd samples it
    on_dit, on_sd = prepared.for_method("d4m"), prepared.for_method("d4m-sd")
    assert on_dit is prepared and on_sd.backbone_hash != prepared.backbone_hash
    assert on_sd.conditions == on_dit.conditions == [0, 217]  # both condition by ImageNet-1k index
    # A run of only the DiT methods prepares no Stable Diffusion.
    assert prepare(suite, real, out, check=False, methods=["d4m"]).others == {}

    jobs = {j.method: j for j in plan(suite, prepared, out, ["d4m", "d4m-sd"], [1])}
    made = {name: distill_here(suite, real, prepared, job) for name, job in jobs.items()}
    assert made["d4m"].backbone == prepared.backbone_hash and made["d4m-sd"].backbone == on_sd.backbone_hash
    assert jobs["d4m"].config_hash != jobs["d4m-sd"].config_hash
    assert generators_note(suite, ["random-real", "d4m", "d4m-sd"]) == (
        "generators (rows by the backbone they sample): dit: d4m; stable-diffusion: d4m-sd"
    )
    assert generators_note(suite, ["d4m"]) is None


def test_the_plan_prices_each_method_on_its_backbone(suite_file, tmp_path):
    root, raw = suite_file
    suite = load_suite(_write(root, raw))
    text = make_plan(suite, ["d4m", "d4m-sd"], [], {}, tmp_path / "out", 1, 25.0)
    assert "backbones.stable-diffusion" in text and "model loads: dit backbone ×1, stable-diffusion backbone ×1" in text
    # The same work (evaluations), priced at each backbone's unit FLOPs.
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("  d4m")}
    assert rows["d4m"][4] == rows["d4m-sd"][4]
    assert "prepare: backbones.stable-diffusion check samples" in text


def test_each_backbone_is_checked_and_a_failed_check_stops_only_its_methods(suite_file, tmp_path):
    root, raw = suite_file
    checks = {"check_per_class": 2, "check_steps": 2, "check_min_agreement": 1.0}  # random tiny models fail it
    raw = {
        **raw,
        "backbone": {**raw["backbone"], **checks},
        "backbones": {"stable-diffusion": {**raw["backbones"]["stable-diffusion"], **checks}},
    }
    suite = load_suite(_write(root, raw, "checked.yaml"))
    real = load_real_data(suite.data)
    with pytest.raises(PrepareError, match=r"backbones\.stable-diffusion: the check failed .* so d4m-sd would"):
        prepare(suite, real, tmp_path, methods=["random-real", "d4m-sd"])
    prepared = prepare(suite, real, tmp_path, methods=["d4m-sd"], accept_failed_check=True)
    sd = prepared.others["stable-diffusion"].check
    assert sd["samples"] == 4 and not sd["passed"] and prepared.backbone_check["samples"] == 4
    assert prepared.for_method("d4m-sd").backbone_check is sd
    assert len(list((tmp_path / "cache").glob("backbone-check-*.json"))) == 2  # one per backbone, cached


def test_a_further_backbone_that_cannot_be_had_is_named_by_its_section(suite_file, tmp_path):
    root, raw = suite_file
    raw = {
        **raw,
        "backbones": {"mar": {"pretrained": str(tmp_path / "no-mar"), "classes": "imagenet-1k"}},
        "methods": {"mar": {}, "random-real": {}},
    }
    suite = load_suite(_write(root, raw, "no-mar.yaml"))
    with pytest.raises(PrepareError, match=r"backbones\.mar\.pretrained: no .*no-mar/checkpoint-last\.pth"):
        prepare(suite, load_real_data(suite.data), tmp_path)


def test_a_mar_methods_ar_steps_are_checked_against_its_tokens(suite_file, tmp_path):
    """The fashion MAR has 49 tokens: more AR steps than tokens is one line at load, not a traceback in a worker."""
    with pytest.raises(SuiteError, match=r"methods\.mar\.num_iter: at most this MAR's 49 tokens .* got 64"):
        load_suite("fashion-mnist", "leaderboard", overrides={"methods": {"mar": {"num_iter": 64}}}, check_files=False)
    assert load_suite("fashion-mnist", "leaderboard", check_files=False).methods["mar"].num_iter == 16
