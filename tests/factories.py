"""What the tests build over and over, in one place: the tiny suite's paths, a tiny latent DiT and its VAE, a tiny
8×8 teacher, per-class tasks (random or from the tiny real data) and suite files written from a mapping.

A test imports these from here, never from another test module: pytest imports test files under bare names
(`test_cao2`), so importing one as `tests.test_cao2` runs it twice under two names. Imported as `tests.factories`,
the name Ray workers find too.
"""

from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from harness.models.data import FASHION_MNIST_CLASSES, RealData, load_fashion_mnist
from harness.models.generators.dit import DiTBackbone
from harness.models.generators.mar import MARBackbone, save_mar_backbone
from harness.models.generators.mar_model import MAR, MARConfig, build_tokenizer
from harness.models.generators.pixel_dit import PixelDiTConfig
from harness.models.generators.stable_diffusion import StableDiffusionBackbone, character_tokenizer, save_sd_backbone
from harness.models.students import create_student
from harness.models.teachers import Teacher
from methods.base import ClassTask

TESTS = Path(__file__).resolve().parent
TINY_SUITE = TESTS / "tiny-suite.yaml"
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")


def tiny_vae() -> AutoencoderKL:
    """An SD-style VAE in miniature: 8×8 RGB images ↔ 4×4×4 latents (randomly initialised from torch's RNG)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
    )


def tiny_pixel_dit_config(checkpoint_every: int) -> PixelDiTConfig:
    """A pixel DiT that trains in a second on 8-px images: 6 steps of batch 8, checkpointed every few."""
    return PixelDiTConfig(
        sample_size=8,
        patch_size=4,
        width=16,
        depth=1,
        heads=2,
        steps=6,
        batch_size=8,
        warmup_steps=2,
        checkpoint_every=checkpoint_every,
    )


def tiny_latent_dit(num_classes: int = 10) -> DiTBackbone:
    """DiT-XL/2's shape in miniature: 4 latent channels, learn_sigma (8 outputs), an SD-style VAE; `num_classes`
    labels (1,000 for a suite conditioned by ImageNet-1k index)."""
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=1,
        sample_size=4,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
    )
    vae = tiny_vae()
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    return DiTBackbone(transformer, scheduler, vae)


def sd_scheduler() -> DDIMScheduler:
    """SD v1.5's noise schedule (its scheduler/scheduler_config.json: scaled-linear betas 0.00085 … 0.012)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_clip(folder: Path, tokens: int = 16) -> tuple[CLIPTextModel, CLIPTokenizer]:
    """A CLIP text tower in miniature (width 16, one layer) and a character-level CLIP tokenizer (no merges)
    of `tokens` positions, the tokenizer written to `folder` (it is built from files)."""
    tokenizer = character_tokenizer(folder, tokens)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=tokens,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config), tokenizer


def tiny_sd(folder: Path, class_names: list[str], prompt: str = "{name}", null_prompt: str = "") -> Path:
    """Stable Diffusion's shape in miniature, written to `folder` in SD's layout (unet/, vae/, text_encoder/,
    tokenizer/, scheduler/) so that tests load it through the generator's own load path: a two-level
    text-conditioned U-Net on 4×4×4 latents, the tiny VAE (8-px images), a tiny CLIP text tower; random weights
    from torch's RNG seeded 0. Returns the folder."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    text_encoder, tokenizer = tiny_clip(Path(folder) / "_tokenizer_files")
    backbone = StableDiffusionBackbone(
        unet, tiny_vae(), text_encoder, tokenizer, sd_scheduler(), class_names, prompt, null_prompt
    )
    save_sd_backbone(backbone, Path(folder))
    return Path(folder)


# MAR's shape in miniature: 32-px images through a three-times-halving KL VAE to 4 × 4 tokens of 4 channels, a
# one-block width-32 encoder and decoder with 2 buffer tokens, a one-block width-32 diffusion head, 5 classes.
TINY_MAR = MARConfig(
    image_size=32,
    vae_stride=8,
    vae_channels=4,
    width=32,
    depth=1,
    heads=2,
    buffer_size=2,
    num_classes=5,
    diffloss_depth=1,
    diffloss_width=32,
    vae_ch=8,
    vae_ch_mult=(1, 2, 2, 2),
    vae_groups=4,
)


# The pixel-token MAR in miniature: 8-px grey images as 2 × 2 patches (16 tokens of 4 channels), 3 classes.
TINY_PIXEL_MAR = MARConfig(
    image_size=8,
    vae_stride=2,
    vae_channels=4,
    image_channels=1,
    tokenizer="pixel",
    width=16,
    depth=1,
    heads=2,
    buffer_size=2,
    num_classes=3,
    diffloss_depth=1,
    diffloss_width=16,
)


def tiny_mar_backbone(config: MARConfig = TINY_MAR) -> MARBackbone:
    """TINY_MAR (or `config`) with random weights from torch's RNG seeded 0: the same model on every call. The head's
    layers that MAR initialises at zero (AdaLN, output) are drawn too, so that its output depends on its conditions."""
    torch.manual_seed(0)
    mar = MAR(config)
    with torch.no_grad():
        for p in mar.diffloss.net.parameters():
            if not p.any():
                p.normal_(std=0.1)
    return MARBackbone(mar, build_tokenizer(config))


def tiny_mar(folder: Path) -> Path:
    """`tiny_mar_backbone()` written to `folder` in the layout of MAR's release (checkpoint-last.pth, kl16.ckpt) plus
    its config.json, so that tests load it through the generator's own load path. Returns the folder."""
    save_mar_backbone(tiny_mar_backbone(), Path(folder))
    return Path(folder)


