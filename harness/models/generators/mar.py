"""Kind `mar`: MAR (masked autoregressive generation with a diffusion-loss head; Li et al. 2024): MAR-Base with its
KL-16 VAE from a local folder holding the released checkpoints (`backbone.pretrained`), or, without one, a small
pixel-token MAR that `prepare` trains on the suite's training split (`backbone.train`, a `MARTrainConfig`); the
networks are mar_model.py's.

MAR is not a noise predictor over a whole latent, so its backbone offers encode/decode and class conditions as every
backbone does, and `sample` in place of `eps`: methods written for MAR (CaO2's MAR variant, plain MAR sampling) call
it; DiT-protocol methods do not run on it. The folder is the reference's release, side by side:
`checkpoint-last.pth` (its `model_ema` weights, as the reference evaluates, else `model`), `kl16.ckpt` (or
`backbone.vae`, the VAE's file) and, optionally, `config.json` (a `MARConfig`; absent: MAR-Base at 256 px). A
pixel-token MAR's folder has no VAE file.

A trained MAR is cached like the pixel DiT (pixel_dit.py): keyed by the kind, the training identity, the data's
fingerprint and the classes; checkpoints every `checkpoint_every` steps and resumes from the last one, so raising
`steps` extends a finished run (the learning rate is constant after warm-up).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.core import atomic, cache
from harness.core.identity import config_hash
from harness.models.generators.mar_model import MAR, MARConfig, build_tokenizer, mask_schedule
from harness.models.generators.registry import (
    DTYPES,
    Generator,
    GeneratorError,
    count_flops,
    idle_cores,
    register_generator,
    torch_threads,
    training_dir,
)

MAR_BASE = MARConfig()
CHECKPOINT, VAE_FILE, CONFIG_FILE = "checkpoint-last.pth", "kl16.ckpt", "config.json"
VAE_PARTS = ("encoder", "decoder", "quant_conv", "post_quant_conv")
# CaO2's MAR extension (seed 000 §3.5, Table 5) samples MAR-B with 32 autoregressive steps of 100 denoising steps;
# MAR's own evaluation uses 256 AR steps, temperature 1.0 and the linear guidance schedule (LTH14/mar README).
DEFAULT_AR_STEPS, DEFAULT_DIFFUSION_STEPS, DEFAULT_TEMPERATURE = 32, 100, 1.0
MAR_B_CFG = 2.9  # the README's MAR-B evaluation with guidance: --cfg 2.9 --cfg_schedule linear


class MARBackbone(torch.nn.Module):
    """MAR + its tokenizer. Latents are the VAE's, scaled by 0.2325 as the transformer sees them: (16, 16, 16) at
    256 px; or pixel patches in [−1, 1], unscaled. Class `null_class` (one past the last) is the learned fake class
    guidance was trained with."""

    def __init__(self, mar: MAR, vae: torch.nn.Module):
        super().__init__()
        self.mar, self.vae = mar, vae
        c = mar.config
        self.num_classes = c.num_classes
        self.null_class = c.num_classes
        self.latent_channels, self.latent_size = c.vae_channels, c.seq_side
        self.image_size, self.image_channels = c.image_size, c.image_channels
        self.scaling_factor = c.latent_scale
        self.requires_grad_(False)
        self.eval()

    @property
    def config(self) -> MARConfig:
        return self.mar.config

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)

    @property
    def device(self) -> torch.device:
        return self.mar.fake_latent.device

    @property
    def class_dropout(self) -> float:
        return self.config.label_drop_prob

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] → scaled latents; the posterior mean (deterministic)."""
        return self.vae.encode(images.to(self.device, torch.float32) * 2 - 1) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents → images in [0, 1]."""
        return ((self.vae.decode(latents.to(self.device) / self.scaling_factor) + 1) / 2).clamp(0, 1)

    def class_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        """The class embedding of each label, the learned null embedding for `null_class`."""
        labels = torch.as_tensor(labels, device=self.device).long()
        null = labels == self.null_class
        embedded = self.mar.class_emb(labels.masked_fill(null, 0))
        return torch.where(null[:, None], self.mar.fake_latent.expand_as(embedded), embedded)

    def conditions(self, latents: torch.Tensor, mask: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """The head's condition vectors (N, L, width) for scaled latents (N, C, h, w) with `mask` (N, L; 1 = masked,
        every row the same count) and class embeddings (N, width): the transformer's pass over the known tokens."""
        mar = self.mar
        return mar.decode_tokens(mar.encode_tokens(mar.patchify(latents), mask, embedding), mask)

    def head_eps(self, tokens: torch.Tensor, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The head's noise prediction for tokens (…, C) noised to its training timesteps `t` (…) with `noise`,
        given conditions `z` (…, width): what its training loss and CaO2's MAR objective (Eq. 6) compare to ε."""
        head, c = self.mar.diffloss, self.latent_channels
        ac = head.alphas_cumprod[t.cpu()].to(tokens.device, tokens.dtype)[..., None]
        x_t = ac.sqrt() * tokens + (1 - ac).sqrt() * noise
        out = head.net(x_t.reshape(-1, c), t.reshape(-1).to(tokens.device), z.reshape(-1, z.shape[-1]))
        return out[:, :c].reshape(tokens.shape)

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor | int,
        generators: Sequence[torch.Generator],
        num_iter: int = DEFAULT_AR_STEPS,
        steps: int = DEFAULT_DIFFUSION_STEPS,
        cfg: float = 1.0,
        temperature: float = DEFAULT_TEMPERATURE,
        cfg_schedule: str = "linear",
    ) -> torch.Tensor:
        """Scaled latents, one per generator (its image's order and noise), of class `labels`: `num_iter` AR steps
        under the cosine mask schedule, `steps` denoising steps each, guidance `cfg` on the linear schedule."""
        n = len(generators)
        labels = torch.as_tensor(labels, device=self.device).long().expand(n)
        if not 1 <= num_iter <= self.config.seq_len:
            raise ValueError(f"num_iter: must be in [1, {self.config.seq_len}] (the tokens), got {num_iter}")
        return self.mar.sample_tokens(
            self.class_embedding(labels), generators, num_iter, steps, cfg, temperature, cfg_schedule
        )


