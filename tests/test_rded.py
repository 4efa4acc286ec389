"""RDED on real Fashion-MNIST images and a tiny teacher: the stitched images hold exactly the chosen crops, the
chosen crops are the teacher's best-scoring ones (against a brute-force scoring, one crop at a time), the
teacher is read over all its outputs, the draws are deterministic, the no-stitch ablation, and the reference's
settings pinned in the defaults and the suites."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from harness.config.loader import load_suite
from methods import get_method
from methods.base import MethodContext
from methods.rded import RDEDConfig, draw_boxes, stitch, true_class_cross_entropy
from tests.factories import real_task, stand_in_prepared, tiny_teacher

LABEL = 7


def _task(tiny_real, ipc=2, seed=3, label=LABEL):
    return real_task(tiny_real, label, ipc, seed)


def _method(name="rded", teacher=None, **overrides):
    cls = get_method(name)
    # 40 candidates of the class's 120 (the tiny suite keeps 120 per class): the draw of candidates is exercised.
    config = dataclasses.replace(cls.default_config(), **{"num_candidates": 40, **overrides})
    return cls(config, MethodContext(relabel_teacher=teacher or tiny_teacher()))


def _cut(image_u8, box, size):
    """One crop by hand: slice the box, resize bilinearly with antialiasing (RandomResizedCrop on a tensor)."""
    top, left, side = box.tolist()
    region = image_u8[None, :, top : top + side, left : left + side].float() / 255
    return F.interpolate(region, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


def _brute_force(teacher, task, candidates, boxes, crop_size):
    """Every candidate's every crop, centred on a canvas of the teacher's mean (zero once normalised), scored one
    at a time by F.cross_entropy on the teacher's raw network: (n, m) cross-entropies."""
    mean = float(teacher.mean.mean())
    out = torch.empty(boxes.shape[:2], dtype=torch.float64)
    for i, c in enumerate(candidates.tolist()):
        for j in range(boxes.shape[1]):
            crop = _cut(task.real[c], boxes[i, j], crop_size)
            canvas = torch.full((1, task.channels, task.image_size, task.image_size), mean)
            off = (task.image_size - crop_size) // 2
            canvas[0, :, off : off + crop_size, off : off + crop_size] = crop
            with torch.no_grad():
                logits = teacher.model(teacher.prepare_input(canvas))
            out[i, j] = F.cross_entropy(logits.double(), torch.tensor([LABEL])).item()
    return out


def test_defaults_are_the_references():
    cfg = RDEDConfig()
    # LINs-lab/RDED at 3f6453d, scripts/imagenet-1k_10ipc_resnet-18_to_resnet-18_cr5.sh lines 4–6 (and every
    # ImageNet-family script): --factor 2, --num-crop 5, --mipc 300; argument.py line 56: factor default 2.
    assert (cfg.factor, cfg.num_crops, cfg.num_candidates) == (2, 5, 300)
    # synthesize/utils.py lines 62–66 (MultiRandomCrop): RandomResizedCrop(size // factor, ratio=(1, 1),
    # antialias=True) with torchvision's default scale (0.08, 1.0).
    assert (cfg.crop_scale_min, cfg.crop_scale_max) == (0.08, 1.0)
    with pytest.raises(ValueError, match="crop scale"):
        RDEDConfig(crop_scale_min=0.5, crop_scale_max=0.4)
    with pytest.raises(ValueError, match="at least 1"):
        RDEDConfig(factor=0)


def test_boxes_are_square_inside_the_image_and_cover_the_drawn_area():
    boxes = draw_boxes(200, 5, 28, 28, (0.08, 1.0), torch.Generator().manual_seed(0))
    top, left, side = boxes.unbind(-1)
    assert (side >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + side <= 28).all() and (left + side <= 28).all()
    area = side.double() ** 2 / 784
    assert area.min() >= 0.06 and area.max() <= 1.0 and area.std() > 0.15  # round(√(784·0.08)) = 8 → 64 px²
    assert torch.equal(boxes, draw_boxes(200, 5, 28, 28, (0.08, 1.0), torch.Generator().manual_seed(0)))


