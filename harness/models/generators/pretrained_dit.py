"""Kind `dit`: a pretrained class-conditional DiT (DiT-XL/2) from the hub or a local copy, decoding through a VAE.

Its module sorts after pixel_dit.py, so the kinds register (and suite errors list them) as they always read:
pixel-dit, then dit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel

from harness.core.identity import config_hash
from harness.models.generators.dit import (
    DIT_GUIDED_CHANNELS,
    DiTBackbone,
    hub_kwargs,
    load_dit_backbone,
    transformer_flops,
)
from harness.models.generators.pixel_dit import build_scheduler
from harness.models.generators.registry import DTYPES, Generator, GeneratorError, count_flops, register_generator

# Published architectures the plan can size without the hub: DiT-XL/2 (Peebles & Xie, Table 1: 28 layers,
# width 1152, 16 heads, patch 2; learned sigma doubles the output channels) in diffusers' layout, and the
# Stable Diffusion VAE every DiT and the references decode with (sd-vae-ft-ema / -mse share its architecture).
DIT_XL_2 = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    in_channels=4,
    out_channels=8,
    num_layers=28,
    patch_size=2,
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_zero",
)
KNOWN_DITS = {
    "facebook/DiT-XL-2-256": {**DIT_XL_2, "sample_size": 32},
    "facebook/DiT-XL-2-512": {**DIT_XL_2, "sample_size": 64},
}
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
)


@register_generator
class DiTGenerator(Generator):
    """A pretrained DiT (DiT-XL/2) from the hub or a local copy, decoding through a VAE: had, never trained."""

    kind = "dit"
    default_guided_channels = DIT_GUIDED_CHANNELS

    def typical_guidance(self) -> float:
        return 4.0  # DiT's sample.py --cfg-scale default, which MinimaxDiffusion's and CaO2's sample.py keep

    @staticmethod
    def check_required(config, fail) -> None:
        if not config.pretrained:
            fail("backbone.pretrained", "required for kind dit: a hub id or a local directory")

    def prepare(self, real, out: Path) -> tuple[str, str]:
        b = self.config
        try:  # only the config: fails fast, before any actor starts, when the hub is out of reach
            config = DiTTransformer2DModel.load_config(b.pretrained, subfolder="transformer", **hub_kwargs())
        except Exception as e:
            raise GeneratorError(
                f"backbone.pretrained: cannot load {b.pretrained!r} ({type(e).__name__}); without "
                f"network, set it to a local copy of the model (transformer/, vae/, scheduler/)"
            ) from None
        if b.vae not in (None, "subfolder"):
            try:
                AutoencoderKL.load_config(b.vae, **hub_kwargs())
            except Exception as e:
                raise GeneratorError(
                    f"backbone.vae: cannot load {b.vae!r} ({type(e).__name__}); without network, "
                    f"set it to a local copy of the VAE (config.json and weights)"
                ) from None
        self.check_guided_channels(int(config["in_channels"]))
        return b.pretrained, config_hash(
            {
                "pretrained": b.pretrained,
                "vae": b.vae,
                "dtype": b.dtype,
                "classes": b.classes,
                "guided_channels": self.guided_channels(),
            }
        )

    def load(self, source: str, device="cpu") -> DiTBackbone:
        return load_dit_backbone(
            source,
            device=device,
            dtype=DTYPES[self.config.dtype],
            vae=self.config.vae,
            guided_channels=self.guided_channels(),
        )

    def architecture(self) -> tuple[dict, str]:
        """The transformer's config, from a local copy or the published architecture, and what it is."""
        b = self.config
        local = Path(b.pretrained) / "transformer" / "config.json"
        if local.is_file():
            config = {k: v for k, v in json.loads(local.read_text()).items() if not k.startswith("_")}
            return config, f"{b.pretrained} (local config)"
        if b.pretrained in KNOWN_DITS:
            return KNOWN_DITS[b.pretrained], f"{b.pretrained} (published architecture)"
        raise GeneratorError(
            f"backbone.pretrained: cannot size {b.pretrained!r} without the hub; "
            f"known: {', '.join(KNOWN_DITS)}, or a local folder with transformer/config.json"
        )

    def random_backbone(self) -> DiTBackbone:
        """DiT-XL/2 (or the local config's DiT) and, where the suite decodes, the SD VAE, randomly initialised, with
        DiT's training schedule (linear β over 1,000 steps, `build_scheduler`), in the suite's dtype."""
        config, _ = self.architecture()
        dtype = DTYPES[self.config.dtype]
        transformer = DiTTransformer2DModel.from_config(config)
        vae = AutoencoderKL(**SD_VAE) if self.config.vae is not None else None
        if dtype != torch.float32:
            transformer, vae = transformer.to(dtype), vae.to(dtype) if vae is not None else None
        return DiTBackbone(transformer, build_scheduler(), vae, guided_channels=self.guided_channels())

    def flops(self, channels: int, num_classes: int) -> tuple[float, float, int, str]:
        b = self.config
        config, what = self.architecture()
        with torch.device("meta"):
            model = DiTTransformer2DModel.from_config(config)
            transformer, params = transformer_flops(model)
            vae = 0.0
            if b.vae is not None:
                # A decode costs more than an encode: the plan prices both as decodes (an upper bound).
                autoencoder = AutoencoderKL(**SD_VAE)
                size = model.config.sample_size
                vae = count_flops(autoencoder.decode, torch.zeros(1, 4, size, size))
                params += sum(p.numel() for p in autoencoder.parameters())
                what += " + SD VAE"
        return transformer, vae, params, what
