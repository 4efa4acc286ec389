"""Class-conditional DiT backbones through diffusers: DiT-XL/2 with the SD VAE, or the harness's pixel DiT.

Both are a `DiTTransformer2DModel` + an optional `AutoencoderKL` + a scheduler config, stored the way the
hub stores `facebook/DiT-XL-2-256` (subfolders transformer/, vae/, scheduler/), so the harness's own
trained backbone loads through exactly the code path a user's pretrained one does.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding

from harness.models.generators.registry import count_flops

# DiT's `forward_with_cfg` guides only the first three of DiT-XL/2's four latent channels "for exact
# reproducibility reasons" (facebookresearch/DiT models.py l.258-262; MinimaxDiffusion and CaO2 keep it): the
# guidance every DiT-based paper ran.
DIT_GUIDED_CHANNELS = 3


class DiTBackbone(torch.nn.Module):
    def __init__(
        self,
        transformer: DiTTransformer2DModel,
        scheduler: DDIMScheduler,
        vae: AutoencoderKL | None = None,
        clip_sample: bool | None = None,
        guided_channels: int | None = None,
    ):
        """`guided_channels`: how many leading output channels classifier-free guidance combines (None: every
        noise channel); the rest are the conditional pass's raw output, as in DiT's `forward_with_cfg`."""
        super().__init__()
        self.transformer, self.vae, self.scheduler = transformer, vae, scheduler
        cfg = transformer.config
        self.num_classes = int(cfg.num_embeds_ada_norm)
        # diffusers' LabelEmbedding keeps one extra row for the dropped ("null") label when trained with CFG.
        self.null_class = self.num_classes
        self.latent_channels = int(cfg.in_channels)
        self.latent_size = int(cfg.sample_size)
        self.image_channels = self.latent_channels if vae is None else int(vae.config.in_channels)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        self.image_size = self.latent_size * self.vae_scale
        self.scaling_factor = float(vae.config.scaling_factor) if vae is not None else 1.0
        # Pixel-space samples live in [-1, 1]: clipping x0 keeps high guidance from saturating them.
        self.clip_sample = (vae is None) if clip_sample is None else clip_sample
        self.guided_channels = self.latent_channels if guided_channels is None else int(guided_channels)
        if not 1 <= self.guided_channels <= self.latent_channels:
            raise ValueError(
                f"guided_channels: must be in [1, {self.latent_channels}] (the latent channels), got {guided_channels}"
            )
        # Noise and, where the model learns its variance (DiT's learn_sigma), as many variance channels.
        self.learned_variance = int(cfg.out_channels or self.latent_channels) == 2 * self.latent_channels
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False)
        # Float64 as DiT's gaussian_diffusion.py computes its schedules: the DDPM sampler's respaced posterior.
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
        """The rate at which the model's label embedding replaces a label by the null class in train mode, as
        classifier-free guidance trained it (diffusers' `LabelEmbedding.dropout_prob`, DiT's `class_dropout_prob`,
        0.1); 0 for a model without a null label. diffusers gives every block its own copy of the embedding, all
        built with the same rate: the first one's is the model's."""
        embedding = next((m for m in self.transformer.modules() if isinstance(m, LabelEmbedding)), None)
        return float(embedding.dropout_prob) if embedding is not None else 0.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (N, C, H, W) → latents. The posterior mean, so encoding is deterministic."""
        x = images.to(self.device, torch.float32) * 2 - 1
        if self.vae is None:
            return x
        dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(x.to(dtype)).latent_dist.mean.float() * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images in [0, 1]."""
        if self.vae is None:
            x = latents
        else:
            dtype = next(self.vae.parameters()).dtype
            x = self.vae.decode((latents / self.scaling_factor).to(dtype)).sample.float()
        return ((x + 1) / 2).clamp(0, 1)

    def output(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The transformer's whole output for class `labels` (`null_class` = unconditional): the noise, then
        DiT-XL/2's variance channels (learn_sigma) where it has them."""
        t = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        labels = torch.as_tensor(labels, device=x_t.device).long().expand(x_t.shape[0])
        dtype = next(self.transformer.parameters()).dtype
        return self.transformer(x_t.to(dtype), timestep=t, class_labels=labels).sample.float()

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Noise prediction for class `labels` (`null_class` = unconditional)."""
        return self.output(x_t, t, labels)[:, : self.latent_channels]

    def guided_output(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
        """The whole output under classifier-free guidance, formed as DiT's `forward_with_cfg` forms it: the
        first `guided_channels` channels are null + scale · (cond − null), both passes in one batch; the
        channels after them (further noise channels, the variance) are the conditional pass's. Every guided
        sampler goes through here."""
        if scale == 1.0:
            return self.output(x_t, t, labels)
        n, k = x_t.shape[0], self.guided_channels
        null = torch.full((n,), self.null_class, device=x_t.device, dtype=torch.long)
        labels = torch.as_tensor(labels, device=x_t.device).long().expand(n)
        t = torch.as_tensor(t, device=x_t.device).expand(n)
        both = self.output(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]))
        cond, uncond = both[:n], both[n:]
        guided = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])
        return torch.cat([guided, cond[:, k:]], dim=1)

    @property
    def depth(self) -> int:
        return len(self.transformer.transformer_blocks)

    def block_features(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, block: int) -> torch.Tensor:
        """The token activations after transformer block `block` (N, tokens, width) for class `labels`: the
        intermediate features DIFT (Tang et al. 2023) reads from a denoiser."""
        captured = []
        handle = self.transformer.transformer_blocks[block].register_forward_hook(
            lambda _module, _inputs, out: captured.append(out)
        )
        try:
            self.output(x_t, t, labels)
        finally:
            handle.remove()
        return captured[0].float()

    def eps_cfg(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
        """The guided noise prediction (`guided_output`'s noise channels)."""
        return self.guided_output(x_t, t, labels, scale)[:, : self.latent_channels]


def hub_kwargs() -> dict:
    # Users on clusters without network set HF_HUB_OFFLINE=1; a local directory never needs the network.
    return {"local_files_only": os.environ.get("HF_HUB_OFFLINE", "0") == "1"}


def load_dit_backbone(
    path_or_id: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    vae: str | Path | None = "subfolder",
    guided_channels: int | None = None,
) -> DiTBackbone:
    """Load transformer/ (+ vae/) + scheduler/ from a hub id or a local directory.

    `vae="subfolder"` takes vae/ beside the transformer when present (the hub's DiT-XL-2-256 ships
    sd-vae-ft-ema there); a path or hub id loads a separate VAE (the papers decode with
    stabilityai/sd-vae-ft-mse); None means a pixel-space model. `guided_channels` is `DiTBackbone`'s.
    """
    src = str(path_or_id)
    kw = hub_kwargs()
    scheduler = DDIMScheduler.from_pretrained(src, subfolder="scheduler", **kw)
    # diffusers loads without `accelerate` anyway, after a warning on every load: ask for what it will do.
    kw["low_cpu_mem_usage"] = importlib.util.find_spec("accelerate") is not None
    transformer = DiTTransformer2DModel.from_pretrained(src, subfolder="transformer", torch_dtype=dtype, **kw)
    autoencoder = None
    if vae == "subfolder":
        local = Path(src)
        if not local.exists() or (local / "vae").is_dir():
            autoencoder = AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=dtype, **kw)
    elif vae is not None:
        autoencoder = AutoencoderKL.from_pretrained(str(vae), torch_dtype=dtype, **kw)
    backbone = DiTBackbone(transformer, scheduler, autoencoder, guided_channels=guided_channels)
    return backbone.to(device)


def save_dit_backbone(backbone: DiTBackbone, path: Path) -> None:
    """Write the hub layout that `load_dit_backbone` reads."""
    path = Path(path)
    backbone.transformer.save_pretrained(path / "transformer")
    backbone.scheduler.save_pretrained(path / "scheduler")
    if backbone.vae is not None:
        backbone.vae.save_pretrained(path / "vae")


def transformer_flops(model: DiTTransformer2DModel) -> tuple[float, int]:
    """FLOPs of one evaluation of one latent by a DiT transformer (built on the meta device), and its parameters."""
    size = model.config.sample_size
    x = torch.zeros(1, model.config.in_channels, size, size)
    t, y = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    return count_flops(model, x, timestep=t, class_labels=y), sum(p.numel() for p in model.parameters())
