"""The ImageNet-family suites' student recipes against the reference code, line by line.

The tables are transcribed from the reference repositories (vimar-gu/MinimaxDiffusion for the hard-label recipe,
which CaO2's eval.py copies unchanged; LINs-lab/RDED for the soft-label recipe, which CaO2's argument_rded.py copies)
and compared with what ddbench's protocol objects give for each suite and IPC. The augmentation tests re-derive the
reference's formulas on tiny tensors.
"""

import itertools

import pytest
import torch
import torchvision.transforms.functional as TF

from harness.config.loader import load_suite
from harness.models import protocols as P
from harness.models.augment import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    augment,
    jitter_colours,
    pca_lighting,
    resize_center_crop,
)
from harness.models.training import train_student

FAMILY = ["imagewoof", "imagenette", "imageidc", "imagenet-100", "imagenet"]

# Hard label, Minimax argument.py: epochs by ipc_epoch (l.18–43: ipc 1 → 3000, ≤ 10 → 2000, ≤ 50 → 1500; for
# exactly 100 classes ×2/3 rounded down to hundreds, l.39–41); batch 64, lr 0.01, wd 5e-4 (l.116–119); above 100
# classes lr 0.1, wd 1e-4, batch max(128, batch) (l.294–301).
# (suite, ipc): (epochs, batch, lr, weight decay)
HARD = {
    ("imagewoof", 1): (3000, 64, 0.01, 5e-4),  # l.26–27, l.116–119
    ("imagewoof", 10): (2000, 64, 0.01, 5e-4),  # l.28–29
    ("imagewoof", 20): (1500, 64, 0.01, 5e-4),  # l.30–31
    ("imagewoof", 50): (1500, 64, 0.01, 5e-4),  # l.30–31
    ("imagenette", 1): (3000, 64, 0.01, 5e-4),  # l.26–27
    ("imagenette", 10): (2000, 64, 0.01, 5e-4),  # l.28–29
    ("imagenette", 20): (1500, 64, 0.01, 5e-4),  # l.30–31
    ("imagenette", 50): (1500, 64, 0.01, 5e-4),  # l.30–31
    ("imageidc", 1): (3000, 64, 0.01, 5e-4),  # l.26–27
    ("imageidc", 10): (2000, 64, 0.01, 5e-4),  # l.28–29
    ("imageidc", 20): (1500, 64, 0.01, 5e-4),  # l.30–31
    ("imageidc", 50): (1500, 64, 0.01, 5e-4),  # l.30–31
    ("imagenet-100", 1): (2000, 64, 0.01, 5e-4),  # l.26–27 then l.39–41: 3000 · 2/3
    ("imagenet-100", 10): (1300, 64, 0.01, 5e-4),  # l.28–29 then l.39–41: 1333 → 1300
    ("imagenet-100", 50): (1000, 64, 0.01, 5e-4),  # l.30–31 then l.39–41; nclass 100 is not > 100 (l.295)
    ("imagenet", 1): (3000, 128, 0.1, 1e-4),  # l.26–27; l.295–301 (nclass 1000 > 100)
    ("imagenet", 10): (2000, 128, 0.1, 1e-4),  # l.28–29; l.295–301
    ("imagenet", 50): (1500, 128, 0.1, 1e-4),  # l.30–31; l.295–301
}
# Hard label, every ImageNet suite: train input 224 (argument.py l.93 --size 224; data.py l.331 RandomResizedCrop
# (224, scale=(0.5, 1.0))), test Resize(224) + CenterCrop(224) (data.py l.302–304: size > 0), colour jitter 0.4
# (l.318), lighting alphastd 0.1 (l.319), CutMix β 1 with probability 1 (argument.py l.134–135), momentum 0.9
# (l.118), milestones 2/3 and 5/6, ×0.2 (train.py l.107–108).
HARD_COMMON = {
    "input_size": 224,
    "test_resize": 224,
    "test_crop": 224,
    "color_jitter": 0.4,
    "lighting": 0.1,
    "rrc_scale": [0.5, 1.0],
    "cutmix_beta": 1.0,
    "cutmix_prob": 1.0,
    "momentum": 0.9,
    "milestones": [2 / 3, 5 / 6],
    "gamma": 0.2,
}

