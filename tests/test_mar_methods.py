"""The methods on MAR (issue 26, item 3): `mar` (plain MAR sampling) and `cao2-mar` (CaO2's pool, selection and
masked latent optimisation on MAR), end to end on a tiny pixel-token MAR saved to disk and loaded through the
generator: shapes, bitwise determinism at the same batch, `mar`'s images being the backbone's samples, CaO2-MAR keeping
the selected pool and changing only its latents, the defaults being Table 5's, and the plan's work."""

import dataclasses

import pytest
import torch

from harness.config.schema import BackboneConfig
from harness.models.generators import generator_for
from harness.models.generators.mar import save_mar_backbone
from methods import get_method
from methods.base import MethodContext, fit_to_task
from methods.cao2 import MAR_CLO_ITERATIONS, MAR_CLO_LR, MAR_CLO_MAX_MASK_RATIO, oss_select, selector_scores
from methods.mar import image_generators
from tests.factories import TINY_PIXEL_MAR, tiny_mar_backbone, tiny_task, tiny_teacher

SAMPLING = {"num_iter": 4, "steps": 3, "cfg": 2.0, "batch_size": 2}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mar") / "pixel-mar"
    save_mar_backbone(tiny_mar_backbone(dataclasses.replace(TINY_PIXEL_MAR, num_classes=10)), folder)
    return generator_for(BackboneConfig(kind="mar", pretrained=str(folder))).load(str(folder))


def _method(name, backbone, teacher=None, **settings):
    cls = get_method(name)
    return cls(dataclasses.replace(cls.default_config(), **settings), MethodContext(backbone=backbone, teacher=teacher))


def _samples(backbone, task, n, **settings):
    s = {**SAMPLING, **settings}
    gens = image_generators(task.generator(), n)
    return backbone.sample(task.condition, gens, num_iter=s["num_iter"], steps=s["steps"], cfg=s["cfg"])


def test_mar_makes_the_backbones_samples_deterministically(backbone):
    task = tiny_task(3, seed=5, label=4, channels=1)
    method = _method("mar", backbone, **SAMPLING)
    images = method.distill_class(task)
    assert images.shape == (3, 1, 8, 8) and images.dtype == torch.float32
    assert torch.equal(images, _method("mar", backbone, **SAMPLING).distill_class(task))
    # The method samples in batches of 2 + 1: against one batch of 3, equal up to the batch's rounding.
    torch.testing.assert_close(images, backbone.decode(_samples(backbone, task, 3)), rtol=1e-5, atol=1e-5)
    # Per-image generators: another batch size rounds differently but draws the same images.
    torch.testing.assert_close(images, _method("mar", backbone, **{**SAMPLING, "batch_size": 3}).distill_class(task))
    assert not torch.equal(images, method.distill_class(dataclasses.replace(task, seed=6)))
    assert get_method("mar").backbone_kind == get_method("cao2-mar").backbone_kind == "mar"


def test_cao2_mar_keeps_the_selected_pool_and_changes_only_its_latents(backbone, monkeypatch):
    import methods.cao2_mar as cao2_mar

    teacher, task = tiny_teacher(), tiny_task(2, seed=3, label=1, channels=3)
    settings = {**SAMPLING, "iterations": 3, "lr": 1e-2}
    seen = []
    original = cao2_mar.optimise_mar_latents

    def spy(bb, latents, label, generators, **kwargs):
        out = original(bb, latents, label, generators, **kwargs)
        seen.append((latents.clone(), out.clone(), kwargs))
        return out

    monkeypatch.setattr(cao2_mar, "optimise_mar_latents", spy)
    images = _method("cao2-mar", backbone, teacher, **settings).distill_class(task)
    assert images.shape == (2, 3, 8, 8) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, _method("cao2-mar", backbone, teacher, **settings).distill_class(task))
    # The pool: 2 × IPC samples from the task's first draws; OSS as cao2.py (most confident correct first).
    gen = task.generator()
    pool = backbone.sample(1, image_generators(gen, 4), num_iter=4, steps=3, cfg=2.0)
    fill = torch.randperm(4, generator=gen)
    p, correct = selector_scores(teacher, fit_to_task(backbone.decode(pool), task), task.label)
    keep = oss_select(p, correct, 2, True, fill)
    selected, optimised, kwargs = seen[0]
    torch.testing.assert_close(selected, pool[keep], rtol=1e-5, atol=1e-5)  # pooled in batches of 2, here of 4
    assert kwargs["condition"] == "zero" and kwargs["max_mask_ratio"] == 0.25 and kwargs["iterations"] == 3
    assert not torch.equal(optimised, selected)
    torch.testing.assert_close(images, fit_to_task(backbone.decode(optimised), task))
    # Without CLO the selected samples are returned as sampled.
    plain = _method("cao2-mar", backbone, teacher, **settings, clo=False).distill_class(task)
    torch.testing.assert_close(plain, fit_to_task(backbone.decode(pool[keep]), task))
    assert len(seen) == 2  # the clo=False run optimised nothing


def test_the_defaults_are_table_5s_and_the_plan_counts_ar_steps():
    mar, cao2 = get_method("mar").default_config(), get_method("cao2-mar").default_config()
    for config in (mar, cao2):
        assert (config.num_iter, config.steps, config.cfg, config.temperature, config.cfg_schedule) == (
            32,
            100,
            2.9,
            1.0,
            "linear",
        )
    assert (cao2.pool_factor, cao2.iterations, cao2.lr, cao2.max_mask_ratio, cao2.linf_weight, cao2.condition) == (
        2,
        MAR_CLO_ITERATIONS,
        MAR_CLO_LR,
        MAR_CLO_MAX_MASK_RATIO,
        10.0,
        "zero",
    )
    # The MAR generator's unit is one AR step of one image: guidance doubles it.
    work = get_method("mar").work(mar, 10, 0)
    assert (work.backbone, work.vae, work.teacher) == (10 * 32 * 2, 10, 0)
    work = get_method("cao2-mar").work(cao2, 10, 0)
    assert (work.backbone, work.vae, work.teacher) == (20 * 32 * 2 + 10 * 100 * 3, 30, 20)
    assert get_method("mar").work(dataclasses.replace(mar, cfg=1.0), 10, 0).backbone == 10 * 32