def test_stitched_images_hold_exactly_the_chosen_crops(tiny_real):
    method, task = _method(), _task(tiny_real)
    sel = method.select_crops(task)
    images = method.distill_class(task)
    assert images.shape == (2, 1, 28, 28) and sel.crops.shape == (8, 1, 14, 14)
    # Each chosen crop is its box cut from its real image and resized to 14 × 14 …
    for r in range(8):
        i = int(sel.chosen[r])
        expected = _cut(task.real[sel.candidates[i]], sel.boxes[i, sel.chosen_crop[r]], 14)
        torch.testing.assert_close(sel.crops[r], expected, atol=1e-6, rtol=0)
    # … and image i's quadrant k (row-major) is crop k · IPC + i, as the reference's mix_images tiles them.
    for i in range(2):
        quadrants = [images[i, :, :14, :14], images[i, :, :14, 14:], images[i, :, 14:, :14], images[i, :, 14:, 14:]]
        for k, quadrant in enumerate(quadrants):
            assert torch.equal(quadrant, sel.crops[k * 2 + i])


def test_a_size_the_factor_does_not_divide_gives_the_first_tiles_a_pixel_more(tiny_real):
    method, task = _method(factor=3), _task(tiny_real, ipc=1)
    sel = method.select_crops(task)
    assert sel.crops.shape == (9, 1, 9, 9)  # 28 // 3
    image = method.distill_class(task)[0]
    edges = [0, 10, 19, 28]  # 10, 9, 9: the reference's `remained` goes first
    for k in range(9):
        r, c = divmod(k, 3)
        tile = image[:, edges[r] : edges[r + 1], edges[c] : edges[c + 1]]
        expected = F.interpolate(sel.crops[k : k + 1], size=tile.shape[-2:], mode="nearest")[0]
        assert torch.equal(tile, expected)
    with pytest.raises(ValueError, match="takes 8 crops"):
        stitch(sel.crops[:7], 28, 2, 2)


def test_chosen_crops_are_the_teachers_best_scoring_ones(tiny_real):
    teacher = tiny_teacher()
    method, task = _method(teacher=teacher), _task(tiny_real)
    sel = method.select_crops(task)
    brute = _brute_force(teacher, task, sel.candidates, sel.boxes, 14)
    # The method's scores are the brute-force ones …
    torch.testing.assert_close(sel.cross_entropy, brute[sel.chosen, sel.chosen_crop], atol=1e-5, rtol=0)
    # … each chosen candidate gave its best crop, …
    best, _ = brute.min(1)
    torch.testing.assert_close(brute[sel.chosen, sel.chosen_crop], best[sel.chosen], atol=1e-5, rtol=0)
    # … the chosen are the 8 best candidates (lowest cross-entropy, i.e. highest realism), best first.
    rest = torch.ones(len(best), dtype=torch.bool)
    rest[sel.chosen] = False
    assert best[sel.chosen].max() <= best[rest].min() + 1e-5
    assert (sel.cross_entropy.diff() >= 0).all()
    assert len(set(sel.chosen.tolist())) == 8 and len(sel.candidates) == 40
    assert len(set(sel.candidates.tolist())) == 40  # without replacement


def test_a_pretrained_teacher_is_read_over_all_its_outputs():
    # Twenty outputs, of which the suite's classes are some: the score is the cross-entropy over all twenty at
    # the suite class's column (a crop the teacher calls a non-suite class is not realistic for this class).
    columns = [4, 17, 9, 0, 12, 3, 8, 15, 6, 1]
    teacher = tiny_teacher(num_outputs=20, class_indices=columns)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = teacher.model(teacher.prepare_input(x))
    expected = F.cross_entropy(logits.double(), torch.full((6,), columns[LABEL]), reduction="none")
    torch.testing.assert_close(true_class_cross_entropy(teacher, x, LABEL), expected)
    suite_only = F.cross_entropy(logits[:, columns].double(), torch.full((6,), LABEL), reduction="none")
    assert not torch.allclose(expected, suite_only)


