"""MGD3: k-means modes of the class's latents, the mode term λσ_t(m − x̂_0) on DiT's DDPM while the step index is above
stop_t, then plain guided DDPM; end to end on the tiny latent DiT + VAE, its defaults pinned to the code MGD3's
sampler is read from (AyushRoy2001/ManifoldGD, which carries it; no official code is stored), each suite's settings."""

import dataclasses

import pytest
import torch
from sklearn.cluster import KMeans

from harness.config.loader import load_suite
from harness.models.generators.sampling import ddpm_posterior, ddpm_sample, respaced_schedule
from methods import get_method
from methods.base import MethodContext
from methods.mgd3 import MGD3Config, mode_centres, mode_guided_ddpm
from tests.factories import random_real, tiny_latent_dit, tiny_suite_raw, tiny_task, write_suite

IMAGENET_SUITES = ["imagenet", "imagenette", "imagewoof", "imageidc", "imagenet-100"]


def _task(ipc, seed=5, n_real=24, label=3, channels=3, size=8):
    return tiny_task(ipc, seed, label, random_real(n_real, label, channels, size), channels, size)


def _method(**overrides):
    config = dataclasses.replace(MGD3Config(), **{"steps": 4, "stop_t": 1, **overrides})
    return get_method("mgd3")(config, MethodContext(backbone=tiny_latent_dit()))


