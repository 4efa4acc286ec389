"""Suite loading: the shipped suites load; every kind of mistake is one line naming file and field, exit 2."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config.loader import load_suite
from harness.config.schema import BENCHMARKS_DIR, SuiteError
from harness.core.identity import CLASSES_DIR, class_list, config_hash, read_class_list
from tests.factories import write_suite

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCHMARKS_DIR.glob("*.yaml")))
def test_shipped_suites_load(name):
    suite = load_suite(name, check_files=False)
    assert suite.name == name
    assert suite.methods and suite.ipcs and suite.students


def test_quick_profile_overrides(tiny_suite):
    full = load_suite("fashion-mnist")
    quick = load_suite("fashion-mnist", "quick")
    assert quick.ipcs == [1, 10] and quick.seeds == 1 and full.ipcs == [1, 10, 50]
    assert _decisive_hash(full) != _decisive_hash(quick)


def _decisive_hash(suite) -> str:
    """A hash of everything in a suite that decides results (not paths, profiles, notes)."""
    d = dataclasses.asdict(suite)
    for k in ("profiles", "source", "notes"):
        d.pop(k)
    d["data"].pop("root")
    return config_hash(d)


def test_fashion_leaderboard_profile_and_scaled_students():
    """The published fashion-mnist leaderboard's grid, and the scaled epochs and widths its YAML states."""
    full, board = load_suite("fashion-mnist"), load_suite("fashion-mnist", "leaderboard")
    assert full.students == ["convnet3"] and full.seeds == 2
    # The default run keeps the spine's four baselines (its 20-minute budget); the papers' methods and their
    # ablations are on the published board.
    assert list(full.methods) == ["random-real", "diffusion", "herding", "k-center"]
    # (A prefix: a method joins the board by adding its line to the profile, without editing this test.)
    assert list(board.methods)[:11] == list(full.methods) + [
        "cao2",
        "cao2-oss-only",
        "cao2-clo-only",
        "d4m",
        "adaptive-sampling",
        "adaptive-sampling-no-repulsion",
        "adaptive-sampling-fixed",
    ]
    with pytest.raises(SuiteError, match="methods.cao2: not in the suite"):
        full.method_config("cao2")
    assert board.students == ["convnet3", "resnetap10", "resnet18"] and board.seeds == 3
    assert set(full.protocols) == {"hard-label", "soft-label"}
    # the board adds DD-Ranking's run without augmentation (for its ARS) to the default run's two
    assert set(board.protocols) == {"hard-label", "soft-label", "hard-label-no-aug"}
    # the full-data row trains to its validation plateau (at most 60 epochs)
    assert (board.full_data.epochs, board.full_data.patience, board.full_data.lr_drops) == (60, 3, 2)
    for cfg in board.protocols.values():
        assert cfg.epochs == {1: 200, 10: 100, 50: 40}
        assert cfg.student_kwargs == {
            "convnet3": {"width": 64},
            "resnetap10": {"width": 16},
            "resnet18": {"channels": [16, 32, 64, 128]},
        }
    # the default run's protocols are the leaderboard's for ConvNet-3, so their rows are shared; the leaderboard
    # adds only the ResNets' soft-label recipes searched on validation (benchmarks/searched/fashion-mnist/)
    assert {name: p.for_student("convnet3") for name, p in full.protocols.items()} == {
        name: board.protocols[name].for_student("convnet3") for name in full.protocols
    }
    assert full.protocols["hard-label"] == board.protocols["hard-label"]
    assert set(board.protocols["soft-label"].per_student) == {"resnetap10", "resnet18"}
    # the run without augmentation is the hard-label recipe, images as they are
    hard, plain = board.protocols["hard-label"], board.protocols["hard-label-no-aug"]
    assert hard.augmented and not plain.augmented and not plain.ranked
    assert all(getattr(plain, f.name) == getattr(hard, f.name) for f in dataclasses.fields(plain))
    c = board.cross_arch
    assert len(c.teachers) >= 3 and len(c.students) >= 5 and c.method in board.methods


def _write(tmp_path, mutate):
    raw = yaml.safe_load((BENCHMARKS_DIR / "fashion-mnist.yaml").read_text())
    mutate(raw)
    path = write_suite(raw, tmp_path / "bad.yaml")
    return path


