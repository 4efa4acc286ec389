"""Teachers: the timm pretrained path on tiny local weights, and the WNID alignment check."""

import pytest
import timm
import torch

from harness.core.identity import CLASSES_DIR, read_class_list
from harness.models.teachers import load_timm_teacher


def test_timm_teacher_from_local_weights_picks_suite_classes_by_wnid(tmp_path):
    imagenet = read_class_list(CLASSES_DIR / "imagenet-1k.txt")
    nette = read_class_list(CLASSES_DIR / "imagenette.txt")
    torch.manual_seed(0)
    full = timm.create_model("test_resnet", num_classes=1000).eval()
    torch.save(full.state_dict(), tmp_path / "weights.pth")
    teacher = load_timm_teacher("test_resnet", str(tmp_path / "weights.pth"), nette, imagenet, input_size=32)
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        logits = teacher(x)
        reference = full(teacher.prepare_input(x))
    assert logits.shape == (2, 10)
    # Each suite class reads the 1k output of its own WNID, whatever order the suite lists them in.
    for i, wnid in enumerate(nette):
        torch.testing.assert_close(logits[:, i], reference[:, imagenet.index(wnid)])
    assert teacher.features(x).ndim == 2


def test_grey_images_reach_an_rgb_teacher(tmp_path):
    imagenet = read_class_list(CLASSES_DIR / "imagenet-1k.txt")
    torch.save(timm.create_model("test_resnet", num_classes=1000).state_dict(), tmp_path / "w.pth")
    teacher = load_timm_teacher("test_resnet", str(tmp_path / "w.pth"), imagenet[:3], imagenet, input_size=32)
    assert teacher(torch.rand(2, 1, 28, 28)).shape == (2, 3)


def test_class_mismatch_is_refused():
    imagenet = read_class_list(CLASSES_DIR / "imagenet-1k.txt")
    with pytest.raises(ValueError, match="does not cover the suite's WNIDs"):
        load_timm_teacher("test_resnet", None, ["n99999999"], imagenet, input_size=32)


@pytest.mark.parametrize(
    "name,count",
    [("imagenette", 10), ("imagewoof", 10), ("imageidc", 10), ("imagenet-100", 100), ("imagenet-1k", 1000)],
)
def test_shipped_class_lists(name, count):
    wnids = read_class_list(CLASSES_DIR / f"{name}.txt")
    assert len(wnids) == count == len(set(wnids))
    assert set(wnids) <= set(read_class_list(CLASSES_DIR / "imagenet-1k.txt"))
    assert len(read_class_list(CLASSES_DIR / f"{name}.names.txt")) == count


# Subset teachers (issue 12): RDED and CaO2 relabel the ImageNet subsets with a ResNet-18 trained on the subset.


def _subset_suite(tmp_path, relabel: dict):
    """A tiny ImageNet-layout folder (3 WNIDs, JPEGs whose colour says the class), a tiny DiT in the hub layout,
    tiny ImageNet-1k timm weights as the selector, and `relabel` as the soft labels' teacher."""
    import numpy as np
    import yaml
    from PIL import Image

    from harness.config.loader import load_suite
    from harness.models.data import load_real_data
    from harness.models.generators.dit import save_dit_backbone
    from tests.factories import tiny_latent_dit

    rng = np.random.default_rng(0)
    wnids = ["n02086240", "n02087394", "n02088364"]
    for split, n in (("train", 9), ("val", 3)):  # 8 training images a class after validation: even batches
        for c, w in enumerate(wnids):
            (tmp_path / "data" / split / w).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 60, (40, 48, 3)) + np.eye(3, dtype=int)[c] * 180
                Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "data" / split / w / f"{i}.JPEG")
    (tmp_path / "classes.txt").write_text("\n".join(wnids) + "\n")
    if not (tmp_path / "dit").exists():
        save_dit_backbone(tiny_latent_dit(), tmp_path / "dit")
        torch.save(timm.create_model("test_resnet", num_classes=1000).state_dict(), tmp_path / "selector.pth")
    path = tmp_path / "subset.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "subset",
                "data": {
                    "format": "imagefolder",
                    "root": str(tmp_path / "data"),
                    "classes": str(tmp_path / "classes.txt"),
                    "image_size": 32,
                    "val_per_class": 1,
                },
                "backbone": {"kind": "dit", "pretrained": str(tmp_path / "dit")},
                "teacher": {
                    "kind": "timm",
                    "arch": "test_resnet",
                    "weights": str(tmp_path / "selector.pth"),
                    "input_size": 32,
                    "relabel": relabel,
                },
                "methods": {"random-real": {}},
                "ipcs": [1],
                "seeds": 1,
                "students": ["convnet3"],
            }
        )
    )
    suite = load_suite(str(path))
    return suite, load_real_data(suite.data)


