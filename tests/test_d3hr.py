"""D3HR: the reference's guided DDIM inversion to the Gaussian domain, a per-dimension Gaussian over the class, group
sampling by its score (mean, std and skewness terms), guided DDIM back from one step above; end to end on the tiny
latent DiT + VAE, its defaults pinned to lin-zhao-resoLve/D3HR, each suite's settings."""

import dataclasses

import pytest
import torch

from harness.config.loader import load_suite
from harness.models.generators.sampling import ddim_sample, ddim_timesteps
from methods import get_method
from methods.base import MethodContext, draw_real
from methods.d3hr import D3HRConfig, d3hr_invert, group_sampling, group_scores
from tests.factories import random_real, tiny_latent_dit, tiny_task

IMAGENET_SUITES = ["imagenet", "imagenette", "imagewoof", "imageidc", "imagenet-100"]


def _task(ipc, seed=5, n_real=24, label=3, channels=3, size=8):
    return tiny_task(ipc, seed, label, random_real(n_real, label, channels, size), channels, size)


TINY = {"steps": 4, "domain_steps": 2, "sampling_start_step": 1, "group_batches": 3, "groups_per_batch": 40}


def _method(**overrides):
    config = dataclasses.replace(D3HRConfig(), **{**TINY, **overrides})
    return get_method("d3hr")(config, MethodContext(backbone=tiny_latent_dit()))


