"""SRe2L's recover on a tiny batch-norm teacher: the reference's settings pinned, the batch-norm term as the
reference computes it, the recovered images the teacher's class and closer to its running statistics than the
noise they start from, the hooks leaving the shared teacher, the batch-norm teacher each suite hands over (and the
refusal where none has batch norm), the plan's price, and SRe2L and DM end to end on the tiny suite."""

import dataclasses
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
import yaml

from harness.cli import main
from harness.config.loader import load_suite
from harness.config.schema import SuiteError
from harness.models.teachers import TeacherTrainConfig, train_teacher
from harness.pipeline import Run
from methods import get_method
from methods.base import MethodContext
from methods.sre2l import BatchNormStatistics, SRe2LConfig, augment, cosine_lr, crop_box, normalisation
from tests.factories import real_task, tiny_bn_teacher, tiny_suite_raw, write_suite

IMAGENET_SUITES = ["imagenet", "imagewoof", "imagenette", "imageidc", "imagenet-100"]


def _method(teacher, **overrides):
    cls = get_method("sre2l")
    config = dataclasses.replace(cls.default_config(), **overrides)
    return cls(config, MethodContext(bn_teacher=teacher))


def test_defaults_are_the_references():
    cfg = SRe2LConfig()
    # VILA-Lab/SRe2L SRe2L/recover/recover.sh lines 4-7: --batch-size 100 --lr 0.25 --iteration 4000 --r-bn 0.01
    # (l2-scale and tv-l2 0).
    assert (cfg.batch_size, cfg.lr, cfg.iterations, cfg.r_bn) == (100, 0.25, 4000, 0.01)
    # data_synthesis.py:46 Adam betas [0.5, 0.9]; :177 --jitter 32; :180 --first-bn-multiplier 10.
    assert (cfg.beta1, cfg.beta2, cfg.jitter, cfg.first_bn_multiplier) == (0.5, 0.9, 32, 10.0)
    # data_synthesis.py:55-58 RandomResizedCrop(224) (torchvision's scale (0.08, 1)) and RandomHorizontalFlip().
    assert cfg.crop_and_flip and cfg.crop_scale_min == 0.08
    # Small images: SRe2L/*small_dataset/recover_cifar.py:78-81 (a roll only), :211 --jitter 4; recover_cifar.sh
    # line 8 --iteration 1000.
    assert get_method("sre2l").small_image_defaults == {"crop_and_flip": False, "jitter": 4, "iterations": 1000}
    with pytest.raises(ValueError, match="betas"):
        SRe2LConfig(beta1=1.0)
    with pytest.raises(ValueError, match="at least 1"):
        SRe2LConfig(iterations=0)


def test_the_lr_is_a_cosine_without_warm_up():
    assert cosine_lr(0.25, 0, 100) == 0.25
    assert cosine_lr(0.25, 50, 100) == pytest.approx(0.125)
    assert cosine_lr(0.25, 99, 100) == pytest.approx(0.25 * 0.5 * (1 + math.cos(math.pi * 0.99)))


def test_the_batch_norm_term_is_the_references():
    """‖running_var − var‖₂ + ‖running_mean − mean‖₂ of each BN layer's input (variance without Bessel), the first
    layer's × first_bn_multiplier (SRe2L/recover/utils.py:96-101, data_synthesis.py:74-75)."""
    teacher = tiny_bn_teacher()
    layers = [m for m in teacher.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0].detach()))) for m in layers]
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with BatchNormStatistics(teacher.model) as bn:
        teacher.model(x)
        got = bn.loss(10.0)
    for h in hooks:
        h.remove()
    want = 0.0
    for i, (mod, inp) in enumerate(seen):
        mean = inp.mean((0, 2, 3))
        var = inp.permute(1, 0, 2, 3).reshape(inp.shape[1], -1).var(1, unbiased=False)
        term = (mod.running_var - var).norm() + (mod.running_mean - mean).norm()
        want += (10.0 if i == 0 else 1.0) * term
    assert len(seen) == len(layers) > 1
    torch.testing.assert_close(got, want)
    # The hooks leave the shared teacher: another forward records nothing new.
    assert all(not m._forward_hooks for m in layers)