TINY_RECIPE = {
    "kind": "trained",
    "arch": "convnet3",
    "arch_kwargs": {"width": 8},
    "input_size": 24,
    "recipe": {"epochs": 1, "batch_size": 8},
}


def test_the_recipe_defaults_are_torchvisions_reference_recipe():
    """torchvision references/classification/train.py's defaults (8 GPUs × 32 images), which RDED's README says
    its observers were trained with."""
    from harness.models.teachers import TorchvisionRecipe

    r = TorchvisionRecipe()
    assert (r.epochs, r.batch_size, r.lr, r.momentum, r.weight_decay) == (90, 8 * 32, 0.1, 0.9, 1e-4)
    assert (r.lr_step_size, r.lr_gamma, r.crop_scale) == (30, 0.1, [0.08, 1.0])


def test_prepare_trains_the_subset_teacher_once_and_caches_it(tmp_path, capsys):
    from harness.stages.prepare import prepare

    suite, real = _subset_suite(tmp_path, TINY_RECIPE)
    out = tmp_path / "out"
    first = prepare(suite, real, out, check=False)
    log = capsys.readouterr().out
    assert "[prepare] teacher: training convnet3" in log and "in this process" in log
    (cached,) = out.glob("cache/teacher-*/teacher.pt")
    assert first.relabel.source == str(cached) and first.relabel.hash in str(cached)
    teacher = first.load_relabel_teacher()
    assert teacher.input_size == 24 and teacher(torch.rand(2, 3, 32, 32)).shape == (2, 3)  # the suite's classes
    assert first.load_teacher().class_indices.tolist() != []  # the selector is still the ImageNet-1k one
    assert 0 <= first.relabel.test_accuracy <= 1
    note = first.teacher_note()
    assert "test_resnet pretrained on ImageNet-1k" in note and "outputs picked by the suite's WNIDs" in note
    assert (
        f"soft labels from: convnet3 trained on subset by prepare (torchvision's reference recipe, as RDED's "
        f"observers), test accuracy {first.relabel.test_accuracy:.1%}"
    ) in note

    stamp = cached.stat().st_mtime_ns
    again = prepare(suite, real, out, check=False)
    assert "training" not in capsys.readouterr().out and cached.stat().st_mtime_ns == stamp
    assert (again.relabel.hash, again.relabel.test_accuracy) == (first.relabel.hash, first.relabel.test_accuracy)
    # Another recipe is another teacher.
    other, _ = _subset_suite(tmp_path, {**TINY_RECIPE, "recipe": {"epochs": 2, "batch_size": 8}})
    assert prepare(other, real, out, check=False).relabel.hash != first.relabel.hash


def test_a_torchvision_checkpoint_of_the_subset_is_read_as_rded_reads_it(tmp_path):
    """RDED's observers are torchvision reference checkpoints ({"model": ..., "args": Namespace}), loaded there
    into torchvision's resnet18 (synthesize/utils.py:237-240); timm's resnet18 reads the same keys."""
    import argparse

    import torchvision

    from harness.stages.prepare import prepare

    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=3).eval()
    torch.save(
        {"model": source.state_dict(), "args": argparse.Namespace(lr=0.1), "epoch": 89},
        tmp_path / "imagenet-woof_resnet18.pth",
    )
    suite, real = _subset_suite(
        tmp_path,
        {
            "kind": "trained",
            "arch": "resnet18",
            "input_size": 96,
            "weights": str(tmp_path / "imagenet-woof_resnet18.pth"),
        },
    )
    prepared = prepare(suite, real, tmp_path / "out", check=False)
    teacher = prepared.load_relabel_teacher()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), source(teacher.prepare_input(x)))
    assert prepared.relabel.description.startswith(f"resnet18 trained on subset's classes, from {tmp_path}")


