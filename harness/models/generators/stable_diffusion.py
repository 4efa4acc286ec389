"""Kind `stable-diffusion`: Stable Diffusion v1.5 (a text-conditioned U-Net, its VAE, the CLIP text encoder and
tokenizer) through diffusers, behind the Backbone protocol the methods use on a DiT.

A class condition is an integer, as on a DiT: the class's index in the backbone's class list (`backbone.classes`,
e.g. imagenet-1k, found by WNID), turned into the prompt `prompt.format(name=...)` with the class's name from the
list's `.names.txt`; `null_class` (one past the last class) is the null prompt, the empty prompt SD's
classifier-free guidance was trained on unless the suite or the method's paper says another (a negative prompt is
a null prompt: diffusers guides against it in the unconditional pass's place). Each prompt is encoded once and
cached. A method whose paper prompted differently asks for its prompts with `with_prompts` (methods/base.py
`Method.prompts`), a view sharing the models with its own prompts and cache.

DIFT features (Tang et al. 2023) are read at the output of a U-Net up block (`block_features`), the block DIFT
reads SD at (`up_ft_index`), as `depth` up blocks: the same hook a DiT offers at a transformer block.

The folder (or hub id) has diffusers' layout: unet/, vae/, text_encoder/, tokenizer/, scheduler/. Its module
sorts after pretrained_dit.py, so the kinds register after pixel-dit and dit.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import string
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from harness.core.identity import CLASSES_DIR, config_hash, read_class_list
from harness.models.generators.dit import hub_kwargs
from harness.models.generators.pretrained_dit import SD_VAE
from harness.models.generators.registry import DTYPES, Generator, GeneratorError, count_flops, register_generator

SD_V1_5 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# SD v1.5's published architecture in diffusers' layout (its unet/config.json, text_encoder/config.json: the
# CLIP ViT-L/14 text tower), so that the plan sizes it on the meta device without the hub.
SD_V1_5_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[320, 640, 1280, 1280],
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD_V1_5_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)
# SD v1.5's noise schedule (its scheduler/scheduler_config.json): scaled-linear betas 0.00085 … 0.012.
SD_V1_5_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
# SD v1.5 was trained dropping the text condition for 10 % of its steps (the model card: "10% dropping of the
# text-conditioning to improve classifier-free guidance sampling").
SD_TEXT_DROPOUT = 0.1


class StableDiffusionBackbone(torch.nn.Module):
    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: DDIMScheduler,
        class_names: list[str],
        prompt: str = "{name}",
        null_prompt: str = "",
    ):
        """`class_names[c]` names condition c; `prompt` is the template its prompt is made from, `null_prompt`
        the prompt of `null_class`."""
        super().__init__()
        self.unet, self.vae, self.text_encoder, self.scheduler = unet, vae, text_encoder, scheduler
        self.tokenizer = tokenizer
        self.class_names = list(class_names)
        self.prompt, self.null_prompt = prompt, null_prompt
        self._embeddings: dict[int, torch.Tensor] = {}
        self.num_classes = len(self.class_names)
        self.null_class = self.num_classes
        self.latent_channels = int(unet.config.in_channels)
        self.latent_size = int(unet.config.sample_size)
        self.image_channels = int(vae.config.in_channels)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_size = self.latent_size * self.vae_scale
        self.scaling_factor = float(vae.config.scaling_factor)  # 0.18215 in SD v1.5's vae/config.json
        self.clip_sample = False
        self.guided_channels = self.latent_channels  # SD guides every channel (diffusers' pipelines)
        self.learned_variance = False
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False)
        self.register_buffer("betas", scheduler.betas.clone().double(), persistent=False)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.requires_grad_(False)
        self.eval()

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @property
    def class_dropout(self) -> float:
        return SD_TEXT_DROPOUT

    def with_prompts(self, prompt: str | None = None, null_prompt: str | None = None) -> StableDiffusionBackbone:
        """This backbone with other prompts (None: keep this one's): the same models, its own prompt cache."""
        view = copy.copy(self)
        view.prompt = self.prompt if prompt is None else prompt
        view.null_prompt = self.null_prompt if null_prompt is None else null_prompt
        view._embeddings = {}
        return view

    def prompt_of(self, label: int) -> str:
        if label == self.null_class:
            return self.null_prompt
        if not 0 <= label < self.num_classes:
            raise ValueError(f"condition {label} is not a class of this backbone (0 … {self.num_classes - 1})")
        return self.prompt.format(name=self.class_names[label])

    @torch.no_grad()
    def text_embedding(self, label: int) -> torch.Tensor:
        """The CLIP text encoder's last hidden states of the condition's prompt (tokens, width), padded to the
        tokenizer's length as diffusers' pipelines pad; computed once per condition."""
        if label not in self._embeddings:
            ids = self.tokenizer(
                self.prompt_of(label),
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            self._embeddings[label] = self.text_encoder(ids)[0][0]
        return self._embeddings[label]

    def conditions(self, labels: torch.Tensor) -> torch.Tensor:
        """The text embeddings (N, tokens, width) of each label."""
        return torch.stack([self.text_embedding(int(c)) for c in labels.tolist()])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (N, 3, H, W) → latents × the VAE's scaling factor; the posterior mean (deterministic)."""
        x = images.to(self.device, torch.float32) * 2 - 1
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(x.to(dtype)).latent_dist.mean.float() * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images in [0, 1]."""
        dtype = next(self.vae.parameters()).dtype
        x = self.vae.decode((latents / self.scaling_factor).to(dtype)).sample.float()
        return ((x + 1) / 2).clamp(0, 1)

    def output(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The U-Net's noise prediction for the prompts of `labels` (`null_class`: the null prompt)."""
        n = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).expand(n)
        labels = torch.as_tensor(labels, device=x_t.device).long().expand(n)
        dtype = next(self.unet.parameters()).dtype
        context = self.conditions(labels).to(dtype)
        return self.unet(x_t.to(dtype), t, encoder_hidden_states=context).sample.float()

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.output(x_t, t, labels)

    def guided_output(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
        """Classifier-free guidance as diffusers' SD pipelines form it: null + scale · (cond − null) on every
        channel, both passes in one batch; scale 1 is the conditional pass alone."""
        if scale == 1.0:
            return self.output(x_t, t, labels)
        n = x_t.shape[0]
        null = torch.full((n,), self.null_class, device=x_t.device, dtype=torch.long)
        labels = torch.as_tensor(labels, device=x_t.device).long().expand(n)
        t = torch.as_tensor(t, device=x_t.device).expand(n)
        both = self.output(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]))
        cond, uncond = both[:n], both[n:]
        return uncond + scale * (cond - uncond)

    def eps_cfg(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
        return self.guided_output(x_t, t, labels, scale)

    @property
    def depth(self) -> int:
        """The U-Net's up blocks: where `block_features` reads."""
        return len(self.unet.up_blocks)

    def block_features(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, block: int) -> torch.Tensor:
        """The output of U-Net up block `block` as tokens (N, H·W, channels) for the prompts of `labels`: DIFT's
        features (its SD extractor reads `up_ft_index` 1, the second up block)."""
        captured = []
        handle = self.unet.up_blocks[block].register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.output(x_t, t, labels)
        finally:
            handle.remove()
        return captured[0].float().flatten(2).transpose(1, 2)


def load_sd_backbone(
    path_or_id: str | Path,
    class_names: list[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    prompt: str = "{name}",
    null_prompt: str = "",
) -> StableDiffusionBackbone:
    """unet/, vae/, text_encoder/, tokenizer/ and scheduler/ from a hub id or a local folder. The scheduler's noise
    schedule is what the harness's samplers read (SD ships a PNDM config: the same betas)."""
    src = str(path_or_id)
    kw = hub_kwargs()
    scheduler = DDIMScheduler.from_pretrained(src, subfolder="scheduler", **kw)
    tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)
    text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", dtype=dtype, **kw)
    kw["low_cpu_mem_usage"] = importlib.util.find_spec("accelerate") is not None
    unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", torch_dtype=dtype, **kw)
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=dtype, **kw)
    backbone = StableDiffusionBackbone(unet, vae, text_encoder, tokenizer, scheduler, class_names, prompt, null_prompt)
    return backbone.to(device)


