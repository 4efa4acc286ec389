"""The rehearsal (perf/rehearsal.py, harness/stages/rehearsal.py) and what it feeds: a stage's FLOPs as counted
against the analytic count of the model, its peak memory growing with the batch, the plan's memory column from a
figures file, and the pre-flight refusal of a method predicted not to fit (`--gpu-memory`)."""

import json

import pytest
import torch

import harness.runtime.memory_figures as memory_figures
from harness.cli import main
from harness.config.loader import load_suite
from harness.pipeline import Run
from harness.report.plan import backbone_flops
from harness.runtime.memory_figures import GB, predict_peaks, rehearsal_key
from harness.runtime.preflight import check_memory_fits
from harness.stages.rehearsal import LiveBytes, RehearsalModels, rehearse_method, rehearse_suite
from methods import get_method
from methods.diffusion import DiffusionConfig
from tests.factories import tiny_latent_dit, tiny_teacher


def dit_forward_flops(config) -> int:
    """FLOPs of one evaluation of one latent by diffusers' DiT (adaLN-zero), counted by hand from its layers: the
    patch embedding; per block the timestep MLP (256 → D → D) and adaLN's D → 6D projection, which every block
    computes for itself, q, k, v and the output projection, attention's two products and the 4D MLP; then the
    final layer's timestep MLP again, its D → 2D modulation and the D → p²·out projection. A product of an m × k
    and a k × n matrix is 2·m·k·n FLOPs."""
    d = config.num_attention_heads * config.attention_head_dim
    p, c, out = config.patch_size, config.in_channels, config.out_channels
    n = (config.sample_size // p) ** 2  # tokens
    timestep_mlp = 2 * 256 * d + 2 * d * d
    block = timestep_mlp + 2 * d * 6 * d + 4 * (2 * n * d * d) + 2 * (2 * n * n * d) + 2 * (2 * n * d * 4 * d)
    final = timestep_mlp + 2 * d * 2 * d + 2 * n * d * p * p * out
    return 2 * n * c * p * p * d + config.num_layers * block + final


@pytest.fixture(scope="module")
def diffusion_figures():
    models = RehearsalModels(tiny_latent_dit(), tiny_teacher(), None, 8, 3, 10)
    # Unguided, so that a sampling step of an image is one plain forward.
    return rehearse_method("diffusion", DiffusionConfig(cfg_scale=1.0, batch_size=50), models, log=lambda _: None)


def test_flops_per_image_equal_the_analytic_count_of_a_forward(diffusion_figures):
    sample = diffusion_figures["stages"]["sample"]
    # One step (the rehearsal's), one evaluation: torch's count (with the CPU's attention, `flop_counter`) is the
    # hand count of the architecture.
    assert diffusion_figures["rehearsal"]["settings"]["steps"] == 1
    analytic = dit_forward_flops(tiny_latent_dit().transformer.config)
    assert sample["flops_per_image"] == pytest.approx(analytic, rel=0.01)


def test_peak_memory_grows_with_the_batch(diffusion_figures):
    stages = diffusion_figures["stages"]
    assert set(stages) == {"sample", "decode"}
    for stage, fig in stages.items():
        one, two = fig["peak_bytes"]
        assert two > one, stage
        assert fig["bytes_per_sample"] == two - one and fig["static_bytes"] == one - (two - one), stage
        # The models' own bytes are part of every peak.
        assert one > sum(p.numel() * 4 for p in tiny_latent_dit().parameters())


def test_live_bytes_counts_what_is_alive():
    live = LiveBytes()
    with live, live.peak() as peak:
        a = torch.ones(1000)
        b = torch.ones(1000)
        del a
        c = torch.ones(10)
    assert peak[0] == 8000  # a and b were alive together; c came after a was freed
    assert live.live == 4040 and b.numel() + c.numel() == 1010


def _figures_file(folder, suite, entries: dict[str, dict[str, tuple[float, float]]]) -> None:
    """A figures file for `suite` whose methods' stages have the given (static, per sample) bytes."""
    methods = {}
    for name, stages in entries.items():
        batches = get_method(name).stage_batches
        methods[name] = {
            "key": rehearsal_key(suite, name),
            "stages": {
                stage: {
                    "static_bytes": static,
                    "bytes_per_sample": per,
                    "batches": [1, 2],
                    "batch_setting": batches[stage],
                }
                for stage, (static, per) in stages.items()
            },
        }
    (folder / f"{suite.name}.json").write_text(json.dumps({"suite": suite.name, "methods": methods}))


@pytest.fixture
def imagenet(tmp_path, monkeypatch):
    """The imagenet suite with its figures in a temporary folder: diffusion's decode dearest at its batch 50, cao2's
    CLO at its batch 10; nothing for minimax."""
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path / "absent"))
    monkeypatch.setattr(memory_figures, "FIGURES_DIR", tmp_path)
    suite = load_suite("imagenet", check_files=False)
    _figures_file(
        tmp_path,
        suite,
        {
            "diffusion": {"sample": (3 * GB, 0.1 * GB), "decode": (3 * GB, 0.3 * GB)},
            "cao2": {"sample": (3 * GB, 0.1 * GB), "clo": (3 * GB, 2 * GB)},
        },
    )
    return suite


def test_the_prediction_is_static_plus_per_sample_times_the_suites_batch(imagenet):
    peaks = predict_peaks(imagenet, ["diffusion", "cao2", "minimax"])
    assert imagenet.method_config("diffusion").batch_size == 50 and imagenet.method_config("cao2").clo_batch_size == 10
    assert peaks["diffusion"].peak.stage == "decode" and peaks["diffusion"].peak.bytes == 3 * GB + 0.3 * GB * 50
    assert peaks["cao2"].peak.stage == "clo" and peaks["cao2"].peak.bytes == 3 * GB + 2 * GB * 10
    assert peaks["cao2"].peak.setting == "clo_batch_size"
    assert peaks["minimax"] is None  # no figures: nothing predicted