@dataclass(frozen=True)
class MARTrainConfig:
    """A small pixel-token MAR that `prepare` trains (`backbone.train` of kind mar without `backbone.pretrained`).
    The architecture is MAR's at a small size (p × p pixel patches as tokens; defaults: 4 × 4 patches of 28-px
    images, 49 tokens); the optimisation follows MAR's recipe (AdamW, β = (0.9, 0.95), weight decay 0.02 off biases
    and norms, gradient clip 3.0, constant lr after a linear warm-up, EMA) with a larger lr and a shorter EMA for
    a few thousand steps. `sample_ar_steps`: the AR steps the backbone check samples with (and what a method on a
    MAR this small should take), capped by the token count."""

    sample_size: int = 28
    patch_size: int = 4
    width: int = 128
    depth: int = 2  # encoder blocks; the decoder has as many
    heads: int = 4
    mlp_ratio: float = 4.0
    buffer_size: int = 4
    diffloss_width: int = 128
    diffloss_depth: int = 2
    diffusion_batch_mul: int = 1  # MAR-B: 4; here the head costs as much as the transformer
    label_drop_prob: float = 0.1
    mask_ratio_min: float = 0.7
    dropout: float = 0.0  # attention and projection dropout (MAR-B: 0.1; none for a short run of a small model)
    steps: int = 4500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.02
    warmup_steps: int = 200
    ema_decay: float = 0.999
    ema_warmup: bool = True  # min(ema_decay, (1 + step) / (10 + step)), as the pixel DiT
    grad_clip: float = 3.0
    seed: int = 0
    checkpoint_every: int = 250
    sample_ar_steps: int = 16

    def identity(self) -> dict:
        """The fields that name a trained model: all but how often it checkpoints and how it is sampled."""
        return {k: v for k, v in asdict(self).items() if k not in ("checkpoint_every", "sample_ar_steps")}

    def resumable_identity(self) -> dict:
        """What a checkpoint must share with a run to be resumed by it: everything but the step count."""
        return {k: v for k, v in self.identity().items() if k != "steps"}

    def ema_decay_at(self, step: int) -> float:
        return min(self.ema_decay, (1 + step) / (10 + step)) if self.ema_warmup else self.ema_decay

    def model_config(self, channels: int, num_classes: int) -> MARConfig:
        """The pixel-token MAR this trains, for images of `channels` channels and `num_classes` classes."""
        return MARConfig(
            image_size=self.sample_size,
            vae_stride=self.patch_size,
            vae_channels=channels * self.patch_size**2,
            image_channels=channels,
            tokenizer="pixel",
            width=self.width,
            depth=self.depth,
            heads=self.heads,
            mlp_ratio=self.mlp_ratio,
            buffer_size=self.buffer_size,
            num_classes=num_classes,
            label_drop_prob=self.label_drop_prob,
            attn_dropout=self.dropout,
            proj_dropout=self.dropout,
            mask_ratio_min=self.mask_ratio_min,
            diffloss_depth=self.diffloss_depth,
            diffloss_width=self.diffloss_width,
            diffusion_batch_mul=self.diffusion_batch_mul,
        )


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """MAR's `add_weight_decay`: no decay on biases, norms and other 1-d parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def train_mar(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    cfg: MARTrainConfig,
    out_dir: Path,
    work_dir: Path,
    device: str = "cpu",
    progress: bool = True,
    log_every: int = 0,
) -> MARBackbone:
    """Train a pixel-token MAR on uint8 images (N, C, H, W) with MAR's loss (`MAR.loss`) and write its EMA to
    `out_dir` in the release layout (`load_mar_backbone` reads it). Resumes from `work_dir`/checkpoint.pt."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if images.shape[-1] != cfg.sample_size:
        raise ValueError(f"MAR sample_size {cfg.sample_size} != image size {images.shape[-1]}")
    torch.manual_seed(cfg.seed)  # initial weights and dropout
    model = MAR(cfg.model_config(images.shape[1], num_classes)).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    step, gen = 0, torch.Generator().manual_seed(cfg.seed)
    ckpt_path = work_dir / "checkpoint.pt"
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if MARTrainConfig(**state["config"]).resumable_identity() != cfg.resumable_identity():
            raise ValueError(f"checkpoint {ckpt_path} was made with another config")
        if state["step"] > cfg.steps:
            raise ValueError(f"checkpoint {ckpt_path} is at step {state['step']}, past this run's {cfg.steps} steps")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
    # Pixels in [−1, 1] as p × p patch tokens (N, L, C·p²), the layout the backbone's `encode` gives.
    tokens = model.patchify(F.pixel_unshuffle(images.float().div(127.5).sub(1), cfg.patch_size)).to(device)
    labels = labels.to(device)
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="prepare: train MAR", disable=not progress, mininterval=5)
    while step < cfg.steps:
        idx = torch.randint(0, len(tokens), (cfg.batch_size,), generator=gen).to(device)
        loss = model.loss(tokens[idx], labels[idx], generator=gen)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - cfg.ema_decay_at(step))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if log_every and step % log_every == 0:
            cache.log(f"[prepare] MAR step {step}/{cfg.steps} loss {loss.item():.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            atomic.torch_save(
                {
                    "model": model.state_dict(),
                    "ema": ema.state_dict(),
                    "opt": opt.state_dict(),
                    "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                    "config": asdict(cfg),
                },
                ckpt_path,
            )
    bar.close()
    backbone = MARBackbone(ema.eval(), build_tokenizer(ema.config))
    save_mar_backbone(backbone, out_dir)
    return backbone