def test_same_task_same_images_another_seed_other_images(tiny_real):
    first = _method().distill_class(_task(tiny_real))
    assert torch.equal(first, _method().distill_class(_task(tiny_real)))
    assert not torch.equal(first, _method().distill_class(_task(tiny_real, seed=4)))


def test_no_stitch_variant_is_factor_one_on_the_same_draws(tiny_real):
    cls = get_method("rded-no-stitch")
    assert cls.family == "rded" and cls.Config is RDEDConfig and cls.defaults == {"factor": 1}
    assert dataclasses.asdict(cls.default_config()) == {**dataclasses.asdict(RDEDConfig()), "factor": 1}
    assert cls.seed_identity(cls.default_config()) == get_method("rded").seed_identity(RDEDConfig())
    teacher = tiny_teacher()
    task = _task(tiny_real)
    plain, stitched = _method("rded-no-stitch", teacher=teacher), _method(teacher=teacher)
    sel, sel2 = plain.select_crops(task), stitched.select_crops(task)
    # The same candidates and crop boxes as rded: the rows differ only in the stitching.
    assert torch.equal(sel.candidates, sel2.candidates) and torch.equal(sel.boxes, sel2.boxes)
    # IPC crops at full size, scored without padding, each an image as it is.
    images = plain.distill_class(task)
    assert sel.crops.shape == images.shape == (2, 1, 28, 28)
    assert torch.equal(images, sel.crops)
    for r in range(2):
        i = int(sel.chosen[r])
        torch.testing.assert_close(
            images[r], _cut(task.real[sel.candidates[i]], sel.boxes[i, sel.chosen_crop[r]], 28), atol=1e-6, rtol=0
        )
    torch.testing.assert_close(true_class_cross_entropy(teacher, images, LABEL), sel.cross_entropy)


def test_too_few_real_images_is_an_error(tiny_real):
    task = dataclasses.replace(_task(tiny_real), real=tiny_real.train.class_images(LABEL)[:7])
    with pytest.raises(ValueError, match="takes one crop from each of 8"):
        _method().distill_class(task)
    # Fewer than num_candidates but enough for IPC · factor²: all of them are candidates.
    sel = _method().select_crops(dataclasses.replace(task, real=tiny_real.train.class_images(LABEL)[:9]))
    assert sorted(sel.candidates.tolist()) == list(range(9))


@pytest.mark.parametrize("name", ["imagenet", "imagenette", "imagewoof", "imageidc", "imagenet-100"])
def test_imagenet_suites_run_rded_as_the_reference(name):
    cfg = load_suite(name, check_files=False).method_config("rded")
    assert cfg == RDEDConfig() and (cfg.factor, cfg.num_crops, cfg.num_candidates) == (2, 5, 300)


def test_fashion_mnist_runs_rded_unstitched_on_the_leaderboard_only():
    cfg = load_suite("fashion-mnist", "leaderboard", check_files=False).method_config("rded")
    # The reference's small-image scripts (CIFAR-10/100, Tiny-ImageNet) pass --factor 1.
    assert (cfg.factor, cfg.num_crops, cfg.num_candidates) == (1, 5, 300)
    assert "rded" not in load_suite("fashion-mnist", check_files=False).methods


def test_rded_scores_with_the_teacher_that_relabels():
    """RDED's observer scores the crops and relabels the students: where a suite names a subset teacher for the
    soft labels, that teacher scores, and its identity keys the set."""

    from harness.stages.distill import method_identity

    assert get_method("rded").needs == frozenset({"relabel_teacher", "real_images"})
    suite = load_suite("fashion-mnist", "leaderboard", check_files=False)
    own = stand_in_prepared(backbone_hash="b", teacher_hash="t", relabel_hash="t", teacher_val_accuracy=None)
    subset = stand_in_prepared(backbone_hash="b", teacher_hash="t", relabel_hash="r", teacher_val_accuracy=None)
    assert method_identity(suite, own, "rded")[1] != method_identity(suite, subset, "rded")[1]
    # Herding still reads the suite's own teacher: the relabelling one does not enter its identity.
    assert method_identity(suite, own, "herding")[1] == method_identity(suite, subset, "herding")[1]
