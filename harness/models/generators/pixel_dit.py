"""Train a small class-conditional pixel-space DiT for datasets no public diffusion model covers.

The result is saved in the hub layout (transformer/ + scheduler/) and loaded back through
`load_dit_backbone`, the same path DiT-XL/2 takes. Training checkpoints every `checkpoint_every` steps
and resumes from the last checkpoint, because a useful backbone costs tens of minutes on a laptop and may
span sessions or machines. A checkpoint is resumed by any run whose config differs only in `steps`, so a
finished run is extended by raising `steps` (the learning rate is constant after warm-up, so training 6,000
steps and then 2,000 more gives the weights of training 8,000 straight through).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel
from tqdm.auto import tqdm

from harness.core import atomic, cache
from harness.core.identity import config_hash
from harness.models.generators.dit import DiTBackbone, load_dit_backbone, save_dit_backbone, transformer_flops
from harness.models.generators.registry import (
    DTYPES,
    Generator,
    idle_cores,
    register_generator,
    torch_threads,
    training_dir,
)


@dataclass(frozen=True)
class PixelDiTConfig:
    sample_size: int = 28
    patch_size: int = 4
    width: int = 128
    depth: int = 4
    heads: int = 4
    steps: int = 6000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    # The EMA's decay warmed up with the step, min(ema_decay, (1 + step) / (10 + step)) (diffusers' EMAModel
    # `get_decay` without `use_ema_warmup`; TensorFlow's ExponentialMovingAverage with num_updates): at a fixed
    # 0.999, 1,500 steps leave 0.999^1500 ≈ 22 % of the random initial weights in the EMA. The committed
    # fashion-mnist backbone predates it (its suite says false).
    ema_warmup: bool = True

    def identity(self) -> dict:
        """The fields that name a trained model: every field, but `ema_warmup` only where it is off, as a
        config written before the option was one of those models (the committed fashion-mnist backbone)."""
        fields = asdict(self)
        if not self.ema_warmup:
            del fields["ema_warmup"]
        return fields

    def resumable_identity(self) -> dict:
        """What a checkpoint must share with a run to be resumed by it: everything but the step count."""
        return {k: v for k, v in self.identity().items() if k != "steps"}

    def ema_decay_at(self, step: int) -> float:
        return min(self.ema_decay, (1 + step) / (10 + step)) if self.ema_warmup else self.ema_decay


def build_transformer(cfg: PixelDiTConfig, channels: int, num_classes: int) -> DiTTransformer2DModel:
    return DiTTransformer2DModel(
        num_attention_heads=cfg.heads,
        attention_head_dim=cfg.width // cfg.heads,
        in_channels=channels,
        out_channels=channels,
        num_layers=cfg.depth,
        sample_size=cfg.sample_size,
        patch_size=cfg.patch_size,
        num_embeds_ada_norm=num_classes,
        norm_type="ada_norm_zero",
    )


def build_scheduler() -> DDIMScheduler:
    # DDPM's linear schedule over 1,000 steps, as DiT uses.
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
    )


def train_pixel_dit(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    cfg: PixelDiTConfig,
    out_dir: Path,
    work_dir: Path,
    device: str = "cpu",
    progress: bool = True,
) -> DiTBackbone:
    """Train on uint8 images (N, C, H, W) and write the EMA model to `out_dir` in the hub layout."""
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    channels = images.shape[1]
    if images.shape[-1] != cfg.sample_size:
        raise ValueError(f"pixel DiT sample_size {cfg.sample_size} != image size {images.shape[-1]}")
    model = build_transformer(cfg, channels, num_classes).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    scheduler = build_scheduler()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    step, gen = 0, torch.Generator().manual_seed(cfg.seed)
    ckpt_path = work_dir / "checkpoint.pt"
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
        # A checkpoint written before `ema_warmup` existed was trained without it.
        made_with = PixelDiTConfig(**{**asdict(cfg), "ema_warmup": False, **state["config"]})
        if made_with.resumable_identity() != cfg.resumable_identity():
            raise ValueError(f"checkpoint {ckpt_path} was made with another config")
        if step > cfg.steps:
            raise ValueError(f"checkpoint {ckpt_path} is at step {step}, past this run's {cfg.steps} steps")
    data = images.float().div(127.5).sub(1).to(device)
    labels = labels.to(device)
    ac = scheduler.alphas_cumprod.to(device)
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="prepare: train pixel DiT", disable=not progress, mininterval=5)
    while step < cfg.steps:
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen).to(device)
        x0, y = data[idx], labels[idx]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        a = ac[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # The transformer's label embedding drops 10% of labels to the null class in train mode (CFG).
        loss = torch.nn.functional.mse_loss(model(x_t, timestep=t, class_labels=y).sample, noise)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
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
    backbone = DiTBackbone(ema.eval(), scheduler)
    save_dit_backbone(backbone, out_dir)
    return backbone


# The pixel DiT's training settings that must be positive, and those that may be 0.
_POSITIVE = (
    "sample_size",
    "patch_size",
    "width",
    "depth",
    "heads",
    "steps",
    "batch_size",
    "lr",
    "grad_clip",
    "checkpoint_every",
)
_NON_NEGATIVE = ("warmup_steps",)


@register_generator
class PixelDiTGenerator(Generator):
    """The harness's own small pixel-space DiT, trained by `prepare` on the suite's training split (once: cached,
    or the repository's committed weights), for datasets no public diffusion model covers."""

    kind = "pixel-dit"
    default_guided_channels = None  # every channel, as its committed sets were made
    train_config = PixelDiTConfig

    def typical_guidance(self) -> float:
        return self.config.check_cfg_scale  # a backbone trained here: the guidance its suite checks it at

    @staticmethod
    def check(config, image_size: int, fail) -> None:
        """The backbone prepare trains: numbers that would fail (or train nothing) only after the data is loaded."""
        cfg = config.train

        def number(name):
            value = getattr(cfg, name, None)
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        for name in _POSITIVE:
            if number(name) is not None and not number(name) > 0:
                fail(f"backbone.train.{name}", f"must be positive, got {number(name)}")
        for name in _NON_NEGATIVE:
            if number(name) is not None and number(name) < 0:
                fail(f"backbone.train.{name}", f"must be ≥ 0, got {number(name)}")
        if number("ema_decay") is not None and not 0 <= cfg.ema_decay < 1:
            fail("backbone.train.ema_decay", f"must be in [0, 1), got {cfg.ema_decay}")
        if number("sample_size") is not None and cfg.sample_size != image_size:
            fail(
                "backbone.train.sample_size",
                f"must be the images' size, data.image_size {image_size}, got {cfg.sample_size}",
            )
        if number("patch_size") and cfg.sample_size % cfg.patch_size:
            fail("backbone.train.patch_size", f"must divide sample_size {cfg.sample_size}, got {cfg.patch_size}")
        if number("heads") and cfg.width % cfg.heads:
            fail("backbone.train.heads", f"must divide width {cfg.width}, got {cfg.heads}")

    def _identity(self, real, steps: int | None = None) -> dict:
        train = self.config.train if steps is None else dataclasses.replace(self.config.train, steps=steps)
        return {
            "kind": self.kind,
            "train": train.identity(),
            "data": real.train.fingerprint(),
            "classes": real.classes,
        }

    def _published_key(self, key: str, channels: int) -> str:
        """`key` names the trained model; sets made with other guidance than every channel get another identity."""
        n = self.guided_channels()
        return key if n in (None, channels) else config_hash({"backbone": key, "guided_channels": n})

    def trained_steps(self) -> int:
        return self.config.train.steps

    def key_at_steps(self, real, steps: int) -> str:
        return self._published_key(config_hash(self._identity(real, steps)), real.channels)

    def prepare(self, real, out: Path) -> tuple[str, str]:
        train = self.config.train
        identity = self._identity(real)
        key = config_hash(identity)
        where = cache.cached_dir(out, f"backbone-{key}")
        model_dir = where / "model"
        cache.drop_damaged(model_dir, "backbone", lambda d: load_dit_backbone(d, vae=None), "training it again")
        cache.drop_damaged(
            where / "work" / "checkpoint.pt",
            "backbone",  # training resumes from it
            lambda f: torch.load(f, map_location="cpu", weights_only=False),
            "training from the start",
        )
        if (model_dir / "transformer" / "config.json").exists():
            cache.log(f"[prepare] backbone: pixel DiT {key} from {where}")
        else:
            work, threads = training_dir(out, identity, self.kind), idle_cores()
            cache.log(
                f"[prepare] backbone: training pixel DiT {key} ({train.steps} steps on {len(real.train)} "
                f"images, {threads} torch threads; resumes from {work} if interrupted or shorter)"
            )
            images = real.train.load(torch.arange(len(real.train)))
            atomic.sweep_temps(where)  # a model folder a killed run left half-written
            # Training resumes from `work`, never from a half-written model; a killed run leaves no empty `where`.
            with cache.filling(where), atomic.replacing(model_dir) as tmp, torch_threads(threads):
                train_pixel_dit(images, real.train.labels, len(real.classes), train, tmp, work)
        channels = json.loads((model_dir / "transformer" / "config.json").read_text())["in_channels"]
        self.check_guided_channels(channels)
        return str(model_dir), self._published_key(key, channels)

    def load(self, source: str, device="cpu") -> DiTBackbone:
        return load_dit_backbone(
            source, device=device, dtype=DTYPES[self.config.dtype], vae=None, guided_channels=self.guided_channels()
        )

    def flops(self, channels: int, num_classes: int) -> tuple[float, float, int, str]:
        with torch.device("meta"):
            transformer, params = transformer_flops(build_transformer(self.config.train, channels, num_classes))
        return transformer, 0.0, params, "pixel DiT (suite config)"

    def prepare_training(self) -> tuple[int, str]:
        train = self.config.train
        return train.steps * train.batch_size, f"the pixel DiT, {train.steps:,} steps"