# Soft label, RDED argument.py: batch by IPC (l.234–243: 1 → 10, 10 → 50, 50 → 100), ×2 for 100 and 1000 classes
# (l.245–250), at most ipc × nclass (l.257–258); epochs 300 (scripts/imagenet-*_resnet-18_to_resnet-18_cr5.sh
# --re-epochs 300); AdamW lr 0.001 for resnet18 (l.287–288), weight decay 0.01 (l.153); temperature 20 with CutMix
# (l.273–274). RDED sets no batch for IPC 20 (its loader would get batch 0): ddbench takes the next bound's, 100.
# (suite, ipc): (epochs, batch, lr, weight decay, temperature)
SOFT = {
    ("imagewoof", 1): (300, 10, 1e-3, 0.01, 20.0),  # l.241–243, l.245–246
    ("imagewoof", 10): (300, 50, 1e-3, 0.01, 20.0),  # l.238–240
    ("imagewoof", 20): (300, 100, 1e-3, 0.01, 20.0),  # no reference value (see above)
    ("imagewoof", 50): (300, 100, 1e-3, 0.01, 20.0),  # l.235–237
    ("imagenette", 1): (300, 10, 1e-3, 0.01, 20.0),  # l.241–243
    ("imagenette", 10): (300, 50, 1e-3, 0.01, 20.0),  # l.238–240
    ("imagenette", 20): (300, 100, 1e-3, 0.01, 20.0),  # no reference value
    ("imagenette", 50): (300, 100, 1e-3, 0.01, 20.0),  # l.235–237
    ("imageidc", 1): (300, 10, 1e-3, 0.01, 20.0),  # l.241–243
    ("imageidc", 10): (300, 50, 1e-3, 0.01, 20.0),  # l.238–240
    ("imageidc", 20): (300, 100, 1e-3, 0.01, 20.0),  # no reference value
    ("imageidc", 50): (300, 100, 1e-3, 0.01, 20.0),  # l.235–237
    ("imagenet-100", 1): (300, 20, 1e-3, 0.01, 20.0),  # l.241–243, l.247–248
    ("imagenet-100", 10): (300, 100, 1e-3, 0.01, 20.0),  # l.238–240, l.247–248
    ("imagenet-100", 50): (300, 200, 1e-3, 0.01, 20.0),  # l.235–237, l.247–248
    ("imagenet", 1): (300, 20, 1e-3, 0.01, 20.0),  # l.241–243, l.249–250
    ("imagenet", 10): (300, 100, 1e-3, 0.01, 20.0),  # l.238–240, l.249–250
    ("imagenet", 50): (300, 200, 1e-3, 0.01, 20.0),  # l.235–237, l.249–250
}
# Soft label, every ImageNet suite: RandomResizedCrop(224, scale=(1/factor, 1)) with factor 2 (argument.py
# l.181–211 input_size 224; validation/main.py l.117–123; the scripts' --factor 2), test Resize(224 // 7 * 8 = 256)
# + CenterCrop(224) (validation/main.py l.154–155).
SOFT_COMMON = {"input_size": 224, "test_resize": 256, "test_crop": 224, "patch_factor": 2, "mix": "cutmix"}


def _suite(name):
    suite = load_suite(name, check_files=False)
    return suite, len(suite.data.class_keys())


def _optimiser_values(protocol, student, num_classes):
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    bias = torch.nn.Parameter(torch.zeros(2))

    def groups(no_decay_on_bias_and_norm, weight_decay):
        if no_decay_on_bias_and_norm:
            return [{"params": [weight]}, {"params": [bias], "weight_decay": 0.0}]
        return [{"params": [weight, bias]}]

    group = protocol.optimizer(groups, student, num_classes).param_groups[0]
    return group["lr"], group["weight_decay"]


def _settings(protocol, table):
    values = {k: getattr(protocol, k) for k in table if k != "test_crop"}
    values["test_crop"] = protocol.train_size(256)  # the test view crops to the input size
    return values


def test_the_tables_cover_every_suite_ipc():
    for name in FAMILY:
        suite, _ = _suite(name)
        for ipc in suite.ipcs:
            assert (name, ipc) in HARD and (name, ipc) in SOFT, (name, ipc)


