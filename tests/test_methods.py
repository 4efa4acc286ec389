"""The spine's methods: selection rules on known features, and determinism (same seed → same images)."""

import pytest
import torch

from methods import get_method, list_methods
from methods.base import ClassTask, MethodContext
from methods.herding import herding_order
from methods.k_center import k_center_order
from tests.factories import tiny_latent_dit, tiny_task


def test_registry_has_the_spine_methods():
    assert {"random-real", "diffusion", "herding", "k-center"} <= set(list_methods())
    with pytest.raises(KeyError, match="unknown method"):
        get_method("magic")


def test_paper_defaults_of_the_diffusion_baseline():
    # The "DiT" baseline as Minimax / IMS3 ran it: 50 DDIM steps, guidance 4.0.
    cfg = get_method("diffusion").Config()
    assert cfg.steps == 50 and cfg.cfg_scale == 4.0


def test_herding_tracks_the_mean():
    feats = torch.tensor([[0.0, 0.0], [10.0, 0.0], [-10.0, 0.0], [1.0, 0.0]])
    # Mean is (0.25, 0): the single best point is (0, 0); then the pair whose mean is closest.
    order = herding_order(feats, 3).tolist()
    assert order[0] == 0 and order[1] == 3
    assert len(set(herding_order(feats, 4).tolist())) == 4


def test_k_center_picks_farthest_points():
    feats = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [-4.0, 0.0], [0.0, 3.0]])
    order = k_center_order(feats, 4).tolist()
    assert order[0] == 1  # nearest the mean (0.22, 0.6)
    assert order[1] == 2 and order[2] == 3 and order[3] == 4


def _task(ipc, seed, real=None, label=2, channels=3, size=8):
    return tiny_task(ipc, seed, label, real, channels, size)


def test_random_real_is_deterministic():
    real = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8)
    m = get_method("random-real")()
    a, b = m.distill_class(_task(5, 7, real, channels=1)), m.distill_class(_task(5, 7, real, channels=1))
    assert torch.equal(a, b) and a.shape == (5, 1, 8, 8)
    assert not torch.equal(a, m.distill_class(_task(5, 8, real, channels=1)))


def test_diffusion_same_seed_same_images():
    bb = tiny_latent_dit()
    m = get_method("diffusion")(
        get_method("diffusion").Config(cfg_scale=2.0, steps=3, batch_size=2), MethodContext(backbone=bb)
    )
    a = m.distill_class(_task(3, 11))
    assert a.shape == (3, 3, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, m.distill_class(_task(3, 11)))
    assert not torch.equal(a, m.distill_class(_task(3, 12)))
    # Grey suites get grey images at their size from an RGB backbone.
    assert m.distill_class(_task(2, 11, channels=1, size=6)).shape == (2, 1, 6, 6)


@pytest.mark.parametrize("name", ["herding", "k-center"])
def test_feature_methods_select_real_images(name, tiny_suite, tiny_real):
    from harness.models.students import create_student
    from harness.models.teachers import Teacher

    teacher = Teacher(create_student("convnet3", 10, 1, 28, width=8), 28, 1, [0.3], [0.3])
    real = tiny_real.train.class_images(4)
    m = get_method(name)(context=MethodContext(teacher=teacher))
    out = m.distill_class(_task(5, 0, real, label=4, channels=1, size=28))
    as_u8 = (out * 255).round().to(torch.uint8)
    assert all(any(torch.equal(img, r) for r in real) for img in as_u8)
    assert len({img.numpy().tobytes() for img in as_u8}) == 5


def test_diffusion_samples_the_backbone_label_not_the_suite_position():
    from methods.diffusion import Diffusion, DiffusionConfig

    method = Diffusion(DiffusionConfig(steps=2, cfg_scale=2.0), MethodContext(backbone=tiny_latent_dit()))
    common = dict(key="k", ipc=2, seed=5, real=None, num_classes=10, image_size=8, channels=3)
    mapped = method.distill_class(ClassTask(label=0, condition=3, **common))
    assert torch.equal(mapped, method.distill_class(ClassTask(label=3, **common)))
    assert not torch.equal(mapped, method.distill_class(ClassTask(label=0, **common)))
