"""Someone else's dataset (issue 13, item 6): a grey ImageFolder loads as one channel, its suite finds its classes
and splits and refuses a greedy validation split by field, the pixel DiT's EMA warms up and a longer run extends a
finished one, committed weights are found by content, and a failed backbone check stops generative methods."""

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from harness.cli import main
from harness.config.loader import load_suite
from harness.config.schema import SuiteError
from harness.core.cache import cached_dir
from harness.core.sets import Manifest
from harness.models.data import FASHION_MNIST_CLASSES, load_fashion_mnist, load_real_data
from harness.models.generators.pixel_dit import PixelDiTConfig, train_pixel_dit
from harness.report.leaderboard import render
from harness.stages.prepare import PrepareError, prepare, prepare_backbone, prepare_teacher
from methods import get_method
from scripts.export_fashion_imagefolder import export
from tests.factories import (
    BROKEN_IMAGES,
    FASHION_ROOT,
    broken_image_folder,
    tiny_pixel_dit_config,
    tiny_suite_raw,
    write_suite,
)

PER_CLASS = 20


@pytest.fixture(scope="module")
def grey_folder(tmp_path_factory):
    """Fashion-MNIST's own files as a grey ImageFolder: 20 training and 5 test PNGs ("L") per class."""
    root = tmp_path_factory.mktemp("grey")
    export(root, PER_CLASS, test_per_class=5)
    return root


def _suite(tmp_path, root, **data):
    path = tmp_path / "own.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "own",
                "data": {
                    "format": "imagefolder",
                    "root": str(root),
                    "classes": "auto",
                    "test_dir": "test",
                    "image_size": 28,
                    "val_per_class": 2,
                    **data,
                },
                "backbone": {"kind": "pixel-dit"},
                "teacher": {"kind": "trained"},
                "methods": {"random-real": {}},
            }
        )
    )
    return load_suite(str(path))


def test_a_grey_image_folder_loads_as_one_channel_equal_to_the_idx_pixels(tmp_path, grey_folder):
    suite = _suite(tmp_path, grey_folder)
    real = load_real_data(suite.data)
    assert real.classes == sorted(FASHION_MNIST_CLASSES) and real.channels == 1
    assert len(real.train) == 10 * (PER_CLASS - 2) and len(real.val) == 20 and len(real.test) == 50
    idx = load_fashion_mnist(FASHION_ROOT, "train")
    full = real.train.parent  # the folder before the validation split, in folder (label, file name) order
    images = full.load(torch.arange(len(full)))
    assert images.shape == (10 * PER_CLASS, 1, 28, 28)
    for label, name in enumerate(real.classes):
        positions = idx.indices_of(FASHION_MNIST_CLASSES.index(name))[:PER_CLASS]
        assert torch.equal(images[full.labels == label], idx.images[positions])
    # Asked for three channels, the same files are RGB with equal channels, and keyed apart from the grey load.
    rgb = load_real_data(_suite(tmp_path, grey_folder, channels=3).data)
    assert rgb.channels == 3 and torch.equal(rgb.train.load([0]), real.train.load([0]).expand(-1, 3, -1, -1))
    assert rgb.train.fingerprint() != real.train.fingerprint()


def test_an_inline_class_list_sets_the_label_order(tmp_path, grey_folder):
    suite = _suite(tmp_path, grey_folder, classes=["trouser", "bag"])
    real = load_real_data(suite.data)
    assert real.classes == real.class_names == ["trouser", "bag"] and len(real.train) == 2 * (PER_CLASS - 2)


@pytest.mark.parametrize(
    "data, field, words",
    [
        ({"test_dir": "val"}, "data.test_dir", "folders in"),
        ({"train_dir": "training"}, "data.train_dir", "folders in"),
        ({"val_per_class": 6}, "data.val_per_class", "at most 5"),  # 6 of 20 is above a quarter
        ({"classes": ["trouser", "shoe"]}, "data.classes", "'shoe' has no folder"),
        ({"classes": ["bag", "bag"]}, "data.classes", "each class folder once"),
        ({"channels": 2}, "data.channels", "auto, 1 or 3"),
        ({"channels": "grey"}, "data.channels", "auto, 1 or 3"),
    ],
)
def test_a_new_datasets_mistakes_name_their_field(tmp_path, grey_folder, data, field, words):
    with pytest.raises(SuiteError, match=f"own.yaml: {field}: .*{words}"):
        _suite(tmp_path, grey_folder, **data)