def test_a_teacher_without_batch_norm_is_refused_by_the_recover():
    from tests.factories import tiny_teacher

    with pytest.raises(ValueError, match="no batch-norm layer"):
        BatchNormStatistics(tiny_teacher().model)


def test_the_augmentation_is_one_draw_for_the_batch():
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        top, left, h, w = crop_box(28, 28, 0.08, gen)
        assert 0 <= top and top + h <= 28 and 0 <= left and left + w <= 28 and h * w >= 0.05 * 784
    x = torch.rand(4, 1, 12, 12)
    # A roll of 0 and no crop is the identity; every image of a batch gets the same crop, flip and roll.
    assert torch.equal(augment(x, SRe2LConfig(crop_and_flip=False, jitter=0), gen), x)
    cfg = SRe2LConfig(jitter=3)
    both = augment(x, cfg, torch.Generator().manual_seed(5))
    alone = augment(x[2:3], cfg, torch.Generator().manual_seed(5))
    torch.testing.assert_close(both[2:3], alone)


@pytest.fixture(scope="module")
def trained_bn_teacher(tiny_real, tmp_path_factory):
    """A batch-norm ConvNet-3 of width 16 trained for three epochs on the tiny suite's real images (~74 % test
    accuracy; ~20 s): a random network's logits hardly move with its input, so only a trained one shows the recover
    doing its job."""
    images, labels = tiny_real.train.load(torch.arange(len(tiny_real.train))), tiny_real.train.labels
    path = tmp_path_factory.mktemp("bn-teacher") / "teacher.pt"
    cfg = TeacherTrainConfig(epochs=3, batch_size=64, lr=1e-2)
    kwargs = {"width": 16, "norm": "batchnorm"}
    return train_teacher(images, labels, 10, "convnet3", cfg, path, progress=False, arch_kwargs=kwargs)