@pytest.mark.parametrize("name,ipc", sorted(HARD))
def test_hard_label_recipe_matches_minimax(name, ipc):
    suite, num_classes = _suite(name)
    hard = suite.protocols["hard-label"]
    epochs, batch, lr, wd = HARD[name, ipc]
    assert hard.epochs_for(ipc) == epochs
    assert hard.batch_size_for(ipc, num_classes, images=ipc * num_classes) == batch
    assert _optimiser_values(hard, "resnetap10", num_classes) == pytest.approx((lr, wd))
    # The multistep milestones, as train.py l.108 computes them: 2·E // 3 and 5·E // 6.
    scheduler = hard.scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), epochs)
    assert sorted(scheduler.milestones) == [2 * epochs // 3, 5 * epochs // 6]
    assert _settings(hard, HARD_COMMON) == HARD_COMMON
    assert hard.color_jitter_order == "random" and not hard.clip_colours


@pytest.mark.parametrize("name,ipc", sorted(SOFT))
def test_soft_label_recipe_matches_rded(name, ipc):
    suite, num_classes = _suite(name)
    soft = suite.protocols["soft-label"]
    epochs, batch, lr, wd, tau = SOFT[name, ipc]
    assert soft.epochs_for(ipc) == epochs
    assert soft.batch_size_for(ipc, num_classes, images=ipc * num_classes) == batch
    assert _optimiser_values(soft, "resnet18", num_classes) == pytest.approx((lr, wd))
    assert soft.tau() == tau
    assert _settings(soft, SOFT_COMMON) == SOFT_COMMON


def test_the_many_classes_switch_is_the_references_rule():
    """argument.py l.295: `nclass > 100` switches; l.301: the batch is max(128, batch_size)."""
    hard = P.HardLabel()
    for classes, expected in (
        (10, (0.01, 5e-4, 64)),
        (100, (0.01, 5e-4, 64)),
        (101, (0.1, 1e-4, 128)),
        (1000, (0.1, 1e-4, 128)),
    ):
        assert _optimiser_values(hard, "resnet18", classes) + (
            hard.batch_size_for(10, classes, 10_000),
        ) == pytest.approx(expected)
    assert P.HardLabel(batch_size=256).batch_size_for(10, 1000, 10_000) == 256
    assert P.HardLabel(batch_size=32).batch_size_for(10, 1000, 10_000) == 128
    # Epochs do not switch (ipc_epoch changes them only at exactly 100 classes, which the suite's table sets).
    assert P.HardLabel().epochs_for(10) == 2000


@pytest.mark.parametrize("name", FAMILY)
def test_training_batches_come_out_at_the_protocols_input_size(name):
    suite, num_classes = _suite(name)
    x, y = torch.rand(4, 3, 256, 256), torch.arange(4) % num_classes
    for protocol in suite.protocols.values():
        images, _ = protocol.batch(x, y, torch.Generator().manual_seed(0), num_classes)
        assert images.shape == (4, 3, 224, 224), protocol.name
    plain = P.HardLabelNoAugmentation(input_size=224)
    images, _ = plain.batch(x, y, torch.Generator().manual_seed(0), num_classes)
    assert torch.allclose(images, TF.resize(x, 224, antialias=True), atol=1e-6)


@pytest.mark.parametrize(
    "shape,resize,crop",
    [((2, 3, 40, 40), 32, 28), ((2, 3, 40, 52), 32, 28), ((2, 3, 52, 40), 36, 36), ((2, 1, 30, 30), 30, 24)],
)
def test_the_test_view_is_torchvisions_resize_then_centre_crop(shape, resize, crop):
    x = torch.rand(shape)
    protocol = P.SoftLabel(input_size=crop, test_resize=resize)
    expected = TF.center_crop(TF.resize(x, resize, antialias=True), crop)
    assert torch.allclose(protocol.test_view(x), expected, atol=1e-5)
    # Unset, the test images are as they are (fashion-mnist's rows).
    assert torch.equal(P.HardLabel().test_view(x), x)


@pytest.mark.parametrize("name", FAMILY)
def test_the_suites_test_views(name):
    suite, _ = _suite(name)
    x = torch.rand(2, 3, 256, 256)
    hard, soft = suite.protocols["hard-label"], suite.protocols["soft-label"]
    assert torch.allclose(hard.test_view(x), TF.center_crop(TF.resize(x, 224, antialias=True), 224), atol=1e-5)
    assert torch.equal(soft.test_view(x), TF.center_crop(x, 224))  # 256 already: the crop alone


def test_a_student_trains_and_is_tested_at_the_protocols_size():
    """The student is built for the input size (ConvNet-3's classifier depends on it) and tested on the view."""
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(12) % 3
    for protocol in (
        P.HardLabel(
            epochs={2: 1},
            batch_size=6,
            input_size=24,
            test_resize=28,
            lighting=0.1,
            color_jitter_order="random",
            clip_colours=False,
            student_kwargs={"convnet3": {"width": 8}},
        ),
        P.HardLabelNoAugmentation(
            epochs={2: 1}, batch_size=6, input_size=24, student_kwargs={"convnet3": {"width": 8}}
        ),
    ):
        result = train_student("convnet3", images, labels, images, labels, 3, 2, protocol, 0)
        assert result["epochs"] == 1 and 0 <= result["accuracy"] <= 1


def _reference_lighting(img, alpha):
    """Minimax misc/utils.py l.214–228 (Lighting.__call__) on one CHW image, its alpha given."""
    eigval, eigvec = torch.tensor(IMAGENET_EIGVAL), torch.tensor(IMAGENET_EIGVEC)
    rgb = eigvec.clone().mul(alpha.view(1, 3).expand(3, 3)).mul(eigval.view(1, 3).expand(3, 3)).sum(1).squeeze()
    return img + rgb.view(3, 1, 1).expand_as(img)


def test_pca_lighting_is_the_references():
    x, alpha = torch.rand(5, 3, 6, 6), torch.randn(5, 3) * 0.1
    ours = pca_lighting(x, alpha)
    for i in range(5):
        assert torch.allclose(ours[i], _reference_lighting(x[i], alpha[i]), atol=1e-6)
    # The reference's eigenvalues and eigenvectors (data.py l.320–325).
    assert IMAGENET_EIGVAL == (0.2175, 0.0188, 0.0045)
    assert IMAGENET_EIGVEC[1] == (-0.5808, -0.0045, -0.8140)


def test_augment_draws_lighting_weights_of_the_given_deviation():
    """On a flat grey image (crop and flip change nothing) the shift is eigvec · (alpha ∘ eigval): recover alpha."""
    n = 4000
    x = torch.full((n, 3, 4, 4), 0.5)
    out = augment(x, torch.Generator().manual_seed(0), [1.0, 1.0], False, lighting=0.1, clip=False)
    shift = out[:, :, 0, 0] - 0.5
    assert torch.allclose(out, shift.view(n, 3, 1, 1) + 0.5, atol=1e-5)  # one RGB shift per image
    alpha = torch.linalg.solve(torch.tensor(IMAGENET_EIGVEC), shift.T).T / torch.tensor(IMAGENET_EIGVAL)
    assert alpha.std(0).tolist() == pytest.approx([0.1] * 3, abs=0.006)
    assert alpha.mean(0).abs().max() < 0.006
    # Off by default: the images as the crop left them.
    assert torch.equal(augment(x, torch.Generator().manual_seed(0), [1.0, 1.0], False), x)
    # Grey images have no RGB components: no lighting.
    grey = torch.full((3, 1, 4, 4), 0.5)
    assert torch.equal(augment(grey, torch.Generator().manual_seed(0), [1.0, 1.0], False, lighting=0.1), grey)


def _reference_jitter(img, factors, order):
    """Minimax misc/utils.py l.231–289 on one CHW image: Brightness, Contrast and Saturation each `img.lerp(target,
    a)` with a = 1 − factor, applied in `order` (the reference shuffles them per call, l.286); no clipping."""

    def grey(v):
        g = v.clone()
        g[0] = v[0] * 0.299 + v[1] * 0.587 + v[2] * 0.114
        g[1], g[2] = g[0], g[0]
        return g

    targets = [lambda v: torch.zeros_like(v), lambda v: torch.full_like(v, grey(v)[0].mean().item()), grey]
    for k in order:
        img = img.lerp(targets[k](img), 1 - factors[k].item())
    return img


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_colour_jitter_is_the_references_in_every_order(order):
    x, factors = torch.rand(3, 3, 5, 5), torch.rand(3, 3) * 0.8 + 0.6
    ours = jitter_colours(x, factors, torch.tensor([order] * 3))
    for i in range(3):
        assert torch.allclose(ours[i], _reference_jitter(x[i], factors[i], order), atol=1e-5)
    if order == (0, 1, 2):  # the fixed order, what fashion-mnist's rows were trained with
        assert torch.allclose(jitter_colours(x, factors), ours, atol=1e-6)


def test_random_order_jitters_and_leaves_values_unclipped():
    x = torch.rand(64, 3, 8, 8)
    fixed = augment(x, torch.Generator().manual_seed(1), [0.5, 1.0], True, 0.4)
    shuffled = augment(x, torch.Generator().manual_seed(1), [0.5, 1.0], True, 0.4, jitter_order="random", clip=False)
    assert fixed.min() >= 0 and fixed.max() <= 1 and (shuffled.max() > 1 or shuffled.min() < 0)
    assert not torch.allclose(fixed, shuffled.clamp(0, 1))


def test_a_test_view_is_never_smaller_than_its_crop():
    """A resize without a crop size, or a crop larger than the resized image, is refused rather than silently
    testing on a strip of the image."""
    with pytest.raises(ValueError, match="test_resize: needs input_size"):
        P.SoftLabel(test_resize=200)
    with pytest.raises(ValueError, match="resize must be at least the crop"):
        resize_center_crop(torch.rand(1, 3, 256, 256), 200, 224)