def _torch_load(path: Path, mmap: bool = False) -> dict:
    # The reference's checkpoints also hold its argparse Namespace (`args`): allowed, nothing else is.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def architecture_mismatch(folder: Path) -> str | None:
    """Why the checkpoint in `folder` is not the MAR its config (or MAR-Base) builds, in a few words; None where
    its weights' names and shapes are exactly the model's. Reads the file memory-mapped and builds the model on the
    meta device, so a release of another size fails in `prepare` in one line, not at load in a worker."""
    config = read_config(folder)
    try:
        checkpoint = _torch_load(Path(folder) / CHECKPOINT, mmap=True)
        weights = checkpoint.get("model_ema") or checkpoint.get("model")
    except Exception as e:  # a truncated or foreign file
        return f"{CHECKPOINT} cannot be read ({type(e).__name__})"
    if not isinstance(weights, dict):
        return f"{CHECKPOINT} holds neither `model_ema` nor `model` weights"
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in MAR(config).state_dict().items()}
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    shapes = sorted(k for k in set(expected) & set(weights) if tuple(weights[k].shape) != expected[k])
    if not (missing or extra or shapes):
        return None
    said = [
        f"{len(x)} {what}, e.g. {x[0]}"
        for x, what in ((missing, "missing"), (extra, "unexpected"), (shapes, "of other shapes"))
        if x
    ]
    built = "its config.json's" if (Path(folder) / CONFIG_FILE).is_file() else "MAR-Base's"
    return f"{CHECKPOINT} is not {built} MAR ({'; '.join(said)})"