def test_the_ema_warms_up_and_the_fashion_backbone_keeps_its_hash(tmp_path):
    cfg = PixelDiTConfig()
    assert cfg.ema_warmup and cfg.ema_decay_at(0) == pytest.approx(0.1) and cfg.ema_decay_at(10_000) == 0.999
    assert PixelDiTConfig(ema_warmup=False).ema_decay_at(0) == 0.999
    # The committed fashion-mnist backbone was trained without the warm-up; its suite says so and its hash holds.
    suite = load_suite("fashion-mnist")
    assert suite.backbone.train.ema_warmup is False
    real = load_real_data(suite.data)
    source, key = prepare_backbone(suite, real, tmp_path)
    assert key == "d5896e5b40d5" and "weights/fashion-mnist" in source
    # A renamed copy of the suite finds the same committed weights by their hash.
    renamed = dataclasses.replace(suite, name="my-fashion")
    assert prepare_backbone(renamed, real, tmp_path) == (source, key)
    assert "weights/fashion-mnist" in str(cached_dir(tmp_path, f"backbone-{key}"))


def test_a_longer_run_extends_the_finished_one(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (64,), generator=g)
    cfg = tiny_pixel_dit_config(checkpoint_every=4)
    straight = train_pixel_dit(images, labels, 3, cfg, tmp_path / "a", tmp_path / "a-work", progress=False)
    short = dataclasses.replace(cfg, steps=3)
    first = train_pixel_dit(images, labels, 3, short, tmp_path / "b3", tmp_path / "b-work", progress=False)
    extended = train_pixel_dit(images, labels, 3, cfg, tmp_path / "b6", tmp_path / "b-work", progress=False)
    for p, q, r in zip(
        straight.transformer.parameters(), extended.transformer.parameters(), first.transformer.parameters()
    ):
        torch.testing.assert_close(p, q)
        assert not torch.equal(p, r)
    with pytest.raises(ValueError, match="another config"):
        train_pixel_dit(
            images,
            labels,
            3,
            dataclasses.replace(cfg, steps=8, lr=1e-4),
            tmp_path / "c",
            tmp_path / "b-work",
            progress=False,
        )
    with pytest.raises(ValueError, match="past this run's 3 steps"):
        train_pixel_dit(images, labels, 3, short, tmp_path / "d", tmp_path / "b-work", progress=False)


def _strict_tiny_suite(tmp_path):
    """The tiny suite with a bar no 20-step backbone clears: every one of its samples recognised."""
    raw = tiny_suite_raw()
    raw["backbone"]["check_min_agreement"] = 1.0
    path = write_suite(raw, tmp_path / "strict.yaml")
    return load_suite(str(path))


def test_a_failed_check_stops_generative_methods_unless_accepted(tmp_path, tiny_real):
    suite = _strict_tiny_suite(tmp_path)
    with pytest.raises(PrepareError, match=r"strict.yaml: backbone: the check failed .* so diffusion would sample"):
        prepare(suite, tiny_real, tmp_path / "out", methods=["random-real", "diffusion"])
    # Methods that never sample the backbone run; with the flag, so do the others, and the check says it failed.
    assert not prepare(suite, tiny_real, tmp_path / "out", methods=["random-real", "herding"]).backbone_check["passed"]
    accepted = prepare(suite, tiny_real, tmp_path / "out", methods=["diffusion"], accept_failed_check=True)
    assert accepted.backbone_check["agreement"] < 1.0