def test_the_plan_prints_each_methods_peak_memory(imagenet, tmp_path):
    text = Run(imagenet, ["diffusion", "cao2", "minimax"], tmp_path / "out").plan(1, 25.0)
    assert "peak mem" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ") and len(line.split()) > 6}
    assert "18.0 GB" in rows["diffusion"] and "its decode stage at batch_size = 50" in rows["diffusion"]
    assert "23.0 GB" in rows["cao2"] and "its clo stage" in rows["cao2"]
    assert " — " in rows["minimax"]


def test_a_method_that_does_not_fit_is_refused_naming_the_setting_to_lower(imagenet, tmp_path, capsys):
    check_memory_fits(imagenet, ["diffusion", "cao2", "minimax"], 80)  # everything fits 80 GB
    with pytest.raises(SystemExit) as e:
        main(["--suite", "imagenet", "--plan", "--gpu-memory", "20"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cao2 is predicted to need 23.0 GB in its clo stage" in err and "lower cao2's clo_batch_size (now 10)" in err
    # Lowering the setting is what lets it through: the figures are per sample, so the key holds.
    assert (
        main(
            ["--suite", "imagenet", "--plan", "--gpu-memory", "20", "--out", str(tmp_path / "o")]
            + ["--methods", "diffusion,minimax"]
        )
        == 0
    )
    # A method without figures (minimax here) is never refused, whatever the memory.
    assert (
        main(
            ["--suite", "imagenet", "--plan", "--gpu-memory", "1", "--out", str(tmp_path / "o"), "--methods", "minimax"]
        )
        == 0
    )


def test_a_rehearsal_of_some_methods_keeps_the_files_figures_of_the_others(imagenet, tmp_path):
    """`--methods` rehearses a subset: the suite's file keeps the other methods' figures (a figure another file
    holds under the same key is reused, so nothing here is measured)."""
    other = tmp_path / "imagewoof.json"
    other.write_text(
        json.dumps(
            {
                "suite": "imagewoof",
                "methods": {"random-real": {"key": rehearsal_key(imagenet, "random-real"), "stages": {}}},
            }
        )
    )
    before = json.loads((tmp_path / "imagenet.json").read_text())["methods"]
    figures = rehearse_suite(imagenet, ["random-real"], tmp_path, log=lambda _: None)
    assert set(figures["methods"]) == set(before) | {"random-real"}
    assert all(figures["methods"][n] == before[n] for n in before)
    assert json.loads((tmp_path / "imagenet.json").read_text())["methods"] == figures["methods"]


@pytest.mark.parametrize(
    ("name", "stages"),
    [("mgd3", {"encode", "sample", "decode"}), ("d3hr", {"encode", "inversion", "generate"})],
)
def test_the_training_free_baselines_rehearse_every_stage_with_device_work(name, stages):
    """MGD3 and D3HR under their rehearsal settings at the reference's defaults: every named stage runs at both
    batches and counts the backbone's FLOPs (their CPU steps, k-means and group sampling, are no stage)."""
    models = RehearsalModels(tiny_latent_dit(), tiny_teacher(), None, 8, 3, 10)
    cls = get_method(name)
    figures = rehearse_method(name, cls.default_config(), models, log=lambda _: None)
    assert set(figures["stages"]) == stages
    for stage, fig in figures["stages"].items():
        one, two = fig["peak_bytes"]
        assert two >= one and fig["flops_per_image"] > 0, stage
    assert figures["rehearsal"]["settings"]["steps"] == 2


def test_suites_without_figures_print_a_dash_and_are_never_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(memory_figures, "FIGURES_DIR", tmp_path)
    assert main(["--suite", "fashion-mnist", "--plan", "--gpu-memory", "0.001", "--out", str(tmp_path / "o")]) == 0
    assert "peak mem: — (no rehearsal figures" in capsys.readouterr().out


@pytest.mark.slow
def test_the_imagewoof_rehearsal_at_true_size(tmp_path):
    """perf/rehearsal.py's work for imagewoof, every method measured afresh on DiT-XL/2 + the SD VAE with random
    weights (about an hour on 2 shared CPU cores): every method has figures under its key, every stage's peak holds
    at least the models it uses, memory grows with the batch, and a sampling step's FLOPs are the plan's count of
    DiT-XL/2 (made on the meta device) for the two passes guidance takes."""
    suite = load_suite("imagewoof", check_files=False)
    figures = rehearse_suite(suite, list(suite.methods), tmp_path, again=True, log=lambda _: None)
    assert json.loads((tmp_path / "imagewoof.json").read_text())["methods"].keys() == set(suite.methods)
    transformer, _, params, _ = backbone_flops(suite, 3, 10)
    for name, entry in figures["methods"].items():
        assert entry["key"] == rehearsal_key(suite, name) and not entry.get("not_run"), name
        needs = get_method(name).needs_for(suite.method_config(name))
        for stage, fig in entry["stages"].items():
            one, two = fig["peak_bytes"]
            assert two >= one and fig["bytes_per_sample"] >= 0 and fig["flops_per_image"] > 0, (name, stage)
            if "backbone" in needs:
                assert one > params * 4, (name, stage)  # DiT-XL/2 and the VAE in fp32 are resident
        predicted = predict_peaks(suite, [name], tmp_path)[name]
        assert predicted is None if not entry["stages"] else 0 < predicted.peak.bytes < 139 * GB, name
    diffusion = figures["methods"]["diffusion"]["stages"]["sample"]
    assert diffusion["flops_per_image"] == pytest.approx(2 * transformer, rel=0.01)  # one guided step