def test_recovered_images_are_the_class_and_nearer_the_running_statistics(tiny_real, trained_bn_teacher):
    task = dataclasses.replace(real_task(tiny_real, 7, 3, seed=4), real=None)
    settings = {"iterations": 30, "crop_and_flip": False, "jitter": 1}
    method = _method(trained_bn_teacher, **settings)
    images = method.distill_class(task)
    assert images.shape == (3, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    mean, std = normalisation(trained_bn_teacher, 1)
    noise = (torch.randn((3, 1, 28, 28), generator=task.generator()) * std + mean).clamp(0, 1)

    def scores(x):
        with torch.no_grad(), BatchNormStatistics(trained_bn_teacher.model) as bn:
            logits = trained_bn_teacher.model(trained_bn_teacher.prepare_input(x))
            return F.cross_entropy(logits, torch.full((3,), 7)).item(), bn.loss(10.0).item()

    (ce_noise, bn_noise), (ce_made, bn_made) = scores(noise), scores(images)
    assert ce_made < 0.1 < ce_noise and bn_made < bn_noise / 2, (ce_noise, ce_made, bn_noise, bn_made)
    assert torch.equal(images, _method(trained_bn_teacher, **settings).distill_class(task))
    # Batches of 2: the same starting noise, another batch statistic, other images.
    assert not torch.equal(images, _method(trained_bn_teacher, batch_size=2, **settings).distill_class(task))


def test_each_suite_hands_sre2l_a_batch_norm_resnet18():
    fashion = load_suite("fashion-mnist", "leaderboard")
    t, where = fashion.bn_teacher()
    # The cross-architecture study's ResNet-18: the ConvNet-3 teacher and ResNetAP-10 have instance norm.
    assert (where, t.arch) == ("cross_arch.teachers[2]", "resnet18")
    assert fashion.method_config("sre2l").iterations == 100  # the board's budget (the suite's comment says why)
    for name in IMAGENET_SUITES:
        suite = load_suite(name, check_files=False)
        t, where = suite.bn_teacher()
        assert t.arch == "resnet18" and where == ("teacher" if name == "imagenet" else "teacher.relabel"), name
        assert {"sre2l", "dm"} <= set(suite.methods)
        assert suite.method_config("sre2l") == get_method("sre2l").default_config()  # 256 px: the ImageNet recover
        assert "sre2l" not in suite.reported.not_implemented


def test_a_suite_without_a_batch_norm_teacher_refuses_sre2l(tmp_path):
    raw = tiny_suite_raw()
    raw["methods"]["sre2l"] = {}
    with pytest.raises(SuiteError, match="methods.sre2l: needs a teacher with batch norm"):
        load_suite(str(write_suite(raw, tmp_path / "s.yaml")))


def test_the_plan_prices_sre2l_and_dm_on_imagenet(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path / "absent"))
    assert main(["--suite", "imagenet", "--plan", "--methods", "sre2l,dm", "--out", str(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    assert "batch-norm teacher (teacher) resnet18 at 224 px" in text
    for method in ("sre2l", "dm"):
        row = re.search(rf"^  {method} +2 +2000 +60,000 +0 +([\d,.]+) +([\d.]+ GB) +FLOPs; memory: ", text, re.M)
        assert row and float(row.group(1).replace(",", "")) > 0, text
        # the true-size rehearsal's peak (benchmarks/rehearsal/imagenet.json; docs/performance.md)
        assert row.group(2) == {"sre2l": "4.2 GB", "dm": "33.1 GB"}[method], row.group(0)
    # SRe2L: 3 teacher passes per image and step (forward and backward) at ResNet-18's 224-px FLOPs.
    sre2l = get_method("sre2l")
    assert sre2l.work(sre2l.default_config(), 10, 1300).bn_teacher == 3 * 4000 * 10
    dm = get_method("dm")
    assert dm.work(dm.default_config(), 10, 1300).network == 20000 * (256 + 3 * 10)
    assert dm.own_network(dm.default_config(), 256) == ("convnet3", {"width": 128, "depth": 6}, 256)


@pytest.mark.slow
def test_sre2l_and_dm_end_to_end_on_the_tiny_suite(tmp_path, ray_cluster, tiny_real):
    """The tiny suite with a batch-norm ConvNet-3 among its cross_arch teachers: prepare trains it,
    SRe2L recovers from it, DM matches embeddings, both sets are evaluated under both protocols."""
    raw = tiny_suite_raw()
    raw["cross_arch"]["teachers"].append(
        {
            "kind": "trained",
            "arch": "convnet3",
            "arch_kwargs": {"width": 8, "norm": "batchnorm"},
            "train": {"epochs": 1, "batch_size": 64},
        }  # fmt: skip
    )
    raw["methods"] = {"sre2l": {"iterations": 3}, "dm": {"iterations": 3, "batch_real": 16, "width": 8}}
    raw["cross_arch"]["method"] = "dm"
    raw.update(ipcs=[2], seeds=1, full_data={"epochs": 0})
    suite = load_suite(str(write_suite(raw, tmp_path / "tiny-optim.yaml")))
    assert suite.bn_teacher()[1] == "cross_arch.teachers[2]"
    out = tmp_path / "out"
    Run(suite, ["sre2l", "dm"], out, tiny_real, check=False).board()
    manifests = {
        json.loads(p.read_text())["method"]: json.loads(p.read_text())
        for p in out.glob("distilled/*/*/*/ipc2/manifest.json")
    }
    assert set(manifests) == {"sre2l", "dm"}
    assert all(m["images"] == 20 for m in manifests.values())
    # The SRe2L set names the batch-norm teacher it was recovered from; DM reads no teacher.
    teacher_files = [p.name for p in (out / "cache").glob("teacher-*") if p.is_dir()]
    assert manifests["sre2l"]["teacher"] and f"teacher-{manifests['sre2l']['teacher']}" in teacher_files
    assert manifests["dm"]["teacher"] is None
    assert "recover" in manifests["sre2l"]["stage_seconds"] and "match" in manifests["dm"]["stage_seconds"]
    rows = [json.loads(line) for line in (out / "results" / "tiny.jsonl").read_text().splitlines()]
    got = {(r["method"], r["protocol"]) for r in rows}
    assert got == {(m, p) for m in ("sre2l", "dm") for p in ("hard-label", "soft-label")}
    assert yaml.safe_load((tmp_path / "tiny-optim.yaml").read_text())["methods"]["sre2l"] == {"iterations": 3}