def test_the_board_marks_rows_from_a_backbone_that_failed_its_check(tmp_path):
    def manifest(method, backbone, passed):
        return Manifest(
            suite="s",
            method=method,
            config={},
            config_hash="h",
            ipc=10,
            classes=["a"],
            seeds={},
            images=10,
            distill_seconds=1.0,
            seconds_per_image=0.1,
            peak_memory_bytes=1,
            backbone=backbone,
            backbone_check={"agreement": 0.385, "passed": passed},
        )

    from types import SimpleNamespace

    from harness.models.protocols import HardLabel

    suite = SimpleNamespace(name="s", protocols={"hard-label": HardLabel()}, methods=["random-real"])
    rows = [
        dict(
            method=m,
            config_hash="h",
            ipc=10,
            student="convnet3",
            protocol="hard-label",
            seed=0,
            accuracy=0.5,
            train_seconds=1.0,
            distill_seconds_per_image=0.1,
            peak_memory_bytes=1,
            kind="measured",
        )
        for m in ("random-real", "diffusion")
    ]
    current = {("random-real", "h"), ("diffusion", "h")}
    failed = [manifest("random-real", None, False), manifest("diffusion", "bb", False)]
    text = render(suite, rows, current, tmp_path / "a", ["random-real", "diffusion"], [], failed)[0].read_text()
    accuracy = text[: text.index("## Cost")]
    rows_of = {line.split(" | ")[0]: line for line in accuracy.splitlines() if line.startswith("| ")}
    assert rows_of["| diffusion"].endswith("✗ |") and "✗" not in rows_of["| random-real"]
    assert "✗: sampled from a backbone that FAILED its check (teacher agreement 38.5%" in text
    assert "True" in (tmp_path / "a" / "s.csv").read_text()  # the mark is a column of the CSV too
    passed = [manifest("random-real", None, True), manifest("diffusion", "bb", True)]
    text = render(suite, rows, current, tmp_path / "b", ["random-real", "diffusion"], [], passed)[0].read_text()
    assert "✗" not in text


def test_an_interrupted_training_leaves_no_empty_cache_folder(tmp_path, tiny_suite, tiny_real, monkeypatch):
    """Issue 31, item 6: Ctrl-C while the backbone (or the teacher) trains leaves no empty `backbone-<hash>/`;
    the training folder with its checkpoints, from which the next run resumes, is not a cache entry."""
    from harness.models import teacher_sources
    from harness.models.generators import pixel_dit

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pixel_dit, "train_pixel_dit", interrupted)
    monkeypatch.setattr(teacher_sources, "train_teacher", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_backbone(tiny_suite, tiny_real, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        prepare_teacher(tiny_suite, tiny_real, tmp_path)
    assert not list((tmp_path / "cache").glob("backbone-*")) and not list((tmp_path / "cache").glob("teacher-*"))


def _check_script(capsys, *argv) -> tuple[int, str]:
    from scripts.check_backbone import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_check_script_names_classes_exits_1_on_failure_and_suggests_steps(tmp_path, capsys):
    """Issue 31, item 4: per-class rates by name in the output and the record, exit status 1 on a failed check,
    the lagging classes and the trend's next step count, and no word of --accept-failed-check (not passed)."""
    suite = _strict_tiny_suite(tmp_path)
    code, out = _check_script(capsys, "--suite", suite.source, "--out", tmp_path / "out", "--steps", "10,20")
    assert code == 1, out
    assert "accept-failed-check" not in out and "are marked" not in out
    assert "[check] steps 10: agreement" in out and "[check] steps 20: agreement" in out
    assert "per class: t-shirt_top " in out and "below 100%: " in out
    assert "[check] FAILED: the classes below 100% are " in out
    assert "try --steps" in out or "did not rise" in out
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / "cache").glob("backbone-check-*.json")]
    assert sorted(r["backbone_steps"] for r in records) == [10, 20]
    assert all(r["classes"][:2] == ["t-shirt_top", "trouser"] for r in records), records[0]["classes"]


def test_the_trend_suggests_a_step_count_from_the_measured_ones():
    from scripts.check_backbone import next_step

    def c(a):
        return {"agreement": a, "per_class": [0.9, 0.2], "classes": ["coat", "shirt"], "min_agreement": 0.75}

    said = next_step([(1500, c(0.54)), (3000, c(0.727))])  # the numbers: 54.0 % and 72.7 %, bar 75 %
    assert "the classes below 75% are shirt 20%" in said and "coat" not in said.split("are ")[1].split(";")[0]
    assert "+18.7 points per doubling" in said and "try --steps 3500" in said
    assert "did not rise" in next_step([(1500, c(0.6)), (3000, c(0.6))])
    assert "--steps 1500,3000" in next_step([(1500, c(0.6))])


