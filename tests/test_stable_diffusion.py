"""The Stable Diffusion generator on a tiny SD (a two-level text U-Net, the tiny VAE, a one-layer CLIP text tower,
random weights) written in SD's folder layout and loaded through the generator's own load path: prompts from the
class list's names, the null prompt, guidance as diffusers forms it, sampling shapes and determinism, DIFT
features, encode/decode, the plan's size of the real SD v1.5, and D4M and patch selection end to end on an
ImageNet-layout suite with the papers' prompts and SD guidance taken unmapped."""

import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from harness.cli import main
from harness.config.loader import load_suite
from harness.config.schema import BackboneConfig, SuiteError, TeacherConfig
from harness.models.data import load_real_data
from harness.models.generators import generator_for
from harness.models.generators.sampling import ddim_sample, img2img
from harness.models.generators.scoring import dift_features
from harness.models.generators.stable_diffusion import SD_V1_5, StableDiffusionBackbone
from harness.stages.prepare import Prepared, backbone_check, backbone_conditions, prepare_backbone
from methods import get_method
from methods.base import MethodContext
from tests.factories import real_task, tiny_sd, tiny_teacher

TENCH, SPRINGER = 0, 217  # ImageNet-1k indices of n01440764 and n02102040
WNIDS = ("n01440764", "n02102040")


def _config(folder, **fields) -> BackboneConfig:
    return BackboneConfig(kind="stable-diffusion", pretrained=str(folder), classes="imagenet-1k", **fields)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd", ["unused"])


@pytest.fixture(scope="module")
def backbone(folder) -> StableDiffusionBackbone:
    g = generator_for(_config(folder, prompt="An image of {name}"))
    return g.load(str(folder))


def test_conditions_are_prompts_from_the_class_names(backbone):
    assert backbone.num_classes == 1000 and backbone.null_class == 1000
    assert backbone.prompt_of(TENCH) == "An image of tench"
    assert backbone.prompt_of(backbone.null_class) == ""
    view = backbone.with_prompts(null_prompt="An image of .")
    assert view.prompt_of(view.null_class) == "An image of ." and view.prompt_of(TENCH) == "An image of tench"
    assert view.unet is backbone.unet and backbone.prompt_of(backbone.null_class) == ""  # a view, the models shared
    with pytest.raises(ValueError, match="not a class"):
        backbone.prompt_of(1001)


def test_text_embeddings_are_computed_once_per_condition(backbone):
    bb = backbone.with_prompts()
    calls = []
    handle = bb.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        x = torch.randn((3, *bb.latent_shape), generator=torch.Generator().manual_seed(0))
        for _ in range(2):
            bb.guided_output(x, torch.tensor(500), torch.tensor([TENCH, SPRINGER, TENCH]), 3.0)
    finally:
        handle.remove()
    assert len(calls) == 3  # tench, springer, the null prompt


def test_guidance_is_diffusers_cfg(backbone):
    x = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(1))
    labels, t = torch.tensor([TENCH, SPRINGER]), torch.tensor(400)
    with torch.no_grad():
        cond = backbone.eps(x, t, labels)
        uncond = backbone.eps(x, t, torch.tensor([backbone.null_class] * 2))
        torch.testing.assert_close(backbone.eps_cfg(x, t, labels, 1.0), cond)
        torch.testing.assert_close(
            backbone.eps_cfg(x, t, labels, 7.5), uncond + 7.5 * (cond - uncond), atol=1e-5, rtol=1e-4
        )
    assert not torch.allclose(cond, uncond)  # the prompts reach the U-Net


def test_sampling_shapes_and_determinism(backbone):
    noise = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(2))
    a = ddim_sample(backbone, noise.clone(), TENCH, 4, 7.5)
    b = ddim_sample(backbone, noise.clone(), TENCH, 4, 7.5)
    assert a.shape == (2, *backbone.latent_shape) and torch.equal(a, b)
    images = torch.rand((2, 3, 8, 8), generator=torch.Generator().manual_seed(3))
    out = img2img(backbone, SPRINGER, noise, 0.7, 8.0, 10, images=images)
    assert out.shape == (2, 3, 8, 8) and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, img2img(backbone, SPRINGER, noise, 0.7, 8.0, 10, images=images))