def file_digest(path: Path, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file, read in 16 MB chunks (MAR-B's checkpoint is ~0.8 GB: about a second)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_config(folder: Path) -> MARConfig:
    path = Path(folder) / CONFIG_FILE
    return MARConfig.from_dict(json.loads(path.read_text())) if path.is_file() else MAR_BASE


def vae_path(folder: Path, vae: str | None) -> Path:
    if vae not in (None, "subfolder"):
        return Path(vae)
    return Path(folder) / VAE_FILE


def load_mar_backbone(
    folder: str | Path, vae: str | None = "subfolder", device="cpu", dtype=torch.float32
) -> MARBackbone:
    """MAR from `folder` (checkpoint-last.pth, kl16.ckpt unless `vae` names the file, config.json optional);
    strict loading, so a checkpoint of another architecture fails with its keys named."""
    folder = Path(folder)
    config = read_config(folder)
    mar, autoencoder = MAR(config), build_tokenizer(config)
    checkpoint = _torch_load(folder / CHECKPOINT)
    weights = checkpoint.get("model_ema") or checkpoint["model"]
    mar.load_state_dict(weights)
    if config.tokenizer == "pixel":  # no weights
        return MARBackbone(mar, autoencoder).to(device, dtype)
    # An LDM training checkpoint may also hold its loss's weights (LPIPS, discriminator: `loss.*`), which the
    # reference skips by loading non-strictly; the autoencoder's own keys load strictly.
    state = _torch_load(vae_path(folder, vae))["model"]
    autoencoder.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in VAE_PARTS})
    return MARBackbone(mar, autoencoder).to(device, dtype)