@pytest.mark.parametrize(
    "backbone, expected",
    [
        ("backbone:\n  kind: pixel-dit  # x\n  check_steps: 25\n", "backbone:\n  train: {steps: 3000}\n  kind:"),
        ("backbone:\n  kind: pixel-dit\n  train: {lr: 1.0e-3, steps: 6000}\n", "  train: {lr: 1.0e-3, steps: 3000}\n"),
        ("backbone:\n  kind: pixel-dit\n  train: {lr: 1.0e-3}\n", "  train: {steps: 3000, lr: 1.0e-3}\n"),
        ("backbone:\n  kind: pixel-dit\n  train:\n    lr: 1.0e-3\n    steps: 6000\n", "    steps: 3000\n"),
        (
            "backbone:\n  kind: pixel-dit\n  train:\n    lr: 1.0e-3\n  check_steps: 2\n",
            "  train:\n    steps: 3000\n    lr: 1.0e-3\n",
        ),
    ],
)
def test_write_puts_the_steps_into_the_backbone_section(backbone, expected):
    from scripts.check_backbone import _with_steps

    text = f"name: x  # a comment kept\n{backbone}teacher: {{kind: trained}}\n"
    new = _with_steps(text, 3000)
    assert (
        expected in new and new.startswith("name: x  # a comment kept\n") and new.endswith("teacher: {kind: trained}\n")
    )
    assert yaml.safe_load(new)["backbone"]["train"]["steps"] == 3000


def test_a_passing_check_prints_and_writes_its_steps_and_a_run_past_it_says_so(tmp_path, capsys, tiny_real):
    """Issue 31, item 1: the check script prints (and with --write, writes) the `backbone.train.steps` line that
    passed; a later run on the suite's own, longer steps names its backbone and says it trains past the checked one."""
    raw = tiny_suite_raw()  # bar 0: every check passes
    path = write_suite(raw, tmp_path / "mine.yaml")
    code, out = _check_script(capsys, "--suite", path, "--out", tmp_path / "out", "--steps", "10", "--write")
    assert code == 0, out
    assert "\nbackbone.train.steps: 10\n" in out and f"wrote backbone.train.steps: 10 into {path}" in out
    assert load_suite(str(path)).backbone.train.steps == 10
    suite = load_suite(str(write_suite(raw, tmp_path / "again.yaml")))  # the suite's own 20 steps
    prepare(suite, tiny_real, tmp_path / "out", methods=["random-real"])
    out = capsys.readouterr().out
    assert (
        "[prepare] backbone: the suite's 20 steps (backbone.train.steps) are past the checked step counts of this "
        "backbone's training: 10 (" in out
    )
    assert "to use the checked 10-step one, set backbone.train.steps: 10)" in out
    assert "[prepare] backbone check of pixel-dit " in out and " (20 training steps): the teacher agrees" in out
    assert "[prepare] backbone check per class: t-shirt_top " in out


def readme_template() -> str:
    """The suite of README's "Benchmark your own dataset", as the README prints it: its first YAML block."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Benchmark your own dataset") :]
    return section[section.index("```yaml\n") + len("```yaml\n") : section.index("```\n", section.index("```yaml"))]


def _template_suite(tmp_path, root, profile="full"):
    text = readme_template()
    assert "root: /data/my-data\n" in text
    path = tmp_path / "my-data.yaml"
    path.write_text(text.replace("root: /data/my-data\n", f"root: {root}\n"))
    # A folder of 20 images a class cannot spare the template's 100 for validation: that one field is set as an
    # override (the path the command line's flags take), the file stays the README's.
    return load_suite(str(path), profile, overrides={"data": {"val_per_class": 2}})


def test_the_readme_template_runs_both_protocols_at_small_image_epochs(tmp_path, grey_folder):
    """Issue 31's must-show test: the README's template, written verbatim beside a
    small grey ImageFolder, resolves both protocols at the small-image rule's epochs (the embedded fashion suite's,
    a fifteenth to a thirty-seventh of Minimax's ImageNet epochs), and --profile quick and papers load."""
    from harness.models.protocols import HardLabel, SoftLabel

    suite = _template_suite(tmp_path, grey_folder)
    real = load_real_data(suite.data)
    assert real.channels == 1 and len(real.classes) == 10
    assert set(suite.protocols) == {"hard-label", "soft-label"}
    fashion = load_suite("fashion-mnist").protocols
    for name, kind in (("hard-label", HardLabel), ("soft-label", SoftLabel)):
        p = suite.protocols[name]
        assert isinstance(p, kind)
        assert (
            [p.epochs_for(i) for i in suite.ipcs] == [200, 100, 40] == [fashion[name].epochs_for(i) for i in suite.ipcs]
        )
    reference = HardLabel()  # the epochs a suite without protocols gets: Minimax's, for ImageNet
    assert all(suite.protocols["hard-label"].epochs_for(i) * 10 < reference.epochs_for(i) for i in suite.ipcs)
    # --profile quick on a suite that defines none: the built-in one, said in the notes.
    quick = _template_suite(tmp_path, grey_folder, "quick")
    assert quick.ipcs == [1, 10] and quick.seeds == 1 and quick.full_data.epochs == 0
    assert [quick.protocols["soft-label"].epochs_for(i) for i in quick.ipcs] == [50, 25]
    assert any(n.startswith("--profile quick: the built-in quick profile") for n in quick.notes)
    papers = _template_suite(tmp_path, grey_folder, "papers")
    assert {"cao2", "d4m", "adaptive-sampling", "patch-selection", "rded", "diffusion"} <= set(papers.methods)
    # Item 2: every paper method listed with `{}` takes the settings it declares for the pixel DiT and 28-px images.
    fitted = 0
    for name, config in papers.methods.items():
        cls = get_method(name)
        for field, value in {**cls.generator_defaults.get("pixel-dit", {}), **cls.small_image_defaults}.items():
            assert getattr(config, field) == value, (name, field)
            fitted += 1
    assert fitted >= 10 and papers.methods["d4m"].cfg_scale == 2.0 and papers.methods["rded"].factor == 1
    with pytest.raises(SuiteError, match=r"profiles.fast: no such profile \(have: full, papers\)"):
        _template_suite(tmp_path, grey_folder, "fast")


