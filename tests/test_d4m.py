"""D4M: the prototypes are the mini-batch k-means centres of the class's latents, each starts an img2img sample;
end to end on the tiny latent DiT + VAE; the reference's defaults pinned, and each suite's settings."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import MiniBatchKMeans

from harness.config.loader import load_suite
from harness.models.generators.sampling import img2img
from methods import get_method
from methods.base import MethodContext
from methods.d4m import D4MConfig, kmeans_prototypes
from tests.factories import random_real, tiny_latent_dit, tiny_task

ROOT = Path(__file__).resolve().parent.parent


def _task(ipc, seed=5, n_real=24, label=3, channels=3, size=8):
    return tiny_task(ipc, seed, label, random_real(n_real, label, channels, size), channels, size)


def _method(**overrides):
    return get_method("d4m")(
        dataclasses.replace(D4MConfig(), **{"steps": 4, **overrides}), MethodContext(backbone=tiny_latent_dit())
    )


def test_defaults_are_the_references():
    cfg = D4MConfig()
    # gen_syn_image_imgnt.sh: --guidance_scale 8 --strength 0.7; the img2img pipeline's 50 inference steps.
    assert (cfg.strength, cfg.cfg_scale, cfg.steps) == (0.7, 8.0, 50)
    assert cfg.kmeans_batch_size == 1024  # sklearn's default for fit
    with pytest.raises(ValueError, match="strength"):
        D4MConfig(strength=1.2)


def test_prototypes_are_the_kmeans_centres_of_the_class_latents():
    method, task = _method(), _task(4)
    latents = method.encode_real(task)
    assert latents.shape == (24, 4, 4, 4)
    torch.testing.assert_close(latents, method.backbone.encode(task.real.float() / 255))
    random_state = int(torch.randint(0, 2**31 - 1, (1,), generator=task.generator()))
    km = MiniBatchKMeans(n_clusters=4, random_state=random_state, batch_size=1024, n_init="auto")
    km.fit(latents.flatten(1).double().numpy())
    expected = torch.from_numpy(np.asarray(km.cluster_centers_)).float().view(4, 4, 4, 4)
    protos = method.prototypes(task)
    torch.testing.assert_close(protos, expected)
    # Centres, not members: each is (up to mini-batch k-means' sampling of its batches with replacement) the
    # mean of the latents assigned to it.
    labels = torch.from_numpy(km.predict(latents.flatten(1).double().numpy()))
    for c in range(4):
        if (labels == c).any():
            torch.testing.assert_close(protos[c], latents[labels == c].mean(0), atol=0.05, rtol=0)
    # IPC 1: the class mean.
    torch.testing.assert_close(method.prototypes(_task(1)), latents.mean(0, keepdim=True), atol=0.01, rtol=0)


def test_kmeans_needs_as_many_latents_as_prototypes():
    with pytest.raises(ValueError, match="cannot make"):
        kmeans_prototypes(torch.randn(3, 4), 5, 0, 1024)


def test_each_prototype_starts_an_img2img_sample():
    method, task = _method(), _task(3)
    out = method.distill_class(task)
    assert out.shape == (3, 3, 8, 8) and out.min() >= 0 and out.max() <= 1
    gen = task.generator()
    torch.randint(0, 2**31 - 1, (1,), generator=gen)
    noise = torch.randn((3, 4, 4, 4), generator=gen)
    expected = img2img(method.backbone, task.condition, noise, 0.7, 8.0, 4, latents=method.prototypes(task))
    torch.testing.assert_close(out, expected)
    # At strength 0 the distilled images are the decoded prototypes themselves.
    torch.testing.assert_close(
        _method(strength=0.0).distill_class(task), method.backbone.decode(method.prototypes(task))
    )


def test_d4m_end_to_end_is_deterministic_per_seed():
    method = _method()
    a = method.distill_class(_task(3))
    assert torch.equal(a, method.distill_class(_task(3)))
    assert not torch.equal(a, method.distill_class(_task(3, seed=6)))
    # The memory knob does not change the images.
    torch.testing.assert_close(_method(batch_size=1).distill_class(_task(3)), a, atol=1e-5, rtol=0)
    # A grey suite at another size gets grey images at its size.
    grey = _task(2, channels=1, size=6)
    assert method.distill_class(grey).shape == (2, 1, 6, 6)


IMAGENET_SUITES = ["imagenet", "imagenette", "imagewoof", "imageidc", "imagenet-100"]


@pytest.mark.parametrize("name", IMAGENET_SUITES)
def test_imagenet_family_runs_d4m_with_the_reference_settings_and_guidance_mapped_to_dit(name):
    """Strength and steps are the reference's; its guidance 8, a Stable Diffusion scale (typical 7.5), is mapped to
    DiT-XL/2's (typical 4): 1 + 7 · 3 / 6.5 — inside DiT's useful range — and the board's notes say so."""
    suite = load_suite(name, check_files=False)
    cfg = suite.method_config("d4m")
    assert (cfg.strength, cfg.steps) == (0.7, 50)
    assert cfg.cfg_scale == pytest.approx(1 + 7 * 3 / 6.5, abs=1e-4)
    assert any(n.startswith("d4m: guidance mapped from its paper's generator (Stable Diffusion") for n in suite.notes)


def test_guidance_the_suite_sets_is_never_mapped(tmp_path):
    text = (ROOT / "benchmarks" / "imagewoof.yaml").read_text().replace("  d4m: {}", "  d4m: {cfg_scale: 8.0}")
    path = tmp_path / "imagewoof.yaml"
    path.write_text(text)
    suite = load_suite(str(path), check_files=False)
    assert suite.method_config("d4m").cfg_scale == 8.0
    assert not any(n.startswith("d4m: guidance mapped") for n in suite.notes)


def test_fashion_mnist_runs_d4m_at_the_backbones_guidance():
    suite = load_suite("fashion-mnist", "leaderboard", check_files=False)
    cfg, diffusion = suite.method_config("d4m"), suite.method_config("diffusion")
    assert (cfg.cfg_scale, cfg.steps) == (diffusion.cfg_scale, diffusion.steps) == (2.0, 25)
    assert cfg.strength == 0.7


def test_adaptive_sampling_maps_its_guidance_box_and_fixed_scale_to_dit_but_not_the_fashion_settings():
    woof = load_suite("imagewoof", check_files=False)
    for name in ("adaptive-sampling", "adaptive-sampling-fixed"):
        cfg = woof.method_config(name)
        assert (cfg.cfg_scale_min, cfg.cfg_scale_max) == (1.0, pytest.approx(1 + 9 * 3 / 6.5, abs=1e-4))
        assert cfg.cfg_scale == pytest.approx(1 + 7 * 3 / 6.5, abs=1e-4)
    fashion = load_suite("fashion-mnist", "leaderboard", check_files=False)
    cfg = fashion.method_config("adaptive-sampling")
    assert (cfg.cfg_scale_min, cfg.cfg_scale_max, cfg.cfg_scale) == (1.0, 4.0, 2.0)  # set by the suite, or 1
    assert not any("guidance mapped" in n for n in fashion.notes)
