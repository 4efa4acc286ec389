"""The Backbone protocol: the DiT from_pretrained round trip (tiny DiT + tiny VAE saved to disk, loaded the
way a user loads DiT-XL/2), the pixel DiT trainer, and deterministic sampling."""

import pytest
import torch

from harness.models.generators import ddim_sample, ddim_timesteps, load_dit_backbone
from harness.models.generators.dit import save_dit_backbone
from harness.models.generators.pixel_dit import PixelDiTConfig, train_pixel_dit
from tests.factories import tiny_latent_dit, tiny_pixel_dit_config


def test_dit_from_pretrained_round_trip(tmp_path):
    original = tiny_latent_dit()
    save_dit_backbone(original, tmp_path / "tiny-dit")
    assert {p.name for p in (tmp_path / "tiny-dit").iterdir()} == {"transformer", "vae", "scheduler"}
    loaded = load_dit_backbone(tmp_path / "tiny-dit")
    assert loaded.num_classes == 10 and loaded.null_class == 10
    assert loaded.latent_shape == (4, 4, 4) and loaded.image_size == 8 and loaded.image_channels == 3
    assert not loaded.clip_sample  # latent models are not clipped
    x = torch.randn(3, 4, 4, 4)
    t = torch.tensor([10, 500, 999])
    labels = torch.tensor([0, 5, loaded.null_class])
    with torch.no_grad():
        assert torch.equal(original.eps(x, t, labels), loaded.eps(x, t, labels))
        assert loaded.eps(x, t, labels).shape == x.shape  # the variance half of learn_sigma is dropped
        images = torch.rand(2, 3, 8, 8)
        z = loaded.encode(images)
        assert z.shape == (2, 4, 4, 4) and torch.equal(z, loaded.encode(images))  # posterior mean
        out = loaded.decode(z)
        assert out.shape == (2, 3, 8, 8) and out.min() >= 0 and out.max() <= 1


def test_cfg_combines_conditional_and_null():
    bb = tiny_latent_dit()
    x, t = torch.randn(2, 4, 4, 4), torch.tensor(100)
    with torch.no_grad():
        cond, null = bb.eps(x, t, torch.tensor([3, 3])), bb.eps(x, t, torch.tensor([10, 10]))
        torch.testing.assert_close(bb.eps_cfg(x, t, torch.tensor([3, 3]), 2.5), null + 2.5 * (cond - null))
        torch.testing.assert_close(bb.eps_cfg(x, t, torch.tensor([3, 3]), 1.0), cond)


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 4) == [750, 500, 250, 0]
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 0)


def test_sampling_is_deterministic_and_starts_where_asked():
    bb = tiny_latent_dit()
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    a = ddim_sample(bb, noise, 3, steps=5, cfg_scale=2.0)
    b = ddim_sample(bb, noise.clone(), 3, steps=5, cfg_scale=2.0)
    assert torch.equal(a, b)
    assert not torch.equal(a, ddim_sample(bb, noise, 4, steps=5, cfg_scale=2.0))
    # Starting below every timestep runs no step at all: image-to-image with strength 0.
    assert torch.equal(ddim_sample(bb, noise, 3, steps=5, cfg_scale=2.0, start_t=-1), noise)


def test_pixel_dit_trains_resumes_and_loads(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (64,), generator=g)
    cfg = tiny_pixel_dit_config(checkpoint_every=3)
    straight = train_pixel_dit(images, labels, 3, cfg, tmp_path / "a", tmp_path / "a-work", progress=False)
    # Interrupted after 3 steps (a checkpoint), then resumed: the same weights as training straight through.
    half = PixelDiTConfig(**{**cfg.__dict__, "steps": 3})
    train_pixel_dit(images, labels, 3, half, tmp_path / "b-half", tmp_path / "b-work", progress=False)
    ckpt = torch.load(tmp_path / "b-work" / "checkpoint.pt", weights_only=False)
    ckpt["config"] = cfg.__dict__
    torch.save(ckpt, tmp_path / "b-work" / "checkpoint.pt")
    resumed = train_pixel_dit(images, labels, 3, cfg, tmp_path / "b", tmp_path / "b-work", progress=False)
    for p, q in zip(straight.transformer.parameters(), resumed.transformer.parameters()):
        torch.testing.assert_close(p, q)
    loaded = load_dit_backbone(tmp_path / "a", vae=None)
    assert loaded.vae is None and loaded.clip_sample and loaded.latent_shape == (1, 8, 8)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(
        loaded.eps(x, torch.tensor(5), torch.tensor(1)), straight.eps(x, torch.tensor(5), torch.tensor(1))
    )
    assert torch.equal(loaded.encode(torch.ones(1, 1, 8, 8)), torch.ones(1, 1, 8, 8))  # identity, [-1, 1]