def test_a_suite_s_own_quick_profile_wins_over_the_built_in_one():
    suite = load_suite("fashion-mnist", "quick")
    assert suite.ipcs == [1, 10] and suite.backbone.check_per_class == 20
    assert not any("built-in quick" in n for n in suite.notes)


def _failed_store():
    """A store of two methods at two IPCs, 2 seeds, where diffusion's sets were sampled from a failed check: it is
    the cheapest and, at IPC 1, the most accurate, so it would sit on the Pareto front if it counted."""

    def manifest(method, ipc, passed, seconds):
        return Manifest(
            suite="s",
            method=method,
            config={},
            config_hash="h",
            ipc=ipc,
            classes=["a"],
            seeds={},
            images=ipc,
            distill_seconds=seconds * ipc,
            seconds_per_image=seconds,
            peak_memory_bytes=1,
            backbone="bb" if method == "diffusion" else None,
            backbone_check={"agreement": 0.385, "passed": passed},
        )

    accuracy = {("random-real", 1): 0.40, ("diffusion", 1): 0.50, ("random-real", 10): 0.70, ("diffusion", 10): 0.60}
    rows = [
        dict(
            method=m,
            config_hash="h",
            ipc=ipc,
            student="convnet3",
            protocol="hard-label",
            seed=seed,
            accuracy=acc + 0.01 * seed,
            train_seconds=1.0,
            distill_seconds_per_image=0.1,
            peak_memory_bytes=1,
            kind="measured",
        )
        for (m, ipc), acc in accuracy.items()
        for seed in (0, 1)
    ]
    manifests = [manifest(m, ipc, m != "diffusion", 0.01 if m == "diffusion" else 1.0) for m, ipc in accuracy]
    return rows, manifests


