"""MAR's networks (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization"), written from the
paper and read against LTH14/mar: the masked-autoregressive transformer, its diffusion-loss MLP head with that head's
own cosine-schedule Gaussian diffusion, and the KL-16 VAE whose 16 × 16 grid of 16-channel tokens it models.

Parameter names follow the released checkpoints (MAR's `checkpoint-last.pth`, the VAE's `kl16.ckpt`), so that their
state dicts load strictly; the transformer blocks are timm's ViT `Block`, as the reference's are. Sampling draws every
random number (generation orders, the head's noise) on the CPU from one `torch.Generator` per image, so an image
does not depend on the batch it is drawn in, nor on the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from harness.models.generators.sampling import respaced_schedule

# The VAE latents' scale: MAR's engine multiplies the KL-16 posterior by 0.2325 before the transformer sees it and
# divides by it before decoding (engine_mar.py).
MAR_VAE_SCALE = 0.2325
TOKENIZERS = ("kl16", "pixel")


@dataclass(frozen=True)
class MARConfig:
    """An architecture. Defaults are MAR-Base at 256 px (the paper's Table 1 / the reference's `mar_base` with
    `--diffloss_d 6 --diffloss_w 1024`): 12 + 12 blocks of width 768, 12 heads, a 6-block width-1024 MLP head, 64
    buffer tokens, a KL-16 VAE with 16 channels (16 × 16 tokens).

    `tokenizer: pixel` replaces the VAE by p × p pixel patches (space-to-depth, `vae_stride` = p): tokens of
    `image_channels` · p² channels, pixels in [−1, 1], latent scale 1 — for data no public VAE covers (the MAR that
    `prepare` trains on Fashion-MNIST)."""

    image_size: int = 256
    vae_stride: int = 16  # the tokenizer's downsampling: the KL VAE's, or the pixel patch's side
    vae_channels: int = 16  # token width (patch size 1)
    width: int = 768  # encoder and decoder alike, as every published MAR
    depth: int = 12  # encoder blocks; the decoder has as many
    heads: int = 12
    mlp_ratio: float = 4.0
    buffer_size: int = 64
    num_classes: int = 1000
    label_drop_prob: float = 0.1
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    mask_ratio_min: float = 0.7
    diffloss_depth: int = 6
    diffloss_width: int = 1024
    diffusion_batch_mul: int = 4
    # KL-16 VAE (LDM's KL autoencoder as MAR trains it): base channels and multipliers, 2 residual blocks a level.
    vae_ch: int = 128
    vae_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    vae_groups: int = 32
    # "kl16" (the VAE above) or "pixel" (patches; the vae_ch* fields then unused); the images' channels.
    tokenizer: str = "kl16"
    image_channels: int = 3

    def __post_init__(self):
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer: must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}")
        if self.image_size % self.vae_stride:
            raise ValueError(f"vae_stride {self.vae_stride} must divide image_size {self.image_size}")
        if self.tokenizer == "pixel" and self.vae_channels != self.image_channels * self.vae_stride**2:
            raise ValueError(
                f"vae_channels: pixel tokens of {self.vae_stride}² patches of {self.image_channels} channels have "
                f"{self.image_channels * self.vae_stride**2}, got {self.vae_channels}"
            )

    @property
    def latent_scale(self) -> float:
        """What the transformer's latents are the tokenizer's output times: 0.2325 for KL-16, 1 for pixels."""
        return MAR_VAE_SCALE if self.tokenizer == "kl16" else 1.0

    @property
    def seq_side(self) -> int:
        return self.image_size // self.vae_stride

    @property
    def seq_len(self) -> int:
        return self.seq_side**2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vae_ch_mult"] = list(self.vae_ch_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MARConfig:
        d = dict(d)
        if "vae_ch_mult" in d:
            d["vae_ch_mult"] = tuple(d["vae_ch_mult"])
        return cls(**d)


# ---------------------------------------------------------------------------------------------------------------
# The diffusion head's Gaussian diffusion: 1000 steps of the improved-DDPM cosine schedule, ε-prediction with a
# learned variance range (trained by MSE + the variational bound), sampled by a respaced ancestral sampler.


def cosine_betas(steps: int = 1000, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: ᾱ(t) = cos²((t + 0.008) / 1.008 · π/2), β capped at 0.999 (float64)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor(
        [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)],
        dtype=torch.float64,
    )


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _discretized_gaussian_nll(x, mean, log_scale):
    """−log p(x) of a Gaussian discretised to 256 bins over [−1, 1] (the ADM decoder term at t = 0)."""

    def cdf(v):
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))

    centred, inv_stdv = x - mean, torch.exp(-log_scale)
    cdf_plus, cdf_min = cdf(inv_stdv * (centred + 1 / 255)), cdf(inv_stdv * (centred - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return -log_probs


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, frequencies: int = 256):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequencies // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class ResBlock(nn.Module):
    """LayerNorm → AdaLN shift/scale → Linear-SiLU-Linear, gated, residual."""

    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x, y):
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(self.in_ln(x) * (1 + scale) + shift)


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x, y):
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class SimpleMLPAdaLN(nn.Module):
    """The denoiser of one token: x_t (C) and timestep t, conditioned on the transformer's vector z; outputs ε and
    the variance interpolation (2C)."""

    def __init__(self, in_channels: int, width: int, z_channels: int, depth: int):
        super().__init__()
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(in_channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * in_channels)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        # Zero AdaLN and output (as the reference, DiT-style): an untrained head predicts ε = 0.
        for block in self.res_blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, t, c):
        x = self.input_proj(x)
        y = self.time_embed(t) + self.cond_embed(c)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)


class DiffLoss(nn.Module):
    """The diffusion head: p(x | z) of one token by a small MLP denoiser, with its own 1000-step cosine diffusion
    (ε-prediction, learned variance range, loss = MSE + VLB as improved DDPM) and a respaced ancestral sampler."""

    def __init__(
        self, channels: int, z_channels: int, width: int, depth: int, train_steps: int = 1000, clip_denoised=False
    ):
        super().__init__()
        self.channels = channels
        # Sampling clips each step's x̂_0 to [−1, 1] (improved DDPM's `clip_denoised`): for pixel tokens, which lie
        # there; MAR's VAE latents are unbounded and the reference samples them unclipped.
        self.clip_denoised = clip_denoised
        self.net = SimpleMLPAdaLN(channels, width, z_channels, depth)
        # The schedule stays float64 on the CPU, as plain attributes rather than buffers: moving or casting the
        # model (`.to(device, dtype)`) must not round it; each use casts the terms it needs.
        self.betas = betas = cosine_betas(train_steps)
        ac = self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
        post_var = betas * (1 - ac_prev) / (1 - ac)
        self.post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        self.post_c1 = betas * ac_prev.sqrt() / (1 - ac)
        self.post_c2 = (1 - ac_prev) * (1 - betas).sqrt() / (1 - ac)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.betas)

    def loss(self, target, z, mask=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss of tokens `target` (N, C) given conditions `z` (N, D), averaged over `mask` (N,)
        where given: MSE on ε plus the variational bound in bits, which alone trains the variance."""
        n, dev = target.shape[0], target.device
        t_cpu = torch.randint(0, self.num_train_timesteps, (n,), generator=generator)
        t = t_cpu.to(dev)
        noise = torch.randn(target.shape, generator=generator).to(dev, target.dtype)

        def at(values):
            return values[t_cpu].to(dev, torch.float32)[:, None]

        ac = self.alphas_cumprod
        x_t = at(ac.sqrt()) * target + at((1 - ac).sqrt()) * noise
        out = self.net(x_t, t, z)
        eps, var_values = out[:, : self.channels], out[:, self.channels :]
        mse = ((noise - eps) ** 2).mean(dim=1)
        # The variational bound with the mean frozen: only the variance learns from it.
        x0 = at((1 / ac).sqrt()) * x_t - at((1 / ac - 1).sqrt()) * eps.detach()
        mean = at(self.post_c1) * x0 + at(self.post_c2) * x_t
        frac = (var_values + 1) / 2
        logvar = frac * at(self.betas.log()) + (1 - frac) * at(self.post_logvar)
        true_mean = at(self.post_c1) * target + at(self.post_c2) * x_t
        kl = _normal_kl(true_mean, at(self.post_logvar), mean, logvar).mean(dim=1) / math.log(2.0)
        nll = _discretized_gaussian_nll(target, mean, 0.5 * logvar).mean(dim=1) / math.log(2.0)
        loss = mse + torch.where(t == 0, nll, kl)
        if mask is not None:
            return (loss * mask).sum() / mask.sum()
        return loss.mean()

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        steps: int,
        temperature: float,
        cfg: float,
        counts: Sequence[int],
        generators: Sequence[torch.Generator],
    ) -> torch.Tensor:
        """Tokens (N, C) for conditions `z`: where `cfg` ≠ 1, z is (2N, D), the conditional rows then the
        unconditional ones, and ε = ε_u + cfg · (ε_c − ε_u) with the conditional pass's variance. Respaced
        ancestral sampling over `steps` kept timesteps from N(0, I); each step's noise × `temperature`. The rows
        are images' tokens in order, `counts[i]` of them image i's, whose noise comes from `generators[i]`."""
        n, dev = sum(counts), z.device
        guided = cfg != 1.0
        schedule = respaced_schedule(self.betas, steps)

        def noise() -> torch.Tensor:
            return torch.cat([torch.randn(k, self.channels, generator=g) for k, g in zip(counts, generators)]).to(dev)

        def at(values, i):
            return values[i].to(dev, torch.float32)

        x = noise()
        for i in reversed(range(steps)):
            t = torch.full((n,), schedule.timesteps[i], device=dev, dtype=torch.long)
            out = self.net(torch.cat([x, x]) if guided else x, torch.cat([t, t]) if guided else t, z)
            if guided:
                cond, uncond = out[:n], out[n:]
                eps = uncond[:, : self.channels] + cfg * (cond[:, : self.channels] - uncond[:, : self.channels])
                var_values = cond[:, self.channels :]
            else:
                eps, var_values = out[:, : self.channels], out[:, self.channels :]
            ac = schedule.alphas_cumprod
            x0 = at((1 / ac).sqrt(), i) * x - at((1 / ac - 1).sqrt(), i) * eps
            if self.clip_denoised:
                x0 = x0.clamp(-1, 1)
            mean = at(schedule.posterior_mean_coef1, i) * x0 + at(schedule.posterior_mean_coef2, i) * x
            if i == 0:
                x = mean
                continue
            frac = (var_values + 1) / 2
            logvar = frac * at(schedule.betas.log(), i) + (1 - frac) * at(schedule.posterior_log_variance_clipped, i)
            x = mean + (0.5 * logvar).exp() * noise() * temperature
        return x