def test_encode_decode_and_the_vae_scale(backbone):
    images = torch.rand((3, 3, 8, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        z = backbone.encode(images)
        assert z.shape == (3, *backbone.latent_shape) and backbone.scaling_factor == 0.18215
        torch.testing.assert_close(z, backbone.vae.encode(images * 2 - 1).latent_dist.mean * 0.18215)
        assert backbone.decode(z).shape == images.shape
    assert backbone.image_size == 8 and backbone.latent_shape == (4, 4, 4)


def test_dift_features_are_an_up_blocks_output(backbone):
    assert backbone.depth == 2  # the tiny U-Net's up blocks
    x = torch.randn((3, *backbone.latent_shape), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        tokens = backbone.block_features(x, torch.tensor(160), torch.tensor([TENCH] * 3), 1)
    assert tokens.shape == (3, 16, 8)  # 4 × 4 positions of the last up block's 8 channels
    noise = torch.randn((3, 2, *backbone.latent_shape), generator=torch.Generator().manual_seed(6))
    assert dift_features(backbone, x, TENCH, 160, noise, 0).shape == (3, 16)  # the first up block: 16 channels


def test_the_plan_sizes_sd_v1_5_without_the_hub():
    denoiser, vae, params, what = generator_for(BackboneConfig(kind="stable-diffusion", classes="imagenet-1k")).flops(
        3, 1000
    )
    # SD v1.5: a 860 M-parameter U-Net (≈ 0.4 T multiply-adds on a 64 × 64 latent), an 84 M VAE and the 123 M
    # CLIP ViT-L/14 text tower.
    assert 7.5e11 < denoiser < 8.5e11 and vae > denoiser and 1.05e9 < params < 1.08e9
    assert SD_V1_5 in what and "published" in what


def test_the_suite_names_the_class_list_the_prompts_come_from(tmp_path):
    raw = {
        "name": "s",
        "data": {"format": "idx", "root": str(tmp_path)},
        "backbone": {"kind": "stable-diffusion"},
        "teacher": {"kind": "trained"},
        "methods": {"d4m": {}},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError, match="backbone.classes: required for a text-conditioned backbone"):
        load_suite(str(path), check_files=False)
    raw["backbone"].update(classes="imagenet-1k", guided_channels=3)
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError, match="backbone.guided_channels: a text-conditioned U-Net guides every channel"):
        load_suite(str(path), check_files=False)
    raw["backbone"].update(guided_channels=None, prompt="An image of {klass}")
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError, match="backbone.prompt"):
        load_suite(str(path), check_files=False)


def test_the_imagenet_suites_sd_rows_take_the_papers_settings_and_plan_without_the_hub(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path / "absent"))
    suite = load_suite("imagewoof", check_files=False)
    d4m, adaptive = suite.methods["d4m-sd"], suite.methods["adaptive-sampling-sd"]
    # gen_syn_image_imgnt.sh: --guidance_scale 8 --strength 0.7; the pipeline's 50 steps.
    assert (d4m.cfg_scale, d4m.strength, d4m.steps) == (8.0, 0.7, 50)
    assert (adaptive.cfg_scale_min, adaptive.cfg_scale_max, adaptive.cfg_scale) == (1.0, 10.0, 8.0)
    mapped = [n.split(":")[0] for n in suite.notes if "guidance mapped" in n]
    assert mapped == ["d4m", "adaptive-sampling", "adaptive-sampling-no-repulsion", "adaptive-sampling-fixed"]
    argv = ["--suite", "imagewoof", "--plan", "--methods", "d4m-sd", "--out", str(tmp_path / "out"), "--gpus", "4"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert re.search(r"backbones\.stable-diffusion stable-diffusion-v1-5/stable-diffusion-v1-5 \(published", text)
    assert re.search(r"^  d4m-sd +3 +30 +800 +56,000 ", text, re.M)  # 800 images × 35 img2img steps × 2 (guided)


# ---- D4M and patch selection on an ImageNet-layout suite ----


@pytest.fixture(scope="module")
def imagenet_suite(tmp_path_factory, folder):
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 2)):
        for w in WNIDS:
            (root / "data" / split / w).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    root / "data" / split / w / f"{k}.JPEG"
                )
    (root / "classes.txt").write_text("\n".join(WNIDS) + "\n")
    path = root / "sd.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "sd",
                "data": {
                    "format": "imagefolder",
                    "root": str(root / "data"),
                    "classes": str(root / "classes.txt"),
                    "image_size": 8,
                    "val_per_class": 1,
                },
                "backbone": {"kind": "stable-diffusion", "pretrained": str(folder), "classes": "imagenet-1k"},
                "teacher": {"kind": "trained"},
                "methods": {
                    "d4m": {"steps": 4},
                    "adaptive-sampling": {
                        "steps": 4,
                        "bo_init": 2,
                        "bo_iterations": 1,
                        "seed_batch_size": 2,
                        "repulsion_weight": 1.0,
                    },
                    "patch-selection": {
                        "num_candidates": 8,
                        "draws": 2,
                        "patch_fraction": 0.5,
                        "clusters": 4,
                        "top_clusters": 2,
                        "dift_ensemble": 2,
                        "batch_size": 8,
                    },
                },
            }
        )
    )
    suite = load_suite(str(path))
    real = load_real_data(suite.data)
    source, h = prepare_backbone(suite, real, root / "out")
    conditions = backbone_conditions(suite, real.classes)
    teacher = TeacherConfig(kind="trained")
    prepared = Prepared(real.classes, suite.backbone, source, h, conditions, teacher, "", "", None, None)
    return suite, real, prepared