BAD = {
    "unknown field": (lambda r: r["data"].update(colour="red"), "data.colour: unknown field"),
    "wrong type": (lambda r: r["data"].update(val_per_class="many"), "data.val_per_class: expected an integer"),
    "missing field": (lambda r: r.pop("teacher"), "teacher: missing"),
    "missing data": (
        lambda r: r["data"].update(root="/nonexistent/fmnist"),
        "data.root: /nonexistent/fmnist does not exist",
    ),
    "unknown method": (lambda r: r["methods"].update({"magic": {}}), "methods.magic: unknown method"),
    "bad method option": (
        lambda r: r["methods"].update({"diffusion": {"cfg": 2}}),
        "methods.diffusion.cfg: unknown field",
    ),
    "unknown student": (lambda r: r.update(students=["convnet3", "resnet9000"]), "students[1]: unknown student"),
    "bad ipc": (lambda r: r.update(ipcs=[0]), "ipcs: must be a non-empty list of positive integers"),
    "nested type": (lambda r: r["backbone"]["train"].update(lr="fast"), "backbone.train.lr: expected a number"),
    "cross-arch method": (lambda r: r["cross_arch"].update(method="magic"), "cross_arch.method: 'magic' is not one"),
    "cross-arch no method": (lambda r: r["cross_arch"].pop("method"), "cross_arch.method: missing"),
    "cross-arch teacher": (
        lambda r: r["cross_arch"]["teachers"][1].update(arch="resnet9000"),
        "cross_arch.teachers[1].arch: unknown architecture",
    ),
    "note not text": (lambda r: r.update(notes=[{"a": 1}]), "notes[0]: expected a string"),
    "distributed student": (
        lambda r: r.update(distributed_students={"resnet50": 2}),
        "distributed_students.resnet50: must name one of the suite's students",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_suite_is_one_line(tmp_path, case):
    mutate, expected = BAD[case]
    path = _write(tmp_path, mutate)
    with pytest.raises(SuiteError) as err:
        load_suite(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def _cli_error(args: list[str], capsys) -> str:
    """`args` through the CLI in this process: it must exit 2; returns what it wrote to stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2, (args, exit_.value.code)
    return capsys.readouterr().err


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    # In this process: `python benchmark.py` itself, in a subprocess, is tests/test_bad_input.py's
    # test_the_real_entry_point_gives_one_line_and_exit_2 (six subprocesses here cost ~50 s on two busy cores).
    path = _write(tmp_path, lambda r: r["data"].update(colour="red"))
    cases = [
        ["--suite", str(path)],
        ["--suite", "no-such-suite"],
        ["--suite", "fashion-mnist", "--ipc", "ten"],
        ["--suite", "fashion-mnist", "--methods", "magic"],
        ["--suite", "fashion-mnist", "--profile", "huge"],
    ]
    for args in cases:
        stderr = _cli_error([*args, "--out", str(tmp_path / "out")], capsys)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ddbench: error:"), (args, stderr)
        assert not (tmp_path / "out").exists()
    # A paper's method asked of the default run points at the profile that has it.
    stderr = _cli_error(["--suite", "fashion-mnist", "--methods", "cao2,d4m", "--out", str(tmp_path / "out")], capsys)
    assert stderr.strip().endswith("; --profile leaderboard lists them"), stderr


@pytest.mark.parametrize("name", ["imagenet", "imagenette", "imagewoof", "imageidc", "imagenet-100"])
def test_imagenet_family_carries_the_papers_settings(name):
    suite = load_suite(name, check_files=False)
    assert suite.data.format == "imagefolder" and suite.data.classes
    assert suite.backbone.kind == "dit" and suite.backbone.pretrained == "facebook/DiT-XL-2-256"
    assert suite.backbone.vae == "stabilityai/sd-vae-ft-mse"  # the papers' VAE (tests/test_guidance.py)
    assert suite.teacher.kind == "timm" and suite.teacher.weights == "resnet18.tv_in1k"
    assert suite.teacher.classes == "imagenet-1k"
    diffusion = suite.method_config("diffusion")
    assert (diffusion.cfg_scale, diffusion.steps) == (4.0, 50)  # the papers' DiT baseline
    hard = suite.protocols["hard-label"]
    assert (hard.lr, hard.momentum, hard.weight_decay, hard.batch_size, hard.cutmix_prob) == (0.01, 0.9, 5e-4, 64, 1.0)
    if name == "imagenet-100":  # the reference trains 100-class students for 2/3 of the epochs
        assert [hard.epochs_for(i) for i in (1, 10, 50)] == [2000, 1300, 1000]
    else:
        assert [hard.epochs_for(i) for i in (1, 10, 50)] == [3000, 2000, 1500]


def test_data_root_from_environment(monkeypatch):
    monkeypatch.setenv("IMAGENET_ROOT", "/somewhere/imagenet")
    assert load_suite("imagenette", check_files=False).data.root == "/somewhere/imagenet"
    monkeypatch.delenv("IMAGENET_ROOT")
    assert load_suite("imagenette", check_files=False).data.root == "/data/imagenet"


def test_pretrained_backbone_conditions_each_class_on_its_imagenet_label():
    """DiT-XL/2's label for a Woof breed is its ImageNet-1k index, not its place in the suite's list."""
    from harness.stages.prepare import backbone_conditions

    imagenet = read_class_list(CLASSES_DIR / "imagenet-1k.txt")
    assert class_list("imagenet-1k") == imagenet
    for name in ("imagenet", "imagenette", "imagewoof", "imageidc", "imagenet-100"):
        suite = load_suite(name, check_files=False)
        assert suite.backbone.classes == "imagenet-1k"
        keys = suite.data.class_keys()
        assert backbone_conditions(suite, keys) == [imagenet.index(k) for k in keys]
    woof = load_suite("imagewoof", check_files=False)
    assert backbone_conditions(woof, woof.data.class_keys())[0] != 0
    fashion = load_suite("fashion-mnist")
    assert backbone_conditions(fashion, list("abc")) == [0, 1, 2]  # trained on the suite: its own order
