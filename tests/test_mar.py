"""The MAR generator on a tiny MAR (4 × 4 tokens of 4 channels, one-block encoder, decoder and head, a small KL VAE;
random weights) written in MAR's release layout and loaded through the generator's own load path: sampling shapes and
bitwise determinism, the cosine mask schedule revealing every token, guidance (cfg 1 is the conditional pass alone),
the diffusion head's loss overfitting, loading equal to the in-memory model, and the plan's size of the real
MAR-Base. The pixel-token MAR: patches as tokens both ways, saved and loaded without a VAE, trained by `prepare`
into the cache and resumed, its train fields checked, and the backbone check sampling it."""

import argparse
import dataclasses
import json
import math
import shutil

import pytest
import torch
import yaml

import harness.models.generators.mar as mar_module
from harness.config.loader import load_suite
from harness.config.schema import BENCHMARKS_DIR, BackboneConfig, SuiteError
from harness.models.generators import generator_for
from harness.models.generators.mar import (
    CHECKPOINT,
    MAR_B_CFG,
    MAR_BASE,
    VAE_FILE,
    MARBackbone,
    MARGenerator,
    MARTrainConfig,
    load_mar_backbone,
    mar_parameters,
    save_mar_backbone,
)
from harness.models.generators.mar_model import KLVAE, DiffLoss, MARConfig, linear_cfg, mask_schedule
from harness.models.generators.registry import GeneratorError
from harness.stages.prepare import backbone_check
from methods.cao2 import (
    MAR_CLO_ITERATIONS,
    MAR_CLO_LR,
    MAR_CLO_MAX_MASK_RATIO,
    mar_condition,
    optimise_mar_latents,
)
from tests.factories import TINY_MAR, TINY_PIXEL_MAR, tiny_mar, tiny_mar_backbone

L = TINY_MAR.seq_len  # 16 tokens


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_mar(tmp_path_factory.mktemp("mar") / "tiny-mar")


@pytest.fixture(scope="module")
def backbone(folder) -> MARBackbone:
    return generator_for(BackboneConfig(kind="mar", pretrained=str(folder))).load(str(folder))


def test_sampling_shape_and_bitwise_determinism(backbone):
    labels = torch.tensor([1, 3])
    a = backbone.sample(labels, _gens(0, 1), num_iter=4, steps=5, cfg=2.0)
    b = backbone.sample(labels, _gens(0, 1), num_iter=4, steps=5, cfg=2.0)
    assert a.shape == (2, *backbone.latent_shape) == (2, 4, 4, 4)
    assert torch.equal(a, b)
    assert not torch.equal(a, backbone.sample(labels, _gens(0, 2), num_iter=4, steps=5, cfg=2.0))
    # An image's order and noise are its own generator's: the same alone as in a batch.
    alone = backbone.sample(labels[:1], _gens(0), num_iter=4, steps=5, cfg=2.0)
    torch.testing.assert_close(alone[0], a[0], rtol=1e-5, atol=1e-5)
    images = backbone.decode(a)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert backbone.encode(images).shape == a.shape


def test_the_mask_schedule_reveals_every_token_after_the_stated_steps(backbone):
    for seq_len, steps in ((256, 32), (256, 256), (256, 64), (16, 4), (16, 1), (16, 16)):
        counts = mask_schedule(seq_len, steps)
        assert len(counts) == steps and counts[-1] == 0
        before = [seq_len, *counts[:-1]]
        assert all(0 <= after < b or after == b == 1 for b, after in zip(before, counts))
    # MAR-Base at CaO2's 32 steps: ⌊256 · cos(π/2 · k/32)⌋ from the first step on.
    assert mask_schedule(256, 32)[:4] == [255, 254, 253, 251]
    revealed = []
    original = backbone.mar.diffloss.sample

    def spy(z, steps, temperature, cfg, counts, generators):
        revealed.append(list(counts))
        return original(z, steps, temperature, cfg, counts, generators)

    backbone.mar.diffloss.sample = spy
    try:
        latents = backbone.sample(torch.tensor([0, 4]), _gens(3, 4), num_iter=4, steps=3)
    finally:
        del backbone.mar.diffloss.sample
    assert len(revealed) == 4 and sum(c[0] for c in revealed) == L and all(c[0] == c[1] for c in revealed)
    tokens = latents.flatten(2)  # every position holds a sampled token (they start at zero)
    assert (tokens != 0).all()