def save_sd_backbone(backbone: StableDiffusionBackbone, path: Path) -> None:
    """Write the layout `load_sd_backbone` reads."""
    path = Path(path)
    backbone.unet.save_pretrained(path / "unet")
    backbone.vae.save_pretrained(path / "vae")
    backbone.text_encoder.save_pretrained(path / "text_encoder")
    backbone.tokenizer.save_pretrained(path / "tokenizer")
    backbone.scheduler.save_pretrained(path / "scheduler")


def character_tokenizer(folder: Path, max_length: int) -> CLIPTokenizer:
    """A CLIP tokenizer over single characters (no merges), padding to `max_length` as CLIP's does: what the
    rehearsal and the tests tokenize with, since CLIP's own vocabulary comes only from the hub. Prompts get other
    ids than CLIP's, the same shapes. Its files are written to `folder` (a tokenizer is built from files)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase) + list(".,'-")
    vocab = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)


def class_names_of(classes: str) -> list[str]:
    """The names of a class list shipped in harness/classes/ (its `.names.txt`, one per key, in order)."""
    return read_class_list(CLASSES_DIR / f"{classes}.names.txt")


def text_parameters(config: dict) -> int:
    """The parameters of a CLIP text encoder of `config` (built on the meta device)."""
    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(**config))
    return sum(p.numel() for p in model.parameters())


@register_generator
class StableDiffusionGenerator(Generator):
    """Stable Diffusion (v1.5 by default) from the hub or a local copy: had, never trained; prompts made from
    the backbone's class list."""

    kind = "stable-diffusion"
    default_guided_channels = None

    def typical_guidance(self) -> float:
        return 7.5  # diffusers' StableDiffusionPipeline guidance_scale default

    @property
    def source(self) -> str:
        return self.config.pretrained or SD_V1_5

    @staticmethod
    def check_required(config, fail) -> None:
        if not config.classes:
            fail(
                "backbone.classes",
                "required for a text-conditioned backbone: the class list whose names make the prompts (imagenet-1k)",
            )
        elif not (CLASSES_DIR / f"{config.classes}.names.txt").is_file():
            fail("backbone.classes", f"no names for {config.classes!r}: harness/classes/{config.classes}.names.txt")

    @staticmethod
    def check(config, image_size: int, fail) -> None:
        if config.guided_channels is not None:
            fail("backbone.guided_channels", "a text-conditioned U-Net guides every channel, as diffusers' pipelines")
        try:
            config.prompt.format(name="x")
        except (KeyError, IndexError, ValueError):
            fail("backbone.prompt", f"{config.prompt!r} must be a template whose only field is {{name}}")

    def prepare(self, real, out: Path) -> tuple[str, str]:
        b = self.config
        try:
            UNet2DConditionModel.load_config(self.source, subfolder="unet", **hub_kwargs())
        except Exception as e:
            raise GeneratorError(
                f"backbone.pretrained: cannot load {self.source!r} ({type(e).__name__}); without network, set it "
                f"to a local copy of the model (unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
            ) from None
        return self.source, config_hash(
            {
                "pretrained": self.source,
                "dtype": b.dtype,
                "classes": b.classes,
                "prompt": b.prompt,
                "null_prompt": b.null_prompt,
            }
        )

    def load(self, source: str, device="cpu") -> StableDiffusionBackbone:
        b = self.config
        return load_sd_backbone(
            source, class_names_of(b.classes), device, DTYPES[b.dtype], prompt=b.prompt, null_prompt=b.null_prompt
        )

    def random_backbone(self) -> StableDiffusionBackbone:
        """SD v1.5 at its published architecture (U-Net, VAE, CLIP ViT-L/14 text tower) with random weights and its
        noise schedule, for the rehearsal; the tokenizer is a character-level stand-in (CLIP's vocabulary is the
        hub's), padding to CLIP's 77 positions, so every tensor has SD's shape."""
        if self.source != SD_V1_5:
            raise GeneratorError(f"backbone.pretrained: only {SD_V1_5} is known without its weights")
        dtype = DTYPES[self.config.dtype]
        unet = UNet2DConditionModel.from_config(SD_V1_5_UNET)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD_V1_5_TEXT, bos_token_id=0, eos_token_id=1, pad_token_id=1))
        with tempfile.TemporaryDirectory(prefix="ddbench-tokenizer-") as folder:  # read whole when built
            tokenizer = character_tokenizer(Path(folder), SD_V1_5_TEXT["max_position_embeddings"])
        scheduler = DDIMScheduler(
            num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, **SD_V1_5_SCHEDULE
        )
        b = self.config
        backbone = StableDiffusionBackbone(
            unet,
            AutoencoderKL(**SD_VAE),
            text_encoder,
            tokenizer,
            scheduler,
            class_names_of(b.classes),
            b.prompt,
            b.null_prompt,
        )
        return backbone.to(dtype)

    def flops(self, channels: int, num_classes: int) -> tuple[float, float, int, str]:
        """One U-Net evaluation of one 64 × 64 latent with a 77-token context, and one VAE decode; the text
        encoder runs once per prompt (a class's and the null one), not per step, so it is left out of the
        per-evaluation cost but counted in the parameters."""
        local = Path(self.source) / "unet" / "config.json"
        if local.is_file():
            unet_config = {k: v for k, v in json.loads(local.read_text()).items() if not k.startswith("_")}
            what = f"{self.source} (local config)"
        elif self.source == SD_V1_5:
            unet_config, what = SD_V1_5_UNET, f"{self.source} (published architecture)"
        else:
            raise GeneratorError(
                f"backbone.pretrained: cannot size {self.source!r} without the hub; "
                f"known: {SD_V1_5}, or a local folder with unet/config.json"
            )
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(unet_config)
            size, width = unet.config.sample_size, unet.config.cross_attention_dim
            x = torch.zeros(1, unet.config.in_channels, size, size)
            context = torch.zeros(1, SD_V1_5_TEXT["max_position_embeddings"], width)
            denoiser = count_flops(unet, x, torch.zeros(1, dtype=torch.long), encoder_hidden_states=context)
            params = sum(p.numel() for p in unet.parameters())
            autoencoder = AutoencoderKL(**SD_VAE)
            vae = count_flops(autoencoder.decode, torch.zeros(1, 4, size, size))
            params += sum(p.numel() for p in autoencoder.parameters())
        if width == SD_V1_5_TEXT["hidden_size"]:
            params += text_parameters(SD_V1_5_TEXT)
            what += " + SD VAE + CLIP ViT-L/14 text encoder"
        else:
            what += " + SD VAE"
        return denoiser, vae, params, what
