"""IGD: the reference's defaults pinned; the guidance window on the chain; the influence and deviation guidance end
to end on the tiny latent DiT + VAE and a tiny teacher (the guidance changes the samples, its gradient is finite,
without it the sampler is DiT's); the real gradient; what the plan and the rehearsal count; the suites listing it."""

import dataclasses
import re

import pytest
import torch

from harness.config.loader import load_suite
from harness.models.generators.sampling import sample
from harness.pipeline import Run
from harness.stages.rehearsal import RehearsalModels, rehearse_method
from methods import get_method
from methods.base import MethodContext, fit_to_task
from methods.igd import IGDConfig, guided_positions, parameter_gradient
from tests.factories import random_real, tiny_latent_dit, tiny_task, tiny_teacher

IMAGENET_FAMILY = ("imagenet", "imagenet-100", "imagewoof", "imagenette", "imageidc")


@pytest.fixture(scope="module")
def context():
    return MethodContext(backbone=tiny_latent_dit(), teacher=tiny_teacher())


def _task(ipc=2, seed=5, label=3, n_real=24):
    return tiny_task(ipc, seed, label, random_real(n_real, label))


def _igd(context, name="igd", **overrides):
    cls = get_method(name)
    return cls(dataclasses.replace(cls.default_config(), **{"steps": 4, **overrides}), context)


def test_defaults_are_the_references():
    cfg = IGDConfig()
    # mchen725/DD_IGD sample_mp.sh l.3 `k=5`, l.12 `gamma=120`, l.4 `low=30`, l.5 `high=45`, l.6 `gi=200`.
    assert (cfg.gm_scale, cfg.dev_scale, cfg.low, cfg.high, cfg.grad_ipc) == (5.0, 120.0, 30, 45, 200)
    # sample.py: `--cfg-scale` 4.0, `--num-sampling-steps` 50, `--memory-size` 64; main(): `batch_size = 1`, DiT's
    # `p_sample_loop`; get_grads(): `gap = 50`; sample_mp.sh l.18 `--ckpt pretrained_models/DiT-XL-2-256x256.pt`.
    assert (cfg.cfg_scale, cfg.steps, cfg.memory_size, cfg.batch_size, cfg.sampler) == (4.0, 50, 64, 1, "ddpm")
    assert cfg.real_batch_size == 50 and cfg.fine_tune is False
    # sample_mp_minimax.sh l.3 `k=10`, l.12 `gamma=100`, l.18 `--ckpt path/to/minimax/checkpoint`.
    minimax = get_method("igd-minimax").default_config()
    assert (minimax.gm_scale, minimax.dev_scale, minimax.fine_tune) == (10.0, 100.0, True)
    with pytest.raises(ValueError, match="low <= high"):
        IGDConfig(low=40, high=30)
    with pytest.raises(ValueError, match="gm_scale"):
        IGDConfig(gm_scale=-1.0)


def test_igd_minimax_samples_the_fine_tune_minimax_makes():
    suite = load_suite("imagewoof", check_files=False)
    igd = get_method("igd-minimax").fine_tuning(suite.method_config("igd-minimax"))
    assert igd is not None and igd == get_method("minimax").fine_tuning(suite.method_config("minimax"))
    assert get_method("igd").fine_tuning(suite.method_config("igd")) is None


def test_the_window_is_counted_on_the_references_50_step_chain():
    assert guided_positions(IGDConfig()) == list(range(30, 46))  # 16 of 50 steps
    assert guided_positions(IGDConfig(steps=25)) == list(range(15, 23))  # 2·i in [30, 45]
    assert guided_positions(IGDConfig(steps=3)) == [2]  # the rehearsal's steps: one guided, two not
    assert guided_positions(IGDConfig(steps=4)) == [3]


def test_the_real_gradient_is_the_mean_over_the_drawn_images(context):
    method, task = _igd(context), _task()
    params = method.surrogate_parameters()
    whole = method.real_gradient(task, params, task.generator())
    in_sevens = _igd(context, real_batch_size=7).real_gradient(task, params, task.generator())
    torch.testing.assert_close(whole, in_sevens, rtol=1e-4, atol=1e-6)
    # All 24 of the class's images (fewer than grad_ipc): the mean of their parameter gradients.
    images = task.real.float() / 255
    each = torch.stack([parameter_gradient(context.teacher, params, x[None], task.label, False) for x in images])
    torch.testing.assert_close(whole, each.mean(0), rtol=1e-4, atol=1e-6)
    # The shared teacher is left frozen.
    assert not any(p.requires_grad for p in context.teacher.parameters())