# ---------------------------------------------------------------------------------------------------------------
# The masked-autoregressive transformer.


def mask_schedule(seq_len: int, num_iter: int) -> list[int]:
    """How many tokens remain masked after each of the `num_iter` steps: ⌊L · cos(π/2 · (k+1)/K)⌋ (MaskGIT's
    cosine), at least one fewer than before and at least one, until the last step predicts every token left."""
    masked, counts = seq_len, []
    for step in range(num_iter):
        if step == num_iter - 1:
            masked = 0
        else:
            target = math.floor(seq_len * math.cos(math.pi / 2 * (step + 1) / num_iter))
            masked = max(1, min(masked - 1, target))
        counts.append(masked)
    return counts


def linear_cfg(cfg: float, seq_len: int, masked_next: int) -> float:
    """MAR's "linear" guidance schedule (after Muse): 1 + (cfg − 1) · (L − masked)/L, where `masked` is the
    count left masked after the step (at least 1, as the reference computes it before the last step's override)."""
    return 1 + (cfg - 1) * (seq_len - max(masked_next, 1)) / seq_len


class MAR(nn.Module):
    """An MAE-style encoder/decoder over the token grid: the encoder sees the known tokens and `buffer_size` class
    tokens, the decoder fills masked positions with a learned mask token, and the diffusion head predicts each
    masked token's distribution from the decoder's vector there."""

    def __init__(self, config: MARConfig):
        super().__init__()
        c = self.config = config
        self.seq_len, self.token_channels = c.seq_len, c.vae_channels
        self.class_emb = nn.Embedding(c.num_classes, c.width)
        self.fake_latent = nn.Parameter(torch.zeros(1, c.width))  # the learned null class of guidance
        self.z_proj = nn.Linear(c.vae_channels, c.width)
        self.z_proj_ln = nn.LayerNorm(c.width, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, c.seq_len + c.buffer_size, c.width))

        def blocks():
            return nn.ModuleList(
                Block(
                    c.width,
                    c.heads,
                    c.mlp_ratio,
                    qkv_bias=True,
                    norm_layer=partial(nn.LayerNorm, eps=1e-6),
                    proj_drop=c.proj_dropout,
                    attn_drop=c.attn_dropout,
                )
                for _ in range(c.depth)
            )

        self.encoder_blocks = blocks()
        self.encoder_norm = nn.LayerNorm(c.width, eps=1e-6)
        self.decoder_embed = nn.Linear(c.width, c.width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.width))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, c.seq_len + c.buffer_size, c.width))
        self.decoder_blocks = blocks()
        self.decoder_norm = nn.LayerNorm(c.width, eps=1e-6)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, c.seq_len, c.width))
        for p in (
            self.class_emb.weight,
            self.fake_latent,
            self.mask_token,
            self.encoder_pos_embed_learned,
            self.decoder_pos_embed_learned,
            self.diffusion_pos_embed_learned,
        ):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.diffloss = DiffLoss(
            c.vae_channels, c.width, c.diffloss_width, c.diffloss_depth, clip_denoised=c.tokenizer == "pixel"
        )

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) → (N, h·w, C), row-major."""
        return latents.flatten(2).transpose(1, 2)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        s = self.config.seq_side
        return tokens.transpose(1, 2).reshape(tokens.shape[0], self.token_channels, s, s)

    def encode_tokens(self, tokens, mask, class_embedding) -> torch.Tensor:
        """The encoder over the unmasked tokens (mask 1 = masked; every row the same count) and the buffer, whose
        positions all hold the class embedding."""
        c = self.config
        x = self.z_proj(tokens)
        n = x.shape[0]
        buffer = class_embedding[:, None].expand(n, c.buffer_size, c.width)
        x = torch.cat([buffer, x], dim=1) + self.encoder_pos_embed_learned
        x = self.z_proj_ln(x)
        keep = torch.cat([torch.zeros(n, c.buffer_size, device=x.device), mask], dim=1) == 0
        x = x[keep].reshape(n, -1, c.width)
        for block in self.encoder_blocks:
            x = block(x)
        return self.encoder_norm(x)

    def decode_tokens(self, x, mask) -> torch.Tensor:
        """The decoder: encoder outputs back at their positions, the mask token elsewhere; the head's conditions
        (N, L, width) for every position."""
        c = self.config
        x = self.decoder_embed(x)
        n = x.shape[0]
        keep = torch.cat([torch.zeros(n, c.buffer_size, device=x.device), mask], dim=1) == 0
        full = self.mask_token.to(x.dtype).expand(n, c.seq_len + c.buffer_size, c.width).clone()
        full[keep] = x.reshape(-1, c.width)
        x = full + self.decoder_pos_embed_learned
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)[:, c.buffer_size :]
        return x + self.diffusion_pos_embed_learned

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
        """MAR's training loss of scaled VAE tokens (N, L, C): a random order, a mask ratio from the left half of
        N(1, 0.25²) truncated at `mask_ratio_min`, labels dropped to the null class at `label_drop_prob`, the head's
        loss on the masked tokens, each repeated `diffusion_batch_mul` times."""
        c, n, dev = self.config, tokens.shape[0], tokens.device
        orders = torch.stack([torch.randperm(c.seq_len, generator=generator) for _ in range(n)]).to(dev)
        while True:  # rejection: 1 − |N(0, 0.25²)| until it lands in [mask_ratio_min, 1]
            ratio = 1 - abs(float(torch.randn((), generator=generator)) * 0.25)
            if ratio >= c.mask_ratio_min:
                break
        masked = math.ceil(c.seq_len * ratio)
        mask = torch.zeros(n, c.seq_len, device=dev).scatter(1, orders[:, :masked], 1.0)
        embedding = self.class_emb(labels)
        drop = (torch.rand(n, generator=generator) < c.label_drop_prob).to(dev, embedding.dtype)[:, None]
        embedding = drop * self.fake_latent + (1 - drop) * embedding
        z = self.decode_tokens(self.encode_tokens(tokens, mask, embedding), mask)
        k = c.diffusion_batch_mul
        return self.diffloss.loss(
            tokens.reshape(-1, c.vae_channels).repeat(k, 1),
            z.reshape(-1, c.width).repeat(k, 1),
            mask.reshape(-1).repeat(k),
            generator=generator,
        )

    @torch.no_grad()
    def sample_tokens(
        self,
        embedding: torch.Tensor,
        generators: Sequence[torch.Generator],
        num_iter: int,
        steps: int,
        cfg: float = 1.0,
        temperature: float = 1.0,
        cfg_schedule: str = "linear",
    ) -> torch.Tensor:
        """Latents (N, C, h, w), scaled as the transformer sees them, for class embeddings `embedding` (N, width):
        `num_iter` masked-autoregressive steps in a random order per image (from its generator), each predicting
        the tokens the cosine schedule unmasks with `steps` denoising steps of the head."""
        if cfg_schedule not in ("linear", "constant"):
            raise ValueError(f"cfg_schedule: linear or constant, got {cfg_schedule!r}")
        c, n, dev = self.config, len(generators), self.fake_latent.device
        orders = torch.stack([torch.randperm(c.seq_len, generator=g) for g in generators]).to(dev)
        tokens = torch.zeros(n, c.seq_len, c.vae_channels, device=dev)
        masked = c.seq_len
        if cfg != 1.0:
            embedding = torch.cat([embedding, self.fake_latent.expand(n, -1)])
        for step, masked_next in enumerate(mask_schedule(c.seq_len, num_iter)):
            mask = torch.zeros(n, c.seq_len, device=dev).scatter(1, orders[:, :masked], 1.0)
            both = torch.cat([mask, mask]) if cfg != 1.0 else mask
            toks = torch.cat([tokens, tokens]) if cfg != 1.0 else tokens
            z = self.decode_tokens(self.encode_tokens(toks, both, embedding), both)
            # This step predicts the positions order[masked_next:masked]; z's rows in (image, position) order.
            predict = torch.zeros(n, c.seq_len, dtype=torch.bool, device=dev).scatter(
                1, orders[:, masked_next:masked], True
            )
            rows = torch.cat([predict, predict]) if cfg != 1.0 else predict
            scale = linear_cfg(cfg, c.seq_len, masked_next if step < num_iter - 1 else 1)
            if cfg_schedule == "constant":
                scale = cfg
            count = masked - masked_next
            if count:
                new = self.diffloss.sample(z[rows], steps, temperature, scale, [count] * n, generators)
                tokens[predict] = new
            masked = masked_next
        return self.unpatchify(tokens)


# ---------------------------------------------------------------------------------------------------------------
# The KL-16 VAE: LDM's KL autoencoder (ch 128, multipliers 1-1-2-2-4, two residual blocks a level, self-attention
# in the encoder's lowest level and in both middles, 16 latent channels), as MAR's vae.py configures it.


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels, eps=1e-6)


class VAEResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class VAEAttention(nn.Module):
    """Single-head self-attention over pixels with 1 × 1 convolutions."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        b, ch, hh, ww = x.shape
        h = self.norm(x)
        q, k, v = (m(h).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, ch, hh, ww)
        return x + self.proj_out(out)


