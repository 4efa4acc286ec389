"""minimax: MinimaxDiffusion (Gu et al., CVPR 2024) — DiT fine-tuned with DiffFit under the minimax criteria,
then sampled as the plain baseline samples.

Fine-tuning (MinimaxDiffusion train_dit.py l.233-285): DiT's training loss plus, per class in the batch,
- representativeness: λ_pos · (1 − min cos(x̂_0, real memory)), the predicted clean latents pulled towards
  the least similar of the class's last `memory_size` real latents;
- diversity: λ_neg · max cos(x̂_0, generated memory), pushed from the most similar of the class's last
  `memory_size` predicted clean latents;
both divided by the number of classes in the batch, and neither before the class has a memory. After the
losses, the batch's real latents and predictions join their class's memories, oldest dropped first.

Defaults (pinned by tests/test_contract.py): MinimaxDiffusion's (train_dit.py, sample.py, run.sh)
    cfg_scale = 4.0                 sample.py l.99 (`--cfg-scale`)
    steps = 50                      sample.py l.100 (`--num-sampling-steps`)
    batch_size = 50                 memory only: images sampled at once
    sampler = "ddpm"                sample.py: DiT's `p_sample_loop` over 50 respaced steps
    fine_tune = True                fine-tune before sampling (False: the suite's backbone as it is)
    epochs = 8                      run.sh / README: `--epochs 8`
    fine_tune_batch_size = 8        run.sh / README: `--global-batch-size 8`
    lr = 0.001                      train_dit.py l.189: AdamW, lr 1e-3, weight decay 0
    ema_decay = 0.9999              train_dit.py l.36 `update_ema`; samples come from the EMA (download.py `find_model`)
    class_dropout = 0.1             models.py l.225: DiT's class_dropout_prob in training
    checkpoint_every = 500          train_dit.py l.353 `--ckpt-every`
    max_steps = None                every epoch; a cap for budgets smaller than an epoch
    fine_tune_seed = 0              train_dit.py l.349 `--global-seed`
    lambda_pos = 0.002              train_dit.py l.360 `--lambda-pos`
    lambda_neg = 0.008              train_dit.py l.361 `--lambda-neg`
    memory_size = 64                train_dit.py l.362 `--memory-size`
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import FineTuneObjective
from .diffusion import Diffusion, DiffusionConfig
from .fine_tuning import FineTuneSettings, diffusion_loss, predicted_x0
from .registry import register_method, register_variant


@dataclass(frozen=True)
class MinimaxConfig(FineTuneSettings, DiffusionConfig):
    sampler: str = "ddpm"
    lambda_pos: float = 0.002
    lambda_neg: float = 0.008
    memory_size: int = 64

    def __post_init__(self):
        DiffusionConfig.__post_init__(self)
        self.check()
        if self.memory_size < 1:
            raise ValueError(f"memory_size: must be at least 1, got {self.memory_size}")


class MemoryBank:
    """Per class, the last `size` items (each one latent), oldest first: the reference's `real_memory` /
    `pseudo_memory` lists, extended by a batch and trimmed from the front (train_dit.py l.271-276)."""

    def __init__(self, size: int):
        self.size = size
        self.items: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.items)

    def get(self, c: int) -> torch.Tensor | None:
        return self.items.get(c)

    def add(self, c: int, batch: torch.Tensor) -> None:
        batch = batch.detach()
        held = self.items.get(c)
        joined = batch if held is None else torch.cat([held, batch.to(held.device)])
        self.items[c] = joined[-self.size :].clone()

    def state_dict(self) -> dict:
        return {c: v.cpu() for c, v in self.items.items()}

    def load_state_dict(self, state: dict, device) -> None:
        self.items = {int(c): v.to(device) for c, v in state.items()}


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of `a` with every row of `b`, both flattened per item."""
    return F.normalize(a.flatten(1), dim=1) @ F.normalize(b.flatten(1), dim=1).T


class MinimaxObjective(FineTuneObjective):
    def __init__(self, config: MinimaxConfig):
        self.config = config
        self.real_memory = MemoryBank(config.memory_size)
        self.generated_memory = MemoryBank(config.memory_size)

    def criteria(
        self, x0: torch.Tensor, x0_pred: torch.Tensor, classes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The representativeness and diversity terms of one batch, then the memories updated with it."""
        cfg = self.config
        pos = neg = x0_pred.new_zeros(())
        present = sorted(set(classes.tolist()))
        for c in present:
            mine = classes == c
            real, generated = self.real_memory.get(c), self.generated_memory.get(c)
            if generated is not None:
                pos = pos + (1 - cosine_matrix(x0_pred[mine], real).min()) * cfg.lambda_pos / len(present)
                neg = neg + cosine_matrix(x0_pred[mine], generated).max() * cfg.lambda_neg / len(present)
            self.real_memory.add(c, x0[mine])
            self.generated_memory.add(c, x0_pred[mine])
        return pos, neg

    def loss(self, backbone, x0, labels, classes, generator):
        t = self.draw_timesteps(len(x0), backbone.num_train_timesteps, generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        per_image, eps, x_t = diffusion_loss(backbone, x0, labels, t, noise)
        diff = per_image.mean()
        pos, neg = self.criteria(x0, predicted_x0(backbone, x_t, t, eps), classes)
        return diff + pos + neg, {
            "diffusion": float(diff.detach()),
            "representativeness": float(pos.detach()),
            "diversity": float(neg.detach()),
        }

    def state_dict(self):
        return {"real": self.real_memory.state_dict(), "generated": self.generated_memory.state_dict()}

    def load_state_dict(self, state):
        device = next(iter(state["real"].values())).device if state["real"] else "cpu"
        self.real_memory.load_state_dict(state["real"], device)
        self.generated_memory.load_state_dict(state["generated"], device)


@register_method
class Minimax(Diffusion):
    name = "minimax"
    # On the harness's pixel DiT: sampled like `diffusion` there (DDIM, 25 steps, guidance 2.0).
    generator_defaults = {"pixel-dit": {"cfg_scale": 2.0, "steps": 25, "sampler": "ddim"}}
    Config = MinimaxConfig
    stage_batches = {**Diffusion.stage_batches, "fine-tune": "fine_tune_batch_size"}

    @classmethod
    def fine_tuning(cls, config):
        return config.fine_tuning(
            {
                "loss": "minimax",
                "lambda_pos": config.lambda_pos,
                "lambda_neg": config.lambda_neg,
                "memory_size": config.memory_size,
            }
        )

    @classmethod
    def fine_tune_objective(cls, config):
        return MinimaxObjective(config)


# The reference's `--condense` off: DiffFit on the diffusion loss alone (Minimax's Table 4 "DiT fine-tuned").
register_variant(
    "minimax-no-criteria",
    Minimax,
    lambda_pos=0.0,
    lambda_neg=0.0,
    doc="minimax's DiffFit fine-tuning without the representativeness and diversity losses.",
)