def test_the_guidance_gradient_is_finite_and_moves_towards_the_real_gradient(context):
    method, task = _igd(context, dev_scale=0.0), _task()
    params = method.surrogate_parameters()
    real = method.real_gradient(task, params, task.generator())
    cond_fn = method.guidance(task, params, real, memory=None)
    bb = context.backbone
    x = torch.randn((1, *bb.latent_shape), generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    gradient = cond_fn(x, x * 0.9)  # x̂_0 a function of x, as a sampler step's is
    assert gradient.shape == x.shape and torch.isfinite(gradient).all() and gradient.abs().sum() > 0

    def influence(z):
        with torch.enable_grad():
            g = parameter_gradient(context.teacher, params, fit_to_task(bb.decode(z * 0.9), task), task.label, False)
        return torch.nn.functional.cosine_similarity(g, real, dim=0)

    # A small step along the gradient raises the influence term (gradient ascent on G = k · I here).
    step = 1e-2 / gradient.abs().max()
    assert influence(x.detach() + step * gradient) > influence(x.detach())


def test_guidance_changes_the_samples_and_without_it_the_sampler_is_dits(context):
    task = _task(ipc=3)
    guided = _igd(context).distill_class(task)
    plain = _igd(context, gm_scale=0.0, dev_scale=0.0).distill_class(task)
    assert guided.shape == (3, 3, 8, 8) and torch.isfinite(guided).all()
    assert (guided - plain).abs().max() > 1e-3
    # Unguided, each image is DiT's DDPM from the same noise bank and step seed, drawn in the same order.
    bb, gen = context.backbone, task.generator()
    noise = torch.randn((3, *bb.latent_shape), generator=gen)
    seeds = torch.randint(0, 2**62, (3,), generator=gen).tolist()
    expected = torch.cat(
        [bb.decode(sample(bb, noise[i : i + 1], task.condition, 4, 4.0, "ddpm", seeds[i : i + 1])) for i in range(3)]
    )
    torch.testing.assert_close(plain, expected, rtol=1e-4, atol=1e-5)
    # The same on the DDIM sampler (the fashion board's).
    ddim_plain = _igd(context, gm_scale=0.0, dev_scale=0.0, sampler="ddim").distill_class(task)
    torch.testing.assert_close(
        ddim_plain, bb.decode(sample(bb, noise, task.condition, 4, 4.0, "ddim")), rtol=1e-4, atol=1e-5
    )
    assert (_igd(context, sampler="ddim").distill_class(task) - ddim_plain).abs().max() > 1e-3


def test_the_deviation_term_pushes_from_the_earlier_samples_only(context):
    task = _task(ipc=2)
    deviation = _igd(context, gm_scale=0.0).distill_class(task)
    plain = _igd(context, gm_scale=0.0, dev_scale=0.0).distill_class(task)
    # The first image has no earlier one in the memory: unguided. The second is pushed from the first.
    torch.testing.assert_close(deviation[0], plain[0])
    assert (deviation[1] - plain[1]).abs().max() > 1e-3


def test_the_plan_counts_the_backward_of_the_guided_steps():
    igd, diffusion = get_method("igd"), get_method("diffusion")
    cfg = igd.default_config()
    work = igd.work(cfg, 10, 1300)
    guided = 16
    # Every step's two passes, and for a guided step their backward (two evaluations each).
    assert work.backbone == 10 * 2 * (50 + 2 * guided)
    assert work.backbone > diffusion.work(diffusion.default_config(), 10, 1300).backbone
    assert work.vae == 10 * (1 + 3 * guided)  # the final decode; x̂_0's decode and its backward per guided step
    assert work.teacher == 3 * 200 + 10 * guided * 9


def test_the_imagenet_plan_prices_igd(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path / "absent"))
    suite = load_suite("imagenet", check_files=False)
    text = Run(suite, ["igd", "igd-minimax"], tmp_path).plan(8, 25.0)
    for name in ("igd", "igd-minimax"):
        row = re.search(rf"^  {name} +(\d+) +(\d+) +([\d,]+) +([\d,]+) ", text, re.M)
        images = sum(suite.ipcs) * 1000
        assert row and int(row.group(3).replace(",", "")) == images
        assert int(row.group(4).replace(",", "")) == images * 2 * (50 + 2 * 16)
    assert "fine-tunes the backbone for igd-minimax" in text


def test_the_rehearsal_measures_each_stage_with_the_guidance_backward():
    models = RehearsalModels(tiny_latent_dit(), tiny_teacher(), None, 8, 3, 10)
    figures = rehearse_method("igd", get_method("igd").default_config(), models, log=lambda _: None)
    stages = figures["stages"]
    assert {"real-gradients", "sample", "guidance", "decode"} <= set(stages)
    # A guided step runs the unguided step's two passes, then back through them, the VAE and the teacher twice.
    assert stages["guidance"]["flops_per_image"] > 3 * stages["sample"]["flops_per_image"]
    for fig in stages.values():
        one, two = fig["peak_bytes"]
        assert two >= one > 0


def test_the_suites_list_it():
    for name in IMAGENET_FAMILY:
        suite = load_suite(name, check_files=False)
        assert {"igd", "igd-minimax"} <= set(suite.methods), name
    board = load_suite("fashion-mnist", "leaderboard", check_files=False)
    assert "igd" in board.methods
    reported = {
        (e.table, e.ipc): e.accuracy
        for e in load_suite("imagenet", check_files=False).reported.entries
        if e.method == "igd" and e.paper == "CaO2"
    }
    assert reported == {("Table 6 (appendix 7.1)", 10): 45.5, ("Table 6 (appendix 7.1)", 50): 59.8}