def test_sd_settings_are_the_papers_unmapped(imagenet_suite):
    suite, real, prepared = imagenet_suite
    assert suite.methods["d4m"].cfg_scale == 8.0 and suite.methods["d4m"].strength == 0.7
    adaptive = suite.methods["adaptive-sampling"]
    assert (adaptive.cfg_scale_min, adaptive.cfg_scale_max, adaptive.cfg_scale) == (1.0, 10.0, 8.0)
    assert not any("guidance mapped" in n for n in suite.notes)
    assert prepared.conditions == [TENCH, SPRINGER]


def _task(real, prepared, label, ipc):
    task = real_task(real, label, ipc, seed=11)
    task.condition = prepared.conditions[label]
    return task


def test_d4m_end_to_end_on_sd(imagenet_suite):
    suite, real, prepared = imagenet_suite
    bb = prepared.load_backbone()
    method = get_method("d4m")(suite.methods["d4m"], MethodContext(backbone=bb))
    assert method.backbone.prompt_of(SPRINGER) == "English springer"
    assert method.backbone.prompt_of(bb.null_class) == "cartoon, anime, painting"  # gen_syn_image.py l.65
    task = _task(real, prepared, 1, 2)
    images = method.distill_class(task)
    assert images.shape == (2, 3, 8, 8) and 0 <= images.min() and images.max() <= 1
    again = get_method("d4m")(suite.methods["d4m"], MethodContext(backbone=prepared.load_backbone()))
    assert torch.equal(images, again.distill_class(_task(real, prepared, 1, 2)))


def test_patch_selection_end_to_end_on_sd(imagenet_suite):
    suite, real, prepared = imagenet_suite
    bb = prepared.load_backbone()
    method = get_method("patch-selection")(suite.methods["patch-selection"], MethodContext(backbone=bb))
    assert method.backbone.prompt_of(TENCH) == "An image of tench"  # §3.2
    assert method.backbone.prompt_of(bb.null_class) == "An image of ."
    images = method.distill_class(_task(real, prepared, 0, 1))
    assert images.shape == (1, 3, 8, 8)
    # Every 4 × 4 tile of the stitched image is a window of one of the class's real images.
    assert 0 <= images.min() and images.max() <= 1


def test_adaptive_sampling_end_to_end_on_sd(imagenet_suite):
    suite, real, prepared = imagenet_suite
    context = MethodContext(backbone=prepared.load_backbone(), teacher=tiny_teacher(2))
    method = get_method("adaptive-sampling")(suite.methods["adaptive-sampling"], context)
    assert method.backbone.prompt_of(TENCH) == "tench"  # the suite's prompts: the paper names none of its own
    images = method.distill_class(_task(real, prepared, 0, 3))
    assert images.shape == (3, 3, 8, 8) and 0 <= images.min() and images.max() <= 1
    assert all(1 <= b <= 10 and 0.5 <= g <= 0.9 for b, g in method.last_choices)
    assert torch.equal(images, method.distill_class(_task(real, prepared, 0, 3)))


def test_the_backbone_check_samples_each_classs_prompt(imagenet_suite):
    """The check runs unchanged: suite class c is sampled under the prompt of its ImageNet-1k condition and the
    teacher, which knows the suite's classes, is asked whether it sees class c."""
    suite, real, prepared = imagenet_suite
    bb = prepared.load_backbone()
    prompted = []
    original = bb.text_embedding
    bb.text_embedding = lambda label: prompted.append(bb.prompt_of(label)) or original(label)
    result = backbone_check(bb, tiny_teacher(2), 2, 3, 7.5, 4, conditions=prepared.conditions)
    assert result["samples"] == 6 and 0 <= result["agreement"] <= 1
    assert set(prompted) == {"tench", "English springer", ""}


def test_the_rehearsal_builds_sd_v1_5_at_its_true_size_without_the_hub():
    """The rehearsal's SD (random weights, a character tokenizer standing in for CLIP's hub vocabulary) has SD
    v1.5's shapes: 1.07 B parameters with the text tower, 64 × 64 latents of 512-px images, 77-token prompts."""
    suite = load_suite("imagewoof", check_files=False)
    with torch.device("meta"):
        bb = generator_for(suite.backbones["stable-diffusion"]).random_backbone()
    assert sum(p.numel() for p in bb.parameters()) == 1_066_235_307
    assert bb.latent_shape == (4, 64, 64) and bb.image_size == 512 and bb.num_classes == 1000
    assert len(bb.tokenizer(bb.prompt_of(0), padding="max_length").input_ids) == 77