def test_failed_check_rows_keep_their_mark_in_the_plots_and_compare(tmp_path):
    """Issue 31, item 5: off the table too — the site's accuracy, cost and diversity plots draw a failed-check set
    as an open marker labelled †, with a legend entry, and keep it off the Pareto front; `--compare` marks its
    cells with † and a footnote."""
    from types import SimpleNamespace

    from harness.models.protocols import HardLabel
    from harness.report.compare import compare, lines, mark_failed
    from harness.report.rows import (
        FAILED_PLOT_LEGEND,
        FAILED_PLOT_NOTE,
        best_of_protocols,
        board_rows,
        failed_check_cells,
        measured_rows,
    )
    from harness.report.site import accuracy_vs_ipc_figure, build_site, per_ipc_figure

    rows, manifests = _failed_store()
    methods = ["random-real", "diffusion"]
    suite = SimpleNamespace(name="s", protocols={"hard-label": HardLabel()}, methods=methods, students=["convnet3"])
    current = {(m, "h") for m in methods}
    page = build_site(suite, rows, current, tmp_path / "site", methods, [], manifests, tmp_path, "cmd")
    text = page.read_text()
    assert "Open markers, † after the method: sampled from a backbone that FAILED its check" in text
    assert "kept off the Pareto front" in text
    assert {p.name for p in (tmp_path / "site" / "s" / "plots").iterdir()} >= {"accuracy-vs-ipc.png", "cost.png"}

    agg = board_rows(suite, rows, current, methods, manifests).agg
    fig = accuracy_vs_ipc_figure(agg, ["convnet3"], methods)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "diffusion †" in legend and "random-real" in legend and FAILED_PLOT_LEGEND in legend
    points = best_of_protocols(agg).merge(pd.DataFrame([m.__dict__ for m in manifests])[["method", "ipc"]])
    points = points.assign(seconds_per_image=[0.01 if m == "diffusion" else 1.0 for m in points["method"]])
    fig = per_ipc_figure(points, "seconds_per_image", "s/image", "convnet3", log=True, front=True)
    first = fig.axes[0]  # IPC 1: diffusion is cheaper and more accurate, and off the front
    assert {t.get_text() for t in first.texts} == {"diffusion †", "random-real"}
    (front,) = [line for line in first.lines if line.get_label() == "Pareto front"]
    assert list(front.get_xdata()) == [1.0]
    assert FAILED_PLOT_LEGEND in [t.get_text() for t in first.get_legend().get_texts()]

    failed = failed_check_cells(manifests, current)
    assert failed == {("diffusion", 1), ("diffusion", 10)}
    a, b = "diffusion", "random-real"
    clean = compare(measured_rows(rows, current), a, b)
    md = "\n".join(lines(mark_failed(clean, a, b, failed), a, b))
    assert "| convnet3 | hard-label | 1 | 50.5 (2) † | 40.5 (2) |" in md
    assert md.rstrip().endswith(f"{FAILED_PLOT_NOTE}.") and FAILED_PLOT_NOTE.startswith("†: sampled from a backbone")
    assert "†" not in "\n".join(lines(mark_failed(clean, a, b, set()), a, b))


def _skip_suite(tmp_path) -> Path:
    """The tiny suite cut to one method, IPC, protocol and seed, on a folder with two broken files, skipping them."""
    raw = tiny_suite_raw()
    raw.update(methods={"random-real": {}}, ipcs=[1], seeds=1, full_data={"epochs": 0})
    raw["protocols"] = {"hard-label": raw["protocols"]["hard-label"]}
    raw.pop("cross_arch")
    raw["data"] = {
        "format": "imagefolder",
        "root": str(broken_image_folder(tmp_path / "data")),
        "classes": "auto",
        "test_dir": "test",
        "image_size": 28,
        "val_per_class": 1,
        "skip_unreadable": True,
    }
    return write_suite(raw, tmp_path / "skip.yaml")


def test_unreadable_images_are_checked_once_and_skipped_when_asked(tmp_path, monkeypatch, capsys):
    """Issue 30 item 3: with data.skip_unreadable the two broken files are left out and listed; the check's verdict
    is cached by the folder's listing, so a second load decodes nothing, and a changed file is checked again.
    (Without the field, the same folder is one line and exit 2: tests/test_bad_input.py.)"""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    suite = _skip_suite(tmp_path)
    real = load_real_data(load_suite(str(suite)).data)
    assert real.unreadable == sorted(BROKEN_IMAGES)
    assert len(real.train) + len(real.val) == 2 * 8 - 1  # bag: 8 and the garbage; coat: 8, one cut
    assert "[data] checked 21 images once (cached): 2 unreadable" in capsys.readouterr().out
    assert load_real_data(load_suite(str(suite)).data).unreadable == real.unreadable
    assert "[data] checked" not in capsys.readouterr().out  # the cached verdict: nothing decoded again
    (tmp_path / "data" / "train" / "coat" / "0000.png").touch()  # a new modification time: the key changes
    load_real_data(load_suite(str(suite)).data)
    assert "[data] checked 21 images once" in capsys.readouterr().out


@pytest.mark.slow  # 85 s on the busy machine: prepare trains the tiny teacher and backbone
def test_a_run_skipping_unreadable_images_finishes_and_counts_them(tmp_path, ray_cluster):
    """The run leaves the broken files out the same way on the driver and in the workers (which load the data
    again), finishes, and counts them on the board's notes."""
    out = tmp_path / "out"
    assert main(["--suite", str(_skip_suite(tmp_path)), "--out", str(out), "--no-check"]) == 0
    board = (out / "leaderboard" / "tiny.md").read_text()
    assert (
        "data.skip_unreadable: 2 unreadable images left out of the data "
        "(train/bag/zz-garbage.jpg, train/coat/0003.png)" in board
    )