def test_defaults_are_the_references():
    cfg = MGD3Config()
    # ManifoldGD sample_mode_guidance.py: parser `--mode_guidance_scale` default 0.1, `--cfg-scale` default 4.0;
    # scripts/nette_mgd.sh and woof_mgd.sh: T=50 (--num-sampling-steps), T_SG=25 (--stop_t), METHOD=ddpm.
    assert cfg.mode_guidance_scale == 0.1
    assert (cfg.stop_t, cfg.steps) == (25, 50)
    assert cfg.cfg_scale == 4.0
    assert cfg.fixed_variance == "large"  # DiT's FIXED_LARGE; DiT-XL/2 learns its variance and never reads it
    for bad in ({"stop_t": 50}, {"stop_t": -1}, {"mode_guidance_scale": -0.1}, {"steps": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            dataclasses.replace(cfg, **bad)


def test_modes_are_the_kmeans_centres_of_the_class_latents():
    method, task = _method(), _task(4)
    latents = method.encode_real(task)
    torch.testing.assert_close(latents, method.backbone.encode(task.real.float() / 255))
    random_state = int(torch.randint(0, 2**31 - 1, (1,), generator=task.generator()))
    km = KMeans(n_clusters=4, random_state=random_state, n_init="auto").fit(latents.flatten(1).double().numpy())
    expected = torch.from_numpy(km.cluster_centers_).float().view(4, 4, 4, 4)
    torch.testing.assert_close(method.modes(task), expected)
    # A centre is the mean of its members (k-means run to convergence).
    labels = torch.from_numpy(km.labels_)
    for c in range(4):
        torch.testing.assert_close(expected[c], latents[labels == c].mean(0), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cannot make"):
        mode_centres(torch.randn(3, 4), 5, 0)


def _seeds(n):
    return [torch.Generator().manual_seed(100 + k) for k in range(n)]


def test_the_mode_term_is_added_to_each_step_above_stop_t_and_only_there():
    bb = tiny_latent_dit()
    noise = torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    modes = torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(1))
    steps, cfg, lam = 4, 4.0, 0.5
    out = mode_guided_ddpm(bb, noise, 3, modes, steps, cfg, lam, 1, _seeds(2))
    # By hand: DiT's ancestral step, plus λ·σ_i·(m − x̂_0) at i = 3 and 2 (> stop_t 1), none at 1 and 0.
    schedule, gens, labels = respaced_schedule(bb.betas, steps), _seeds(2), torch.full((2,), 3)
    x = noise
    for i in reversed(range(steps)):
        mean, x0, log_var = ddpm_posterior(bb, schedule, x, i, labels, cfg)
        if i == 0:
            x = mean
            break
        sigma = (0.5 * log_var).exp()
        x = mean + sigma * torch.stack([torch.randn((4, 4, 4), generator=g) for g in gens])
        if i > 1:
            x = x + lam * sigma * (modes - x0)
    torch.testing.assert_close(out, x)
    # λ = 0, or the stop at the chain's first index, is DiT's plain DDPM from the same noise and step seeds.
    plain = ddpm_sample(bb, noise, 3, steps, cfg, _seeds(2))
    torch.testing.assert_close(mode_guided_ddpm(bb, noise, 3, modes, steps, cfg, 0.0, 1, _seeds(2)), plain)
    torch.testing.assert_close(mode_guided_ddpm(bb, noise, 3, modes, steps, cfg, lam, steps - 1, _seeds(2)), plain)
    assert not torch.allclose(out, plain)


def test_mode_guidance_pulls_each_sample_toward_its_own_mode_the_more_steps_it_guides():
    # A model that predicts no noise (its output projection zeroed), so the chain's drift is known and the term's
    # sign shows: toward m, λ = 0.1 (the reference's), every image, and more so the more steps carry the term.
    bb = tiny_latent_dit()
    for p in bb.transformer.proj_out_2.parameters():
        p.data.zero_()
    noise = torch.randn((3, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    modes = torch.randn((3, 4, 4, 4), generator=torch.Generator().manual_seed(1))

    def distance(lam, stop_t):
        out = mode_guided_ddpm(bb, noise, 3, modes, 10, 4.0, lam, stop_t, _seeds(3))
        return (out - modes).flatten(1).norm(dim=1)

    plain, half, whole = distance(0.0, 0), distance(0.1, 5), distance(0.1, 0)
    assert (whole < half).all() and (half < plain).all()


def test_mgd3_end_to_end_is_deterministic_per_seed():
    method = _method()
    task = _task(3)
    a = method.distill_class(task)
    assert a.shape == (3, 3, 8, 8) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, method.distill_class(_task(3)))
    assert not torch.equal(a, method.distill_class(_task(3, seed=6)))
    # Each image's step noise has its own seed: the memory knob changes no image.
    torch.testing.assert_close(_method(batch_size=1).distill_class(_task(3)), a, atol=1e-5, rtol=0)
    assert method.distill_class(_task(2, channels=1, size=6)).shape == (2, 1, 6, 6)
    # The images are the mode-guided chain's, decoded: the draws are k-means' seed, the noise, the step seeds.
    gen = task.generator()
    torch.randint(0, 2**31 - 1, (1,), generator=gen)
    noise = torch.randn((3, 4, 4, 4), generator=gen)
    seeds = torch.randint(0, 2**62, (3,), generator=gen).tolist()
    z = mode_guided_ddpm(
        method.backbone, noise, 3, method.modes(task), 4, 4.0, 0.1, 1, [torch.Generator().manual_seed(s) for s in seeds]
    )
    torch.testing.assert_close(a, method.backbone.decode(z))


def test_work_counts_guided_steps_and_the_encodes():
    work = get_method("mgd3").work(MGD3Config(), ipc=10, real_per_class=1300)
    assert (work.backbone, work.vae) == (10 * 50 * 2, 1300 + 10)


@pytest.mark.parametrize("name", IMAGENET_SUITES)
def test_imagenet_family_runs_mgd3_at_the_reference_settings(name):
    assert load_suite(name, check_files=False).method_config("mgd3") == MGD3Config()


def test_fashion_mnist_runs_mgd3_at_the_backbones_guidance_and_half_the_chain_guided():
    suite = load_suite("fashion-mnist", "leaderboard", check_files=False)
    cfg, diffusion = suite.method_config("mgd3"), suite.method_config("diffusion")
    assert (cfg.cfg_scale, cfg.steps) == (diffusion.cfg_scale, diffusion.steps) == (2.0, 25)
    # The reference guides indices 49 … 26 of 50 (24 steps); here 24 … 13 of 25 (12 steps).
    assert cfg.stop_t == 12 and cfg.mode_guidance_scale == 0.1
    # This backbone learns no variance: the posterior's β̃, not β, whose noise stayed in the images.
    assert cfg.fixed_variance == "small"


def test_a_backbone_without_learned_variance_steps_with_beta_or_the_posteriors_beta_tilde():
    fixed = tiny_latent_dit()
    fixed.learned_variance = False
    schedule = respaced_schedule(fixed.betas, 4)
    x = torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    labels = torch.full((2,), 3)
    _, _, large = ddpm_posterior(fixed, schedule, x, 2, labels, 4.0)
    _, _, small = ddpm_posterior(fixed, schedule, x, 2, labels, 4.0, small_variance=True)
    torch.testing.assert_close(large, schedule.betas.log()[2].float().expand_as(x))
    torch.testing.assert_close(small, schedule.posterior_log_variance_clipped[2].float().expand_as(x))
    assert (small < large).all()
    # A model that learns its variance ignores the choice (DiT-XL/2's runs are unchanged by it).
    learned = tiny_latent_dit()
    torch.testing.assert_close(
        ddpm_posterior(learned, schedule, x, 2, labels, 4.0)[2],
        ddpm_posterior(learned, schedule, x, 2, labels, 4.0, small_variance=True)[2],
    )
    with pytest.raises(ValueError, match="fixed_variance"):
        MGD3Config(fixed_variance="medium")


def test_the_stop_guidance_ablation_keeps_the_mode_term_to_the_end(tmp_path):
    """mgd3-no-stop: the mode term on every step but the last (stop_t 0), on DiT-XL/2 and on the pixel DiT alike —
    a generator's defaults (mgd3's stop at 12 of 25 on the pixel DiT) never override a variant's own; and its search
    cannot switch the stop back on."""
    variant = get_method("mgd3-no-stop")
    assert variant.family == "mgd3" and variant.default_config().stop_t == 0
    assert "stop_t" not in variant.search_space and "stop_t" in get_method("mgd3").search_space
    raw = tiny_suite_raw()
    raw.update(methods={"mgd3": {}, "mgd3-no-stop": {}})
    raw.pop("cross_arch", None)
    pixel = load_suite(str(write_suite(raw, tmp_path / "pixel.yaml")), check_files=False)
    assert pixel.backbone.kind == "pixel-dit"
    assert (pixel.method_config("mgd3").stop_t, pixel.method_config("mgd3-no-stop").stop_t) == (12, 0)
    suite = load_suite("fashion-mnist", "leaderboard", check_files=False)
    base, ablated = suite.method_config("mgd3"), suite.method_config("mgd3-no-stop")
    assert (base.stop_t, ablated.stop_t) == (12, 0)
    assert dataclasses.replace(ablated, stop_t=12) == base  # the one difference
    for name in ("imagenet", "imagenet-100", "imagenette", "imagewoof", "imageidc"):
        assert load_suite(name, check_files=False).method_config("mgd3-no-stop").stop_t == 0, name