def test_defaults_are_the_references():
    cfg = D3HRConfig()
    # dit_inversion_save_statistic.py l.28 (`sample`) and l.142 (`invert`): guidance_scale=4.0, neither overridden
    # by their callers (l.424; group_sampling.py l.353-360); l.424 and group_sampling.py l.358: 50 steps.
    assert (cfg.cfg_scale, cfg.steps) == (4.0, 50)
    # group_sampling.py l.285: --i_step 6 of the latents `invert` stores at i > 23 (l.240): i = 30, t = 600.
    assert cfg.domain_steps == 24 + 6
    # group_sampling.py l.280: --start_step 18 of the descending 50-step schedule, t = 980 − 18·20 = 620.
    assert cfg.sampling_start_step == 18
    assert ddim_timesteps(1000, 50)[cfg.sampling_start_step] == 620
    # group_sampling.py l.290 --m 100000; l.329 `range(args.m//10)` batches of l.331
    # `select_algorithm_batch(10000, ...)`.
    assert (cfg.group_batches, cfg.groups_per_batch) == (100000 // 10, 10000)
    assert cfg.skew_weight == 0.1  # l.226: mean_diff + std_diff + 0.1 * skew_diff
    assert cfg.max_inverted is None  # dit_inversion_save_statistic.py l.414-424: every image of the class
    for bad in ({"domain_steps": 50}, {"domain_steps": 0}, {"sampling_start_step": 50}, {"max_inverted": 1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            dataclasses.replace(cfg, **bad)


def test_inversion_is_the_references_update():
    bb = tiny_latent_dit()
    x = torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    ac = bb.alphas_cumprod
    # dit_inversion_save_statistic.py l.223-231 at 4 steps (stride 250): to t = 250 from 0, then to 500 from 250,
    # the guided noise told the target timestep.
    expected = x
    for current, t in ((0, 250), (250, 500)):
        eps = bb.eps_cfg(expected, torch.tensor(t), torch.full((2,), 3), 4.0)
        expected = (expected - (1 - ac[current]).sqrt() * eps) * (ac[t].sqrt() / ac[current].sqrt()) + (
            1 - ac[t]
        ).sqrt() * eps
    torch.testing.assert_close(d3hr_invert(bb, x, 3, 4, 4.0, 2), expected)


def _reference_scores(samples, mean, std, skew_weight=0.1):
    """group_sampling.py l.170-177 and l.213-227, as written there."""
    sample_mean = torch.mean(samples, dim=1)
    mean_diff = torch.norm(sample_mean - mean, dim=1)
    sample_std = torch.std(samples, dim=1)
    std_diff = torch.norm(sample_std - std, dim=1)
    m = torch.mean(samples, dim=1, keepdim=True)
    s = torch.std(samples, dim=1, keepdim=True)
    n = samples.size(2)
    skew = torch.sum(((samples - m) / s) ** 3, dim=2) * (n / ((n - 1) * (n - 2)))
    return mean_diff + std_diff + skew_weight * torch.norm(skew, dim=1)


def test_group_scores_are_the_references_and_the_best_group_is_kept():
    gen = torch.Generator().manual_seed(0)
    mean, std = torch.randn(16, generator=gen), torch.rand(16, generator=gen) + 0.5
    groups = mean + std * torch.randn((50, 5, 16), generator=gen)
    torch.testing.assert_close(group_scores(groups, mean, std, 0.1), _reference_scores(groups, mean, std))
    # A dimension the Gaussian holds constant adds nothing to the skew (the reference's 0/0 would make it NaN).
    flat = groups.clone()
    flat[:, :, 3] = mean[3]
    assert torch.isfinite(group_scores(flat, mean, std, 0.1)).all()
    # A group of one: the mean term alone.
    torch.testing.assert_close(group_scores(groups[:, :1], mean, std, 0.1), (groups[:, 0] - mean).norm(dim=1))
    # The best of all batches, each batch drawn from its own seed; a later batch wins only when strictly better.
    best, score = group_sampling(mean, std, 5, [7, 8, 9], 50, 0.1)
    candidates = [mean + std * torch.randn((50, 5, 16), generator=torch.Generator().manual_seed(s)) for s in (7, 8, 9)]
    scores = torch.cat([_reference_scores(c, mean, std) for c in candidates])
    assert score == pytest.approx(float(scores.min()))
    torch.testing.assert_close(best, torch.cat(candidates)[int(scores.argmin())])
    # More candidates never score worse.
    assert group_sampling(mean, std, 5, [7, 8, 9, 10, 11], 50, 0.1)[1] <= score


def test_the_gaussian_is_fitted_to_the_inverted_latents_of_the_class():
    method, task = _method(), _task(3)
    chosen, _ = method._draws(task)
    assert torch.equal(chosen, torch.arange(24))  # every image, as the reference
    mean, std = method.gaussian(task, chosen)
    latents = method.backbone.encode(task.real.float() / 255)
    inverted = d3hr_invert(method.backbone, latents, 3, 4, 4.0, 2).flatten(1)
    torch.testing.assert_close(mean, inverted.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, inverted.std(0), atol=1e-5, rtol=1e-5)
    # The cap draws that many images without replacement, from the task's generator.
    capped = _method(max_inverted=5)
    chosen, _ = capped._draws(task)
    assert torch.equal(chosen, draw_real(task, task.generator(), 5))


def test_d3hr_end_to_end_is_the_best_group_decoded_from_one_step_above():
    method, task = _method(), _task(3)
    out = method.distill_class(task)
    assert out.shape == (3, 3, 8, 8) and 0 <= out.min() and out.max() <= 1
    chosen, seeds = method._draws(task)
    mean, std = method.gaussian(task, chosen)
    group, _ = group_sampling(mean, std, 3, seeds, 40, 0.1)
    z = ddim_sample(method.backbone, group.view(3, 4, 4, 4), 3, 4, 4.0, start_t=500)
    torch.testing.assert_close(out, method.backbone.decode(z))
    assert torch.equal(out, method.distill_class(_task(3)))
    assert not torch.equal(out, method.distill_class(_task(3, seed=6)))
    # The memory knob changes no image; IPC 1 and a grey suite work.
    torch.testing.assert_close(_method(batch_size=2).distill_class(task), out, atol=1e-5, rtol=0)
    assert method.distill_class(_task(1)).shape == (1, 3, 8, 8)
    assert method.distill_class(_task(2, channels=1, size=6)).shape == (2, 1, 6, 6)


def test_work_counts_the_inversion_and_the_denoising():
    cls = get_method("d3hr")
    work = cls.work(D3HRConfig(), ipc=10, real_per_class=1300)
    assert work.backbone == (1300 * 30 + 10 * (50 - 18)) * 2 and work.vae == 1300 + 10
    capped = cls.work(D3HRConfig(max_inverted=500), ipc=10, real_per_class=1300)
    assert capped.backbone == (500 * 30 + 10 * 32) * 2
    assert cls.real_images_needed(D3HRConfig(), 1) == 2


@pytest.mark.parametrize("name", IMAGENET_SUITES)
def test_imagenet_family_runs_d3hr_at_the_reference_settings_but_one_batch_of_groups(name):
    cfg = load_suite(name, check_files=False).method_config("d3hr")
    assert cfg == dataclasses.replace(D3HRConfig(), group_batches=1)


def test_fashion_mnist_runs_d3hr_at_the_backbones_guidance_with_its_cost_bounded():
    suite = load_suite("fashion-mnist", "leaderboard", check_files=False)
    cfg, diffusion = suite.method_config("d3hr"), suite.method_config("diffusion")
    assert (cfg.cfg_scale, cfg.steps) == (diffusion.cfg_scale, diffusion.steps) == (2.0, 25)
    # The Gaussian at the reference's t = 600, denoising from one step above (t = 640), as the reference pairs them.
    assert cfg.domain_steps * 1000 // 25 == 600
    assert ddim_timesteps(1000, 25)[cfg.sampling_start_step] == 640
    assert (cfg.max_inverted, cfg.group_batches, cfg.groups_per_batch) == (500, 10, 1000)


def test_the_group_sampling_ablation_keeps_one_unscored_draw():
    """d3hr-one-group: one batch of one candidate group, so group sampling returns the Gaussian's first draw as is."""
    variant = get_method("d3hr-one-group")
    config = variant.default_config()
    assert variant.family == "d3hr" and (config.group_batches, config.groups_per_batch) == (1, 1)
    mean, std = torch.randn(12), torch.rand(12) + 0.1
    group, _ = group_sampling(mean, std, 3, [7], 1, config.skew_weight)
    z = torch.randn((1, 3, 12), generator=torch.Generator().manual_seed(7))
    assert torch.equal(group, (mean + std * z)[0])
    suite = load_suite("fashion-mnist", "leaderboard", check_files=False)
    base, ablated = suite.method_config("d3hr"), suite.method_config("d3hr-one-group")
    assert dataclasses.replace(ablated, group_batches=10, groups_per_batch=1000) == base  # the one difference