def tiny_teacher(num_outputs=10, class_indices=None) -> Teacher:
    """A width-8 ConvNet-3 on 8×8 RGB images, the same weights on every call."""
    torch.manual_seed(0)
    return Teacher(
        create_student("convnet3", num_outputs, 3, 8, width=8), 8, 3, [0.5] * 3, [0.25] * 3, class_indices=class_indices
    )


def tiny_bn_teacher(num_outputs=10) -> Teacher:
    """A ResNet-18 of channels (4, 4, 8, 8) on 8×8 RGB images (batch norm, the small-input stem), the same weights
    and batch-norm statistics on every call (running statistics set away from their initial 0 and 1)."""
    torch.manual_seed(0)
    model = create_student("resnet18", num_outputs, 3, 8, channels=[4, 4, 8, 8])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return Teacher(model, 8, 3, [0.5] * 3, [0.25] * 3)


def random_real(n: int, label: int, channels: int = 3, size: int = 8) -> torch.Tensor:
    """`n` uint8 images of noise standing for class `label`'s real images, the same for the same label."""
    return torch.randint(
        0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(label), dtype=torch.uint8
    )


def tiny_task(
    ipc: int, seed: int, label: int, real: torch.Tensor | None = None, channels: int = 3, size: int = 8
) -> ClassTask:
    """One class of a 10-class task on `size`×`size` images, keyed `c<label>`."""
    return ClassTask(
        label=label, key=f"c{label}", ipc=ipc, seed=seed, real=real, num_classes=10, image_size=size, channels=channels
    )


def real_task(real: RealData, label: int, ipc: int, seed: int, n_real: int | None = None) -> ClassTask:
    """Class `label` of the real data as a task, with its first `n_real` training images (all: None)."""
    images = real.train.class_images(label)
    return ClassTask(
        label,
        real.classes[label],
        ipc,
        seed,
        images if n_real is None else images[:n_real],
        len(real.classes),
        real.image_size,
        real.channels,
    )


def tiny_suite_raw() -> dict:
    """tests/tiny-suite.yaml as a mapping, to change before `write_suite`."""
    return yaml.safe_load(TINY_SUITE.read_text())


def write_suite(raw: dict, path: Path) -> Path:
    """A suite file holding `raw`, at `path`."""
    path.write_text(yaml.safe_dump(raw))
    return path


def stand_in_prepared(**hashes) -> SimpleNamespace:
    """Prepared models' identities without preparing any (what a set's key reads): one stand-in backbone for
    every kind a method may declare."""
    prepared = SimpleNamespace(fine_tuned={}, **hashes)
    prepared.for_method = lambda name: prepared
    return prepared


BROKEN_IMAGES = ("train/coat/0003.png", "train/bag/zz-garbage.jpg")  # what `broken_image_folder` spoils


def broken_image_folder(root: Path, per_class: int = 8) -> Path:
    """A grey ImageFolder of real Fashion-MNIST images (coat and bag; `per_class` training and 2 test PNGs each)
    holding two files PIL cannot decode: a PNG cut to half its bytes (a copy that stopped midway) and a .jpg of
    bytes that are no image at all (BROKEN_IMAGES). Made once per `root`."""
    from PIL import Image

    if (root / BROKEN_IMAGES[1]).exists():
        return root
    train = load_fashion_mnist(FASHION_ROOT, "train")
    for key in ("coat", "bag"):
        label = FASHION_MNIST_CLASSES.index(key)
        positions = train.indices_of(label)[: per_class + 2].tolist()
        for split, chosen in (("train", positions[:per_class]), ("test", positions[per_class:])):
            (root / split / key).mkdir(parents=True, exist_ok=True)
            for i, position in enumerate(chosen):
                Image.fromarray(train.images[position, 0].numpy(), "L").save(root / split / key / f"{i:04d}.png")
    cut = root / BROKEN_IMAGES[0]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    (root / BROKEN_IMAGES[1]).write_bytes(bytes(range(256)) * 4)
    return root