def test_cfg_one_is_the_conditional_pass_alone(backbone):
    labels, gens = torch.tensor([2, 2]), (5, 6)
    base = backbone.sample(labels, _gens(*gens), num_iter=4, steps=3, cfg=1.0)
    guided = backbone.sample(labels, _gens(*gens), num_iter=4, steps=3, cfg=4.0)
    fake = backbone.mar.fake_latent.data.clone()
    backbone.mar.fake_latent.data.add_(1.0)  # another null class: only guided sampling may notice
    try:
        assert torch.equal(base, backbone.sample(labels, _gens(*gens), num_iter=4, steps=3, cfg=1.0))
        assert not torch.equal(guided, backbone.sample(labels, _gens(*gens), num_iter=4, steps=3, cfg=4.0))
    finally:
        backbone.mar.fake_latent.data.copy_(fake)
    # The null class is the learned fake latent; the linear schedule grows from ~1 to cfg as tokens are revealed.
    null = backbone.class_embedding(torch.tensor([backbone.null_class, 1]))
    assert torch.equal(null[0], backbone.mar.fake_latent[0]) and torch.equal(null[1], backbone.mar.class_emb.weight[1])
    assert linear_cfg(3.0, 256, 255) == pytest.approx(1 + 2 / 256) and linear_cfg(3.0, 256, 1) == pytest.approx(
        1 + 2 * 255 / 256
    )
    # The head's guidance: with equal conditional and unconditional vectors it is the unguided head.
    head = backbone.mar.diffloss
    z = torch.randn(3, TINY_MAR.width, generator=torch.Generator().manual_seed(0))
    one = head.sample(z, 5, 1.0, 1.0, [3], _gens(7))
    torch.testing.assert_close(head.sample(torch.cat([z, z]), 5, 1.0, 3.0, [3], _gens(7)), one, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(head.sample(torch.cat([z, z.flip(0)]), 5, 1.0, 3.0, [3], _gens(7)), one)


def test_the_diffusion_heads_loss_is_finite_and_overfits():
    torch.manual_seed(0)
    head = DiffLoss(channels=4, z_channels=8, width=32, depth=2)
    target = torch.randn(16, 4, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    z = torch.randn(16, 8, generator=torch.Generator().manual_seed(2))

    def held_out():  # the same timesteps and noise every time
        with torch.no_grad():
            return float(head.loss(target, z, generator=torch.Generator().manual_seed(3)))

    before = held_out()
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(4)
    for _ in range(60):
        loss = head.loss(target.repeat(8, 1), z.repeat(8, 1), generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out()
    assert torch.isfinite(torch.tensor([before, after])).all() and after < 0.8 * before
    # MAR's own training loss runs and reaches every part of the transformer.
    mar = tiny_mar_backbone().mar.train().requires_grad_(True)
    tokens = torch.randn(2, L, TINY_MAR.vae_channels, generator=torch.Generator().manual_seed(5))
    loss = mar.loss(tokens, torch.tensor([0, 3]), generator=torch.Generator().manual_seed(6))
    loss.backward()
    assert torch.isfinite(loss) and mar.z_proj.weight.grad.abs().sum() > 0


def test_loading_the_saved_folder_equals_the_model_in_memory(folder, backbone, tmp_path):
    memory = tiny_mar_backbone()
    for (name, a), (_, b) in zip(memory.state_dict().items(), backbone.state_dict().items()):
        assert torch.equal(a, b), name
    labels = torch.tensor([1, 4])
    for cfg in (1.0, 2.5):
        assert torch.equal(
            memory.sample(labels, _gens(0, 1), num_iter=3, steps=4, cfg=cfg),
            backbone.sample(labels, _gens(0, 1), num_iter=3, steps=4, cfg=cfg),
        )
    # A release checkpoint: the EMA weights are the ones sampled; the training state (and its argparse Namespace)
    # rides along.
    state = memory.mar.state_dict()
    ema = {k: v + 1 if k == "fake_latent" else v for k, v in state.items()}
    release = tmp_path / "release"
    release.mkdir()
    (release / "config.json").write_bytes((folder / "config.json").read_bytes())
    vae = torch.load(folder / "kl16.ckpt", weights_only=True)["model"]
    torch.save({"model": {**vae, "loss.logvar": torch.zeros(())}}, release / "kl16.ckpt")  # LDM's loss rides along
    checkpoint = {"model": state, "model_ema": ema, "epoch": 799, "args": argparse.Namespace(cfg=2.9)}
    torch.save(checkpoint, release / CHECKPOINT)
    loaded = load_mar_backbone(release)
    assert torch.equal(loaded.mar.fake_latent, ema["fake_latent"])
    del vae["decoder.conv_out.weight"]  # a missing weight still fails
    torch.save({"model": vae}, release / "kl16.ckpt")
    with pytest.raises(RuntimeError, match="decoder.conv_out.weight"):
        load_mar_backbone(release)


def test_the_generator_checks_and_sizes_mar_base(tmp_path):
    g = generator_for(BackboneConfig(kind="mar", pretrained=str(tmp_path)))
    assert g.typical_guidance() == MAR_B_CFG == 2.9
    with pytest.raises(GeneratorError, match="backbone.pretrained: no .*checkpoint-last.pth"):
        g.prepare(None, tmp_path)
    fails = []
    g.check_required(BackboneConfig(kind="mar"), lambda field, message: fails.append(field))
    assert fails == ["backbone.pretrained"]
    # MAR-B as the paper counts it: 208 M parameters (Table 4), the VAE apart; the count rounds to it.
    mar, vae = mar_parameters(MAR_BASE)
    assert round(mar / 1e6) == 208
    step, decode, params, what = g.flops(3, 10)
    assert step > 1e10 and decode > 0 and params == mar + vae and what.startswith("MAR-Base")
    # The VAE's names are LDM's, as kl16.ckpt stores them.
    with torch.device("meta"):
        names = set(KLVAE(MAR_BASE).state_dict())
    for key in (
        "encoder.down.4.attn.1.q.weight",
        "encoder.down.0.downsample.conv.weight",
        "encoder.mid.attn_1.proj_out.weight",
        "decoder.up.0.block.2.conv1.weight",
        "decoder.up.4.upsample.conv.weight",
        "decoder.up.3.block.0.nin_shortcut.weight",
        "quant_conv.weight",
        "post_quant_conv.weight",
    ):
        assert key in names, key


def test_cao2_on_mar_masks_at_most_a_quarter_and_guides_with_the_zero_embedding(backbone):
    latents = backbone.sample(torch.tensor([1, 2]), _gens(0, 1), num_iter=2, steps=3).clamp(-3, 3)
    seen = []
    original = backbone.conditions

    def spy(x, mask, embedding):
        seen.append((int(mask.sum()), embedding.detach().clone()))
        return original(x, mask, embedding)

    backbone.conditions = spy
    try:
        out = optimise_mar_latents(backbone, latents, 1, _gens(7, 8), iterations=6, lr=1e-2)
    finally:
        del backbone.conditions
    assert out.shape == latents.shape and torch.isfinite(out).all() and not torch.equal(out, latents)
    assert len(seen) == 12 and all(1 <= k <= math.ceil(0.25 * L) for k, _ in seen)
    assert all(not e.any() for _, e in seen)  # the zero label embedding, not MAR's fake class
    assert not any(p.requires_grad for p in backbone.parameters())  # only the latents were optimised
    again = optimise_mar_latents(backbone, latents, 1, _gens(7, 8), iterations=6, lr=1e-2)
    assert torch.equal(out, again)
    # One image alone is optimised as in its batch; no iterations return the latents as sampled.
    torch.testing.assert_close(optimise_mar_latents(backbone, latents[1:], 1, _gens(8), iterations=6, lr=1e-2), out[1:])
    assert torch.equal(optimise_mar_latents(backbone, latents, 1, _gens(7, 8), iterations=0), latents)
    assert torch.equal(mar_condition(backbone, 3, "class")[0], backbone.mar.class_emb.weight[3])
    assert torch.equal(mar_condition(backbone, 3, "null")[0], backbone.mar.fake_latent[0])
    assert (MAR_CLO_ITERATIONS, MAR_CLO_LR, MAR_CLO_MAX_MASK_RATIO) == (100, 1e-4, 0.25)  # Tab. 5's setting


def test_cao2_on_mar_lowers_its_objective():
    """A few steps at a large learning rate lower Eq. 6 measured on fixed masks, timesteps and noise."""
    bb = tiny_mar_backbone()
    latents = torch.randn(1, *bb.latent_shape, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, L).scatter(1, torch.tensor([[0, 5, 10, 15]]), 1.0)
    t = torch.randint(0, 1000, (4, 4), generator=torch.Generator().manual_seed(1))
    noise = torch.randn(4, 4, TINY_MAR.vae_channels, generator=torch.Generator().manual_seed(2))
    zero = mar_condition(bb, 0, "zero")

    def objective(x):
        with torch.no_grad():
            z = bb.conditions(x, mask, zero)[0, mask[0] == 1]
            target = bb.mar.patchify(x)[0, mask[0] == 1]
            err = bb.head_eps(target.expand(4, -1, -1), z.expand(4, -1, -1), t, noise) - noise
            return float(err.pow(2).mean() + 10 * err.abs().max())

    out = optimise_mar_latents(bb, latents, 0, _gens(3), iterations=40, lr=5e-2)
    assert objective(out) < objective(latents)


def test_a_suite_naming_kind_mar_is_checked_in_one_line(tmp_path):
    raw = yaml.safe_load((BENCHMARKS_DIR / "fashion-mnist.yaml").read_text())
    raw["backbone"] = {"kind": "mar"}
    path = tmp_path / "mar.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError) as err:
        load_suite(str(path), check_files=False)
    assert str(err.value) == (
        f"{path}: backbone.pretrained: required for kind mar unless backbone.train sets a MAR for prepare to train: "
        "a local folder with MAR's checkpoint-last.pth and the VAE's kl16.ckpt"
    )
    raw["backbone"] = {"kind": "mar", "pretrained": str(tmp_path), "guided_channels": 3}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError, match="backbone.guided_channels: MAR guides"):
        load_suite(str(path), check_files=False)
    raw["backbone"] = {"kind": "mar", "pretrained": str(tmp_path), "dtype": "float16"}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError, match="backbone.dtype: kind mar runs in float32"):
        load_suite(str(path), check_files=False)


# ---------------------------------------------------------------------------------------------------------------
# The pixel-token MAR (item 4): 8-px grey images as 2 × 2 patches, 16 tokens of 4 channels.

TINY_TRAIN = MARTrainConfig(
    sample_size=8,
    patch_size=2,
    width=16,
    depth=1,
    heads=2,
    buffer_size=2,
    diffloss_width=16,
    diffloss_depth=1,
    steps=4,
    batch_size=4,
    warmup_steps=2,
    checkpoint_every=2,
    sample_ar_steps=4,
)


class _Split:
    """The part of a training split `prepare` reads: 12 random grey 8-px images of 3 classes."""

    def __init__(self):
        self.images = torch.randint(0, 256, (12, 1, 8, 8), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
        self.labels = torch.arange(12) % 3

    def __len__(self):
        return len(self.images)

    def load(self, idx):
        return self.images[idx]

    def fingerprint(self):
        return "tiny"


def _real():
    return type("Real", (), {"train": _Split(), "classes": ["a", "b", "c"]})()


def test_pixel_tokens_are_patches_both_ways_and_save_without_a_vae(tmp_path):
    bb = tiny_mar_backbone(TINY_PIXEL_MAR)
    assert (bb.scaling_factor, bb.image_channels, bb.latent_shape) == (1.0, 1, (4, 4, 4))
    images = torch.randint(0, 256, (2, 1, 8, 8), generator=torch.Generator().manual_seed(1)) / 255
    z = bb.encode(images)
    assert z.shape == (2, 4, 4, 4)
    # Token (0, 0) is the top-left 2 × 2 patch in [−1, 1], row-major.
    torch.testing.assert_close(z[0, :, 0, 0], images[0, 0, :2, :2].flatten() * 2 - 1)
    torch.testing.assert_close(bb.decode(z), images, rtol=0, atol=1e-6)
    save_mar_backbone(bb, tmp_path / "m")
    assert not (tmp_path / "m" / VAE_FILE).exists()
    loaded = load_mar_backbone(tmp_path / "m")
    assert loaded.config == TINY_PIXEL_MAR
    a = loaded.sample(torch.tensor([0, 2]), _gens(0, 1), num_iter=4, steps=3, cfg=2.0)
    assert torch.equal(a, bb.sample(torch.tensor([0, 2]), _gens(0, 1), num_iter=4, steps=3, cfg=2.0))
    assert loaded.decode(a).shape == (2, 1, 8, 8)
    # Pixel tokens lie in [−1, 1]: the head clips its x̂_0 there at each step (the last step's output is x̂_0); MAR's
    # VAE latents are unbounded and sampled unclipped, as the reference does.
    assert a.abs().max() <= 1 and bb.mar.diffloss.clip_denoised and not tiny_mar_backbone().mar.diffloss.clip_denoised
    with pytest.raises(ValueError, match="vae_channels"):
        dataclasses.replace(TINY_PIXEL_MAR, vae_channels=12)
    # A config written before the tokenizer existed is MAR-Base's KL-16 one.
    assert (
        MARConfig.from_dict({k: v for k, v in MAR_BASE.to_dict().items() if k not in ("tokenizer", "image_channels")})
        == MAR_BASE
    )


def test_prepare_trains_a_pixel_mar_into_the_cache_and_resumes(tmp_path, monkeypatch):
    # Bitwise resume needs the same thread count in each training call; prepare picks it from the load average.
    monkeypatch.setattr(mar_module, "idle_cores", lambda: 1)
    real = _real()
    g = generator_for(BackboneConfig(kind="mar", train=TINY_TRAIN))
    fails = []
    g.check_required(g.config, lambda field, message: fails.append(field))
    assert fails == [] and g.prepare_training() == (16, "the pixel-token MAR, 4 steps")
    source, key = g.prepare(real, tmp_path / "a")
    bb = g.load(source)
    assert bb.config.tokenizer == "pixel" and bb.config.num_classes == 3 and bb.image_channels == 1
    assert g.prepare(real, tmp_path / "a") == (source, key)  # cached
    # How often it checkpoints and how it samples do not name the model.
    other = dataclasses.replace(TINY_TRAIN, checkpoint_every=1, sample_ar_steps=2)
    assert generator_for(BackboneConfig(kind="mar", train=other)).prepare(real, tmp_path / "a")[1] == key
    # Raising the steps resumes the finished run: 4 + 2 steps give the weights of 6 straight.
    six = dataclasses.replace(TINY_TRAIN, steps=6)
    resumed = load_mar_backbone(generator_for(BackboneConfig(kind="mar", train=six)).prepare(real, tmp_path / "a")[0])
    straight = load_mar_backbone(generator_for(BackboneConfig(kind="mar", train=six)).prepare(real, tmp_path / "b")[0])
    for (name, x), (_, y) in zip(resumed.state_dict().items(), straight.state_dict().items()):
        assert torch.equal(x, y), name
    assert not torch.equal(resumed.mar.fake_latent, bb.mar.fake_latent)


def test_the_backbone_check_samples_the_trained_mar(tmp_path):
    g = MARGenerator(BackboneConfig(kind="mar", train=TINY_TRAIN))
    bb = tiny_mar_backbone(TINY_PIXEL_MAR)
    assert g.ar_steps(bb) == 4 and g.typical_guidance() == BackboneConfig(kind="mar").check_cfg_scale
    images = g.check_images(bb, 1, 3, torch.Generator().manual_seed(0), steps=3, cfg_scale=2.0, batch=2)
    assert images.shape == (3, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, g.check_images(bb, 1, 3, torch.Generator().manual_seed(0), 3, 2.0, batch=2))
    torch.testing.assert_close(images, g.check_images(bb, 1, 3, torch.Generator().manual_seed(0), 3, 2.0, batch=3))
    teacher = lambda x: torch.nn.functional.one_hot(torch.full((len(x),), 1), 3).float()  # noqa: E731
    result = backbone_check(bb, teacher, 3, 2, 2.0, 3, generator=g, batch_size=2)
    assert result["agreement"] == pytest.approx(1 / 3) and result["per_class"] == [0.0, 1.0, 0.0]
    # A released MAR samples the check at MAR's default AR steps, at most one per token.
    assert MARGenerator(BackboneConfig(kind="mar", pretrained=str(tmp_path))).ar_steps(bb) == 16


def test_the_train_fields_are_checked_one_line_each():
    def fails(**changes):
        out = []
        config = BackboneConfig(kind="mar", train=dataclasses.replace(MARTrainConfig(), **changes))
        MARGenerator.check(config, 28, lambda field, message: out.append(field))
        return out

    assert fails() == []
    assert fails(heads=3) == ["backbone.train.heads"]
    assert fails(patch_size=5) == ["backbone.train.patch_size"]
    assert fails(sample_size=32) == ["backbone.train.sample_size"]
    assert fails(ema_decay=1.0) == ["backbone.train.ema_decay"]
    assert fails(lr=0) == ["backbone.train.lr"]
    assert fails(sample_ar_steps=50) == ["backbone.train.sample_ar_steps"]  # 49 tokens
    assert fails(warmup_steps=-1) == ["backbone.train.warmup_steps"]


def test_the_true_size_mar_builds_on_the_meta_device_and_the_trained_one_is_priced(tmp_path):
    with torch.device("meta"):
        bb = MARGenerator(BackboneConfig(kind="mar", pretrained=str(tmp_path))).random_backbone()
    assert bb.latent_shape == (16, 16, 16) and bb.image_channels == 3
    assert sum(p.numel() for p in bb.parameters()) == sum(mar_parameters(MAR_BASE))
    step, decode, params, what = MARGenerator(BackboneConfig(kind="mar", train=MARTrainConfig())).flops(1, 10)
    assert step > 0 and decode == 0 and what.startswith("pixel-token MAR")
    assert params == sum(mar_parameters(MARTrainConfig().model_config(1, 10)))


def test_a_released_mar_is_named_by_its_files_not_their_folder(tmp_path):
    """The same release under another $MAR_BASE keeps its identity; another checkpoint at the same path does not."""
    first = tiny_mar(tmp_path / "a")
    second = tmp_path / "elsewhere" / "b"
    shutil.copytree(first, second)

    def key(folder):
        return generator_for(BackboneConfig(kind="mar", pretrained=str(folder))).prepare(None, tmp_path / "out")[1]

    assert key(first) == key(second)
    state = torch.load(second / "checkpoint-last.pth", weights_only=False)
    state["model"]["fake_latent"] = state["model"]["fake_latent"] + 1
    torch.save(state, second / "checkpoint-last.pth")
    assert key(second) != key(first)


def test_a_release_of_another_architecture_is_one_line_in_prepare(tmp_path):
    folder = tiny_mar(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "width": config["width"] * 2}))
    g = generator_for(BackboneConfig(kind="mar", pretrained=str(folder)))
    wrong = r"backbone\.pretrained: checkpoint-last\.pth is not its config\.json's MAR \(\d+ of other shapes, e\.g\. "
    with pytest.raises(GeneratorError, match=wrong):
        g.prepare(None, tmp_path / "out")
    (folder / "checkpoint-last.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(GeneratorError, match=r"checkpoint-last\.pth cannot be read"):
        g.prepare(None, tmp_path / "out")
