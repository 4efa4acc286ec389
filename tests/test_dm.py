"""DM on real Fashion-MNIST images: the reference's settings pinned, the embedding ConvNet's depth by image side and
its per-iteration redraw, DSA's Siamese draws (one set of parameters for every image of both batches), the
optimisation lowering the embedding-mean distance from its real-image start, and the suites' settings."""

import dataclasses

import pytest
import torch

from harness.config.loader import load_suite
from harness.models.students import create_student
from methods import get_method
from methods.base import MethodContext
from methods.dm import DMConfig, apply_dsa, draw_dsa, network_depth, network_side, redraw
from tests.factories import real_task


def _method(**overrides):
    cls = get_method("dm")
    return cls(dataclasses.replace(cls.default_config(), **overrides), MethodContext())


def test_defaults_are_the_references():
    cfg = DMConfig()
    # VICO-UoE/DatasetCondensation main_DM.py:22-27: --Iteration 20000, --lr_img 1.0, --batch_real 256, --init real;
    # :28 --dsa_strategy color_crop_cutout_flip_scale_rotate; :102 SGD momentum 0.5.
    assert (cfg.iterations, cfg.lr_img, cfg.batch_real, cfg.init, cfg.dsa, cfg.momentum) == (
        20000,
        1.0,
        256,
        "real",
        True,
        0.5,
    )
    # utils.py:118-120 get_default_convnet_setting: width 128, depth 3, instancenorm, avgpooling.
    assert cfg.width == 128 and network_depth(cfg, 32) == 3
    with pytest.raises(ValueError, match="init"):
        DMConfig(init="zeros")


def test_the_network_deepens_with_the_image_and_pads_28_to_32():
    cfg = DMConfig()
    # networks.py:95-99: a 28-px image is a 32-px one to the ConvNet (first conv padding 3).
    assert network_side(28) == 32 and network_depth(cfg, 28) == 3
    assert [network_depth(cfg, s) for s in (32, 64, 128, 256)] == [3, 4, 5, 6]
    assert network_depth(DMConfig(depth=4), 256) == 4


def test_each_iteration_draws_a_new_network_from_the_tasks_generator():
    net = create_student("convnet3", 10, 1, 32, width=8)
    redraw(net, torch.Generator().manual_seed(0))
    first = [p.clone() for p in net.parameters()]
    redraw(net, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(first, net.parameters()))
    gen = torch.Generator().manual_seed(0)
    redraw(net, gen)
    redraw(net, gen)
    assert not torch.equal(first[0], next(net.parameters()))
    conv = net.features[0]
    assert conv.weight.abs().max() <= 1 / (conv.weight[0].numel() ** 0.5)  # PyTorch's default bound, 1/√fan_in


def test_dsa_draws_once_for_every_image_of_both_batches():
    """Siamese augmentation (utils.py `theta[:] = theta[0]`): each image of either batch gets the same transform,
    so an image augmented in a batch equals the image augmented alone."""
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(3)
    kinds = set()
    for _ in range(60):
        kind, params = draw_dsa(gen, 28)
        kinds.add(kind)
        batch = apply_dsa(x, kind, params)
        torch.testing.assert_close(batch[4:5], apply_dsa(x[4:5], kind, params), atol=1e-5, rtol=0)
    assert kinds == {"color", "crop", "cutout", "flip", "scale", "rotate"}
    # A translation fills with zeros; a cutout of half the side zeroes a 14 × 14 block inside the image.
    shifted = apply_dsa(torch.ones(1, 1, 28, 28), "crop", {"dx": 2, "dy": 0})
    assert shifted[0, 0, -2:].abs().sum() == 0 and shifted[0, 0, :-2].min() == 1
    cut = apply_dsa(torch.ones(1, 1, 28, 28), "cutout", {"x": 14, "y": 14, "size": 14})
    assert int((cut == 0).sum()) == 14 * 14
    assert torch.equal(apply_dsa(x, "flip", {"flip": True}), x.flip(3))


def _embedding_distance(images, real, seeds=range(8)):
    """The DM loss averaged over fixed random ConvNets (no augmentation), images in [0, 1]."""
    mean, std = real.mean((0, 2, 3), keepdim=True), real.std((0, 2, 3), keepdim=True)
    net = create_student("convnet3", 10, 1, 32, width=16)
    total = 0.0
    for s in seeds:
        redraw(net, torch.Generator().manual_seed(100 + s))
        with torch.no_grad():
            a = net.forward_features(torch.nn.functional.pad((real - mean) / std, (2,) * 4)).mean(0)
            b = net.forward_features(torch.nn.functional.pad((images - mean) / std, (2,) * 4)).mean(0)
        total += float(((a - b) ** 2).sum())
    return total / len(seeds)


def test_dm_starts_from_real_images_and_matches_the_class_mean_embedding(tiny_real):
    task = real_task(tiny_real, 3, 4, seed=9)
    real01 = task.real.float() / 255
    start = real01[torch.randperm(len(task.real), generator=task.generator())[:4]]
    # An iteration at a vanishing step leaves the real images it started from.
    torch.testing.assert_close(
        _method(iterations=1, lr_img=1e-8, width=16).distill_class(task), start, atol=1e-5, rtol=0
    )
    method = _method(iterations=40, batch_real=64, width=16)
    images = method.distill_class(task)
    assert images.shape == (4, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert _embedding_distance(images, real01) < 0.7 * _embedding_distance(start, real01)
    assert torch.equal(images, _method(iterations=40, batch_real=64, width=16).distill_class(task))
    assert "match" in method.stage_seconds


def test_the_suites_run_dm():
    fashion = load_suite("fashion-mnist", "leaderboard")
    cfg = fashion.method_config("dm")
    # The board's budget (benchmarks/fashion-mnist.yaml says why): 100 steps, 64 real images, width 64.
    assert (cfg.iterations, cfg.batch_real, cfg.width, cfg.lr_img) == (100, 64, 64, 1.0)
    woof = load_suite("imagewoof", check_files=False)
    assert woof.method_config("dm") == DMConfig()
    # IMS3 Table 1's DM column: three students at IPC 10, 20, 50, 70 and 100.
    dm_rows = [e for e in woof.reported.entries if e.method == "dm"]
    assert len(dm_rows) == 15 and {e.ipc for e in dm_rows} == {10, 20, 50, 70, 100}
    assert next(e for e in dm_rows if e.student == "resnet18" and e.ipc == 50).accuracy == 46.2
