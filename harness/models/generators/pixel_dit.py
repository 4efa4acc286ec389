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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel
from tqdm.auto import tqdm

from harness.core import atomic
from harness.models.generators.dit import DiTBackbone, save_dit_backbone


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
        num_attention_heads=cfg.heads, attention_head_dim=cfg.width // cfg.heads, in_channels=channels,
        out_channels=channels, num_layers=cfg.depth, sample_size=cfg.sample_size, patch_size=cfg.patch_size,
        num_embeds_ada_norm=num_classes, norm_type="ada_norm_zero")


def build_scheduler() -> DDIMScheduler:
    # DDPM's linear schedule over 1,000 steps, as DiT uses.
    return DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         clip_sample=False, set_alpha_to_one=True)


def train_pixel_dit(images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: PixelDiTConfig,
                    out_dir: Path, work_dir: Path, device: str = "cpu", progress: bool = True) -> DiTBackbone:
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
    bar = tqdm(total=cfg.steps, initial=step, desc="prepare: train pixel DiT", disable=not progress,
               mininterval=5)
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
            atomic.torch_save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                          "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "step": step,
                          "config": asdict(cfg)}, ckpt_path)
    bar.close()
    backbone = DiTBackbone(ema.eval(), scheduler)
    save_dit_backbone(backbone, out_dir)
    return backbone