def save_mar_backbone(backbone: MARBackbone, folder: Path) -> None:
    """Write the layout `load_mar_backbone` reads (the reference's checkpoint keys; the EMA weights are the model's)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(backbone.config.to_dict(), indent=1))
    state = backbone.mar.state_dict()
    torch.save({"model": state, "model_ema": state}, folder / CHECKPOINT)  # one copy: torch.save shares storages
    if backbone.config.tokenizer == "kl16":
        torch.save({"model": backbone.vae.state_dict()}, folder / VAE_FILE)


def mar_parameters(config: MARConfig) -> tuple[int, int]:
    """The parameters of MAR (transformer + head) and of its VAE, built on the meta device."""
    with torch.device("meta"):
        mar, vae = MAR(config), build_tokenizer(config)
    return sum(p.numel() for p in mar.parameters()), sum(p.numel() for p in vae.parameters())


def sampling_flops(config: MARConfig, num_iter: int = DEFAULT_AR_STEPS, steps: int = DEFAULT_DIFFUSION_STEPS):
    """FLOPs of one AR step of one image, averaged over the `num_iter` steps (meta device), and of one VAE decode.
    A step is the encoder's blocks over the known tokens and the buffer, the decoder's over every position, and the
    head's `steps` denoising evaluations of the tokens it reveals (the embeddings and projections, under 1 %, are
    left out); unguided (guidance doubles the transformer and the head)."""
    with torch.device("meta"):
        mar, vae = MAR(config), build_tokenizer(config)
        mar.eval()
        L, width, depth = config.seq_len, config.width, config.depth

        def block_flops(block, tokens: int) -> float:  # one block over `tokens` (the meta device cannot mask-index)
            return count_flops(block, torch.zeros(1, tokens, width))

        # Every block of a stack costs the same; the head's cost is linear in the tokens it denoises.
        masked = [L, *mask_schedule(L, num_iter)[:-1]]  # masked before each step
        encoder = depth * sum(block_flops(mar.encoder_blocks[0], L - m + config.buffer_size) for m in masked)
        decoder = num_iter * depth * block_flops(mar.decoder_blocks[0], L + config.buffer_size)
        one = (torch.zeros(1, config.vae_channels), torch.zeros(1, dtype=torch.long), torch.zeros(1, width))
        head = L * steps * count_flops(mar.diffloss.net, *one)
        total = encoder + decoder + head
        decode = count_flops(vae.decode, torch.zeros(1, config.vae_channels, config.seq_side, config.seq_side))
    return total / num_iter, decode


# The MAR training settings that must be positive, those that may be 0, and those in [0, 1).
_POSITIVE = (
    "sample_size",
    "patch_size",
    "width",
    "depth",
    "heads",
    "mlp_ratio",
    "buffer_size",
    "diffloss_width",
    "diffloss_depth",
    "diffusion_batch_mul",
    "steps",
    "batch_size",
    "lr",
    "grad_clip",
    "checkpoint_every",
    "sample_ar_steps",
)
_NON_NEGATIVE = ("warmup_steps", "weight_decay")
_FRACTIONS = ("label_drop_prob", "dropout", "ema_decay", "mask_ratio_min")


@register_generator
class MARGenerator(Generator):
    """MAR: MAR-Base by default from a local folder with the released checkpoint and VAE (`backbone.pretrained`),
    or, without one, a small pixel-token MAR trained by `prepare` on the suite's training split (`backbone.train`)."""

    kind = "mar"
    evaluation = "autoregressive step"
    default_guided_channels = None
    train_config = MARTrainConfig
    train_by_default = False  # a suite trains a MAR by writing backbone.train; without it the release is loaded

    def typical_guidance(self) -> float:
        # A released MAR-B samples at the README's 2.9; a MAR trained here at the guidance its suite checks it at.
        return MAR_B_CFG if self.config.pretrained else self.config.check_cfg_scale

    def _train(self) -> MARTrainConfig | None:
        """The suite's training settings where `prepare` trains this MAR (None: the released one is loaded)."""
        train = getattr(self.config, "train", None)
        return train if isinstance(train, MARTrainConfig) else None

    @staticmethod
    def check_required(config, fail) -> None:
        train = getattr(config, "train", None)
        if not config.pretrained and train is None:
            fail(
                "backbone.pretrained",
                f"required for kind mar unless backbone.train sets a MAR for prepare to train: a local folder with "
                f"MAR's {CHECKPOINT} and the VAE's {VAE_FILE}",
            )
        if config.pretrained and train is not None:
            fail("backbone.train", "a MAR is loaded from backbone.pretrained or trained from backbone.train, not both")

    def check_method(self, config, where: str, fail) -> None:
        """A MAR reveals at least one token a step: a method's `num_iter` may not exceed the tokens."""
        tokens = self._architecture(3, 1000)[0].seq_len
        num_iter = getattr(config, "num_iter", None)
        if isinstance(num_iter, int) and num_iter > tokens:
            fail(
                f"{where}.num_iter",
                f"at most this MAR's {tokens} tokens (one revealed a step at least), got {num_iter}",
            )

    def check_settings(self) -> dict:
        return {"ar_steps": self._train().sample_ar_steps} if self._train() is not None else {}

    def check_evaluations(self) -> float:
        """AR steps (the unit of `flops`) per check image, each guided: the conditional and the fake-class pass."""
        config = self._architecture(3, 1000)[0]
        train = self._train()
        steps = train.sample_ar_steps if train is not None else DEFAULT_AR_STEPS
        return min(steps, config.seq_len) * 2

    @staticmethod
    def check(config, image_size: int, fail) -> None:
        if config.guided_channels is not None:
            fail("backbone.guided_channels", "MAR guides its diffusion head's whole token, as the reference does")
        if config.dtype != "float32":
            # Half-precision weights would meet the float32 tokens and noise the sampler makes; the reference
            # samples under autocast instead, which this kind does not offer yet.
            fail("backbone.dtype", "kind mar runs in float32")
        cfg = getattr(config, "train", None)
        if config.pretrained or not isinstance(cfg, MARTrainConfig):
            return

        def number(name):
            value = getattr(cfg, name, None)
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        for name in _POSITIVE:
            if number(name) is not None and number(name) <= 0:
                fail(f"backbone.train.{name}", f"must be positive, got {number(name)}")
        for name in _NON_NEGATIVE:
            if number(name) is not None and number(name) < 0:
                fail(f"backbone.train.{name}", f"must be ≥ 0, got {number(name)}")
        for name in _FRACTIONS:
            if number(name) is not None and not 0 <= number(name) < 1:
                fail(f"backbone.train.{name}", f"must be in [0, 1), got {number(name)}")
        if number("sample_size") and cfg.sample_size != image_size:
            fail(
                "backbone.train.sample_size",
                f"must be the images' size, data.image_size {image_size}, got {cfg.sample_size}",
            )
        if number("patch_size") and number("sample_size") and cfg.sample_size % cfg.patch_size:
            fail("backbone.train.patch_size", f"must divide sample_size {cfg.sample_size}, got {cfg.patch_size}")
        if number("heads") and number("width") and cfg.width % cfg.heads:
            fail("backbone.train.heads", f"must divide width {cfg.width}, got {cfg.heads}")
        if number("sample_ar_steps") and number("patch_size") and number("sample_size"):
            tokens = (cfg.sample_size // cfg.patch_size) ** 2
            if cfg.sample_ar_steps > tokens:
                fail(
                    "backbone.train.sample_ar_steps", f"must be at most the {tokens} tokens, got {cfg.sample_ar_steps}"
                )

    def prepare(self, real, out: Path) -> tuple[str, str]:
        b = self.config
        train = self._train()
        if train is not None:
            return self._prepare_trained(train, real, Path(out))
        folder = Path(b.pretrained)
        vae_field = "backbone.pretrained" if b.vae in (None, "subfolder") else "backbone.vae"
        for path, field in ((folder / CHECKPOINT, "backbone.pretrained"), (vae_path(folder, b.vae), vae_field)):
            if not path.is_file():
                raise GeneratorError(
                    f"{field}: no {path} (MAR is loaded from local files: LTH14/mar's release, the hub is not used)"
                )
        if (why := architecture_mismatch(folder)) is not None:
            raise GeneratorError(f"backbone.pretrained: {why}; another MAR size needs its {CONFIG_FILE} beside it")
        # Named by what the files hold, not where they lie: MAR has no hub id, and each machine's $MAR_BASE differs
        # (the same release elsewhere keeps its sets; a replaced checkpoint at the same path gets new ones).
        files = [folder / CHECKPOINT, vae_path(folder, b.vae)] + (
            [folder / CONFIG_FILE] * (folder / CONFIG_FILE).is_file()
        )
        contents = {f.name: file_digest(f) for f in files}
        return str(folder), config_hash({"files": contents, "dtype": b.dtype, "classes": b.classes, "kind": self.kind})

    def _prepare_trained(self, train: MARTrainConfig, real, out: Path) -> tuple[str, str]:
        identity = {
            "kind": self.kind,
            "train": train.identity(),
            "data": real.train.fingerprint(),
            "classes": real.classes,
        }
        key = config_hash(identity)
        where = cache.cached_dir(out, f"backbone-{key}")
        model_dir = where / "model"
        cache.drop_damaged(model_dir, "backbone", lambda d: load_mar_backbone(d), "training it again")
        if (model_dir / CHECKPOINT).exists():
            cache.log(f"[prepare] backbone: MAR {key} from {where}")
            return str(model_dir), key
        work, threads = training_dir(out, identity, self.kind), idle_cores()
        cache.drop_damaged(
            work / "checkpoint.pt",
            "backbone",  # training resumes from it
            lambda f: torch.load(f, map_location="cpu", weights_only=False),
            "training from the start",
        )
        cache.log(
            f"[prepare] backbone: training MAR {key} ({train.steps} steps on {len(real.train)} images, {threads} "
            f"torch threads; resumes from {work} if interrupted or shorter)"
        )
        images = real.train.load(torch.arange(len(real.train)))
        atomic.sweep_temps(where)  # a model folder a killed run left half-written
        with cache.filling(where), atomic.replacing(model_dir) as tmp, torch_threads(threads):
            train_mar(images, real.train.labels, len(real.classes), train, tmp, work, log_every=100)
        return str(model_dir), key

    def load(self, source: str, device="cpu") -> MARBackbone:
        return load_mar_backbone(source, self.config.vae, device, DTYPES[self.config.dtype])

    def random_backbone(self) -> MARBackbone:
        """MAR-Base and the KL-16 VAE (or the local config's MAR; or the suite's trained MAR's architecture), with
        random weights, for the rehearsal; under `with torch.device("meta")` it costs nothing."""
        config = self._architecture(3, 1000)[0]
        return MARBackbone(MAR(config), build_tokenizer(config))

    def _architecture(self, channels: int, num_classes: int) -> tuple[MARConfig, str]:
        train = self._train()
        if train is not None:
            return train.model_config(channels, num_classes), "pixel-token MAR (suite config)"
        folder = Path(self.config.pretrained or "")
        if (folder / CONFIG_FILE).is_file():
            return read_config(folder), f"{folder} (local config) + KL-16 VAE"
        return MAR_BASE, "MAR-Base (published architecture) + KL-16 VAE"

    def ar_steps(self, backbone: MARBackbone) -> int:
        """The AR steps the backbone check samples with: the trained MAR's `sample_ar_steps`, else MAR's default
        (CaO2's 32), at most one per token."""
        train = self._train()
        steps = train.sample_ar_steps if train is not None else DEFAULT_AR_STEPS
        return min(steps, backbone.config.seq_len)

    @torch.no_grad()
    def check_images(
        self, backbone, condition: int, count: int, generator: torch.Generator, steps: int, cfg_scale: float, batch=100
    ) -> torch.Tensor:
        """MAR's samples for the backbone check: one generator per image seeded from `generator` (its order and
        noise; the batch changes no image), `steps` denoising steps of the head, guidance `cfg_scale` on MAR's
        linear schedule, `ar_steps` AR steps."""
        seeds = torch.randint(0, 2**62, (count,), generator=generator).tolist()
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        num_iter = self.ar_steps(backbone)
        images = []
        for i in range(0, count, batch):
            z = backbone.sample(condition, gens[i : i + batch], num_iter=num_iter, steps=steps, cfg=cfg_scale)
            images.append(backbone.decode(z))
        return torch.cat(images)

    def flops(self, channels: int, num_classes: int) -> tuple[float, float, int, str]:
        """One AR step of one image (averaged over CaO2's 32 steps of 100 denoising steps; the trained MAR's
        `sample_ar_steps`) and one decode."""
        config, what = self._architecture(channels, num_classes)
        train = self._train()
        num_iter = min(train.sample_ar_steps, config.seq_len) if train is not None else DEFAULT_AR_STEPS
        step, decode = sampling_flops(config, num_iter)
        params = sum(mar_parameters(config))
        return step, decode, params, what

    def prepare_training(self) -> tuple[int, str] | None:
        train = self._train()
        if train is None:
            return None
        return train.steps * train.batch_size, f"the pixel-token MAR, {train.steps:,} steps"