def test_a_subset_checkpoint_with_the_wrong_class_count_fails_in_one_line(tmp_path, capsys):
    import argparse

    import torchvision

    from harness.cli import main

    wrong = tmp_path / "imagenet-1k_resnet18.pth"
    torch.save(
        {"model": torchvision.models.resnet18(num_classes=1000).state_dict(), "args": argparse.Namespace()}, wrong
    )
    suite, _ = _subset_suite(tmp_path, {"kind": "trained", "arch": "resnet18", "weights": str(wrong)})
    with pytest.raises(SystemExit) as exit_:
        main(["--suite", suite.source, "--out", str(tmp_path / "out"), "--no-check"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1
    assert lines[0] == (
        f"ddbench: error: {suite.source}: teacher.relabel.weights: {wrong} has 1000 outputs but the "
        f"suite has 3 classes: a subset teacher's outputs must be the suite's classes, in the "
        f"suite's order"
    )


def test_the_subset_teacher_trains_through_ray_train_as_in_one_process(tmp_path, ray_cluster):
    """Two DDP workers on CPU (gloo) see the batches one process would: ConvNet-3 (instance norm, nothing
    per-worker) ends with the same weights up to float reduction order."""
    from harness.config.coerce import build
    from harness.config.schema import TeacherConfig
    from harness.models.teachers import load_trained_teacher, train_recipe_teacher
    from harness.stages.prepare import train_data_parallel

    suite, real = _subset_suite(tmp_path, TINY_RECIPE)
    t = build(TeacherConfig, {**TINY_RECIPE, "recipe": {"epochs": 2, "batch_size": 8}}, "teacher", "test")
    images = real.train.load(torch.arange(len(real.train))).numpy()
    args = (real.train.labels, len(real.classes), t.arch, t.recipe, t.input_size)
    alone = train_recipe_teacher(images, *args, arch_kwargs=t.arch_kwargs, progress=False)
    train_data_parallel(
        images,
        args,
        t,
        tmp_path / "ddp" / "teacher.pt",
        workers=2,
        use_gpu=False,
        storage_path=str(tmp_path / "ray_train"),
    )
    ddp = load_trained_teacher(tmp_path / "ddp" / "teacher.pt")
    for (name, a), b in zip(alone.model.state_dict().items(), ddp.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(alone.model.classifier.weight, create_fresh_classifier(t))  # it did train


def create_fresh_classifier(t):
    from harness.models.students import create_student

    torch.manual_seed(t.recipe.seed)
    return create_student(t.arch, 3, 3, t.input_size, **t.arch_kwargs).classifier.weight


@pytest.mark.parametrize(
    "name,env",
    [
        ("imagewoof", "IMAGEWOOF_TEACHER"),
        ("imagenette", "IMAGENETTE_TEACHER"),
        ("imageidc", "IMAGEIDC_TEACHER"),
        ("imagenet-100", "IMAGENET100_TEACHER"),
        ("imagenet", None),
    ],
)
def test_imagenet_family_relabels_as_the_references_do(name, env, monkeypatch, tmp_path):
    """The subsets relabel with a ResNet-18 trained on the subset (RDED/CaO2 pretrain_models/<subset>_resnet18.pth),
    ImageNet-1k with the selector's torchvision weights; CaO2 selects with those weights everywhere."""
    from harness.config.loader import load_suite
    from harness.models.teachers import TorchvisionRecipe

    if env:
        monkeypatch.delenv(env, raising=False)
    suite = load_suite(name, check_files=False)
    assert (suite.teacher.kind, suite.teacher.weights) == ("timm", "resnet18.tv_in1k")
    assert suite.students == ["resnetap10", "resnet18_instancenorm", "resnet18"]
    r = suite.teacher.relabel
    if env is None:
        assert r is None
        return
    assert (r.kind, r.arch, r.input_size, r.recipe, r.weights) == ("trained", "resnet18", 224, TorchvisionRecipe(), "")
    monkeypatch.setenv(env, str(tmp_path / "observer.pth"))
    assert load_suite(name, check_files=False).teacher.relabel.weights == str(tmp_path / "observer.pth")