class _Down(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Up(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _middle(channels: int, groups: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = VAEResBlock(channels, channels, groups)
    mid.attn_1 = VAEAttention(channels, groups)
    mid.block_2 = VAEResBlock(channels, channels, groups)
    return mid


class VAEEncoder(nn.Module):
    def __init__(self, c: MARConfig, blocks: int = 2):
        super().__init__()
        g, mult = c.vae_groups, c.vae_ch_mult
        self.conv_in = nn.Conv2d(c.image_channels, c.vae_ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = c.vae_ch
        for level, m in enumerate(mult):
            down, cout = nn.Module(), c.vae_ch * m
            down.block = nn.ModuleList(VAEResBlock(cin if i == 0 else cout, cout, g) for i in range(blocks))
            last = level == len(mult) - 1  # the lowest resolution (16 px at 256): attention after each block
            down.attn = nn.ModuleList(VAEAttention(cout, g) for _ in range(blocks if last else 0))
            if not last:
                down.downsample = _Down(cout)
            self.down.append(down)
            cin = cout
        self.mid = _middle(cin, g)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, 2 * c.vae_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for down in self.down:
            for i, block in enumerate(down.block):
                h = block(h)
                if len(down.attn):
                    h = down.attn[i](h)
            if hasattr(down, "downsample"):
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class VAEDecoder(nn.Module):
    def __init__(self, c: MARConfig, blocks: int = 2):
        super().__init__()
        g, mult = c.vae_groups, c.vae_ch_mult
        cin = c.vae_ch * mult[-1]
        self.conv_in = nn.Conv2d(c.vae_channels, cin, 3, padding=1)
        self.mid = _middle(cin, g)
        ups = []
        for level in reversed(range(len(mult))):
            up, cout = nn.Module(), c.vae_ch * mult[level]
            up.block = nn.ModuleList(VAEResBlock(cin if i == 0 else cout, cout, g) for i in range(blocks + 1))
            up.attn = nn.ModuleList()
            if level != 0:
                up.upsample = _Up(cout)
            ups.insert(0, up)  # `up` is indexed by level, as LDM's checkpoints name it
            cin = cout
        self.up = nn.ModuleList(ups)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, c.image_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for up in reversed(self.up):
            for block in up.block:
                h = block(h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class KLVAE(nn.Module):
    """Images in [−1, 1] ↔ unscaled latents (N, 16, H/16, W/16); encoding gives the posterior's mean."""

    def __init__(self, config: MARConfig):
        super().__init__()
        ch = config.vae_channels
        self.encoder, self.decoder = VAEEncoder(config), VAEDecoder(config)
        self.quant_conv = nn.Conv2d(2 * ch, 2 * ch, 1)
        self.post_quant_conv = nn.Conv2d(ch, ch, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x)).chunk(2, dim=1)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


class PixelTokenizer(nn.Module):
    """Pixel patches as tokens, in KLVAE's place: images in [−1, 1] (N, C, H, W) ↔ (N, C·p², H/p, W/p) by
    space-to-depth (`pixel_unshuffle`), exact both ways; no parameters."""

    def __init__(self, config: MARConfig):
        super().__init__()
        self.patch = config.vae_stride

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.patch)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, self.patch)


def build_tokenizer(config: MARConfig) -> nn.Module:
    """The config's tokenizer: the KL-16 VAE (its weights loaded separately) or pixel patches."""
    return KLVAE(config) if config.tokenizer == "kl16" else PixelTokenizer(config)
