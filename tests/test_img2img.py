"""Image-to-image on the Backbone protocol: diffusers' strength convention, strength 0 returns the input,
strength 1 is plain sampling, latents in directly, the step hook, determinism."""

import pytest
import torch
from diffusers import DDIMScheduler

from harness.models.generators.sampling import ddim_sample, fit_to_backbone, img2img, img2img_start, img2img_timesteps
from tests.factories import tiny_latent_dit


def _inputs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randn(n, 4, 4, 4, generator=g)


@pytest.mark.parametrize("steps,strength", [(50, 0.7), (25, 0.7), (10, 0.35), (12, 0.5), (50, 1.0), (7, 0.0)])
def test_timesteps_follow_diffusers_img2img(steps, strength):
    # diffusers' img2img pipelines: init_timestep = min(int(steps · strength), steps), then the scheduler's
    # timesteps from index steps − init_timestep on; the harness's DDIM uses the same "leading" spacing.
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing="leading")
    scheduler.set_timesteps(steps)
    init = min(int(steps * strength), steps)
    expected = scheduler.timesteps[steps - init :].tolist()
    assert img2img_timesteps(1000, steps, strength) == expected
    assert len(img2img_timesteps(1000, 50, 0.7)) == 35 and img2img_timesteps(1000, 50, 0.7)[0] == 680
    with pytest.raises(ValueError, match="strength"):
        img2img_timesteps(1000, 10, 1.5)


def test_strength_zero_returns_the_input():
    bb = tiny_latent_dit()
    images, noise = _inputs()
    assert torch.equal(img2img(bb, 3, noise, 0.0, 4.0, 10, images=images), images)
    # Latents in (D4M's prototypes): no step runs, the latents are decoded as they are.
    z = torch.randn(3, 4, 4, 4)
    torch.testing.assert_close(img2img(bb, 3, noise, 0.0, 4.0, 10, latents=z), bb.decode(z))


def test_strength_one_is_plain_sampling_from_the_same_noise():
    bb = tiny_latent_dit()
    images, noise = _inputs()
    plain = bb.decode(ddim_sample(bb, noise, 3, steps=6, cfg_scale=2.5))
    assert torch.equal(img2img(bb, 3, noise, 1.0, 2.5, 6, images=images), plain)
    # … whatever the input was.
    assert torch.equal(img2img(bb, 3, noise, 1.0, 2.5, 6, images=torch.rand(3, 3, 8, 8)), plain)


def test_intermediate_strength_noises_the_encoding_and_runs_the_rest():
    bb = tiny_latent_dit()
    images, noise = _inputs()
    z0 = bb.encode(images)
    start, ts = img2img_start(bb, z0, noise, 0.5, 10)
    assert ts == [400, 300, 200, 100, 0]
    a = bb.alphas_cumprod[400]
    torch.testing.assert_close(start, a.sqrt() * z0 + (1 - a).sqrt() * noise)
    out = img2img(bb, 3, noise, 0.5, 3.0, 10, images=images)
    torch.testing.assert_close(out, bb.decode(ddim_sample(bb, start, 3, 10, 3.0, start_t=400)))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, img2img(bb, 3, noise.clone(), 0.5, 3.0, 10, images=images.clone()))
    assert not torch.equal(out, img2img(bb, 3, noise, 0.5, 1.0, 10, images=images))  # guidance matters
    assert not torch.equal(out, img2img(bb, 4, noise, 0.5, 3.0, 10, images=images))  # so does the class
    # Images and their latents are the same start.
    torch.testing.assert_close(out, img2img(bb, 3, noise, 0.5, 3.0, 10, latents=z0))
    with pytest.raises(ValueError, match="either"):
        img2img(bb, 3, noise, 0.5, 3.0, 10)


def test_step_hook_sees_every_step_and_changes_the_result():
    bb = tiny_latent_dit()
    images, noise = _inputs()
    seen = []

    def hook(x, i, t):
        seen.append((i, t))
        return x + 0.01

    hooked = img2img(bb, 3, noise, 0.7, 2.0, 10, images=images, step_hook=hook)
    assert seen == list(enumerate(img2img_timesteps(1000, 10, 0.7)))
    assert not torch.equal(hooked, img2img(bb, 3, noise, 0.7, 2.0, 10, images=images))


def test_fit_to_backbone_matches_channels_and_size():
    bb = tiny_latent_dit()  # RGB, 8 px
    grey = torch.rand(2, 1, 6, 6)
    out = fit_to_backbone(grey, bb)
    assert out.shape == (2, 3, 8, 8) and out.min() >= 0 and out.max() <= 1
    rgb = torch.rand(2, 3, 8, 8)
    assert fit_to_backbone(rgb, bb) is rgb
