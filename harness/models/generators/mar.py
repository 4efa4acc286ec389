"""Kind `mar`: MAR (masked autoregressive generation with a diffusion-loss head; Li et al. 2024), MAR-Base with its
KL-16 VAE by default, from a local folder holding the released checkpoints; the networks are mar_model.py's.

MAR is not a noise predictor over a whole latent, so its backbone offers encode/decode and class conditions as every
backbone does, and `sample` in place of `eps`: methods written for MAR (CaO2's MAR variant, plain MAR sampling) call
it; DiT-protocol methods do not run on it. The folder is the reference's release, side by side:
`checkpoint-last.pth` (its `model_ema` weights, as the reference evaluates, else `model`), `kl16.ckpt` (or
`backbone.vae`, the VAE's file) and, optionally, `config.json` (a `MARConfig`; absent: MAR-Base at 256 px).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from harness.core.identity import config_hash
from harness.models.generators.mar_model import KLVAE, MAR, MAR_VAE_SCALE, MARConfig, mask_schedule
from harness.models.generators.registry import DTYPES, Generator, GeneratorError, count_flops, register_generator

MAR_BASE = MARConfig()
CHECKPOINT, VAE_FILE, CONFIG_FILE = "checkpoint-last.pth", "kl16.ckpt", "config.json"
VAE_PARTS = ("encoder", "decoder", "quant_conv", "post_quant_conv")
# CaO2's MAR extension (seed 000 §3.5, Table 5) samples MAR-B with 32 autoregressive steps of 100 denoising steps;
# MAR's own evaluation uses 256 AR steps, temperature 1.0 and the linear guidance schedule (LTH14/mar README).
DEFAULT_AR_STEPS, DEFAULT_DIFFUSION_STEPS, DEFAULT_TEMPERATURE = 32, 100, 1.0
MAR_B_CFG = 2.9  # the README's MAR-B evaluation with guidance: --cfg 2.9 --cfg_schedule linear


class MARBackbone(torch.nn.Module):
    """MAR + its VAE. Latents are the VAE's, scaled by 0.2325 as the transformer sees them: (16, 16, 16) at 256 px.
    Class `null_class` (one past the last) is the learned fake class guidance was trained with."""

    def __init__(self, mar: MAR, vae: KLVAE):
        super().__init__()
        self.mar, self.vae = mar, vae
        c = mar.config
        self.num_classes = c.num_classes
        self.null_class = c.num_classes
        self.latent_channels, self.latent_size = c.vae_channels, c.seq_side
        self.image_size, self.image_channels = c.image_size, 3
        self.scaling_factor = MAR_VAE_SCALE
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


def _torch_load(path: Path) -> dict:
    # The reference's checkpoints also hold its argparse Namespace (`args`): allowed, nothing else is.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


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
    mar, autoencoder = MAR(config), KLVAE(config)
    checkpoint = _torch_load(folder / CHECKPOINT)
    weights = checkpoint.get("model_ema") or checkpoint["model"]
    mar.load_state_dict(weights)
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
    torch.save({"model": state, "model_ema": state}, folder / CHECKPOINT)
    torch.save({"model": backbone.vae.state_dict()}, folder / VAE_FILE)


def mar_parameters(config: MARConfig) -> tuple[int, int]:
    """The parameters of MAR (transformer + head) and of its VAE, built on the meta device."""
    with torch.device("meta"):
        mar, vae = MAR(config), KLVAE(config)
    return sum(p.numel() for p in mar.parameters()), sum(p.numel() for p in vae.parameters())


def sampling_flops(config: MARConfig, num_iter: int = DEFAULT_AR_STEPS, steps: int = DEFAULT_DIFFUSION_STEPS):
    """FLOPs of one AR step of one image, averaged over the `num_iter` steps (meta device), and of one VAE decode.
    A step is the encoder's blocks over the known tokens and the buffer, the decoder's over every position, and the
    head's `steps` denoising evaluations of the tokens it reveals (the embeddings and projections, under 1 %, are
    left out); unguided (guidance doubles the transformer and the head)."""
    with torch.device("meta"):
        mar, vae = MAR(config), KLVAE(config)
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


@register_generator
class MARGenerator(Generator):
    """MAR (MAR-Base by default) from a local folder with the released checkpoint and VAE: had, never trained."""

    kind = "mar"
    default_guided_channels = None

    def typical_guidance(self) -> float:
        return MAR_B_CFG

    @staticmethod
    def check_required(config, fail) -> None:
        if not config.pretrained:
            fail(
                "backbone.pretrained",
                f"required for kind mar: a local folder with MAR's {CHECKPOINT} and the VAE's {VAE_FILE}",
            )

    @staticmethod
    def check(config, image_size: int, fail) -> None:
        if config.guided_channels is not None:
            fail("backbone.guided_channels", "MAR guides its diffusion head's whole token, as the reference does")
        if config.dtype != "float32":
            # Half-precision weights would meet the float32 tokens and noise the sampler makes; the reference
            # samples under autocast instead, which this kind does not offer yet.
            fail("backbone.dtype", "kind mar runs in float32")

    def prepare(self, real, out: Path) -> tuple[str, str]:
        b = self.config
        folder = Path(b.pretrained)
        vae_field = "backbone.pretrained" if b.vae in (None, "subfolder") else "backbone.vae"
        for path, field in ((folder / CHECKPOINT, "backbone.pretrained"), (vae_path(folder, b.vae), vae_field)):
            if not path.is_file():
                raise GeneratorError(
                    f"{field}: no {path} (MAR is loaded from local files: LTH14/mar's release, the hub is not used)"
                )
        return str(folder), config_hash(
            {"pretrained": str(folder), "vae": b.vae, "dtype": b.dtype, "classes": b.classes, "kind": self.kind}
        )

    def load(self, source: str, device="cpu") -> MARBackbone:
        return load_mar_backbone(source, self.config.vae, device, DTYPES[self.config.dtype])

    def flops(self, channels: int, num_classes: int) -> tuple[float, float, int, str]:
        """One AR step of one image (32 steps of 100 denoising steps, CaO2's setting) and one VAE decode."""
        folder = Path(self.config.pretrained or "")
        config, what = (
            (read_config(folder), f"{folder} (local config)")
            if (folder / CONFIG_FILE).is_file()
            else (MAR_BASE, "MAR-Base (published architecture)")
        )
        step, decode = sampling_flops(config)
        params = sum(mar_parameters(config))
        return step, decode, params, what + " + KL-16 VAE"
