"""The generator registry: one class per kind of diffusion backbone a suite may name (`backbone.kind`),
registered by that name, as methods (methods/registry.py) and students (timm's registry) are. The suite's
checks, `prepare` and the plan ask the class; none of them branches on the kind (docs/extending.md, "Add a
generator").
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from harness.core.identity import config_hash
from harness.models.generators.sampling import ddim_sample

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

_REGISTRY: dict[str, type] = {}


class GeneratorError(Exception):
    """A backbone cannot be had or sized; one line naming the suite field (the stage adds the suite's file)."""


class Generator:
    """A kind of backbone: everything the harness does that depends on the kind. Built around the suite's
    `backbone` section (a `BackboneConfig`, whose `kind` is this class's `kind`).

    A subclass sets `kind` and `default_guided_channels` and writes `check`, `prepare`, `load` and `flops`;
    `prepare_training` only where `prepare` trains the backbone."""

    kind: str = ""
    # How many noise channels guidance combines where the suite does not say (None: every one).
    default_guided_channels: int | None = None
    # The dataclass of `backbone.train` for a kind `prepare` trains (None: the kind is had, never trained); the
    # suite's mapping is built into it (harness/config/coerce.py), so each kind's training settings are its own.
    train_config: type | None = None
    # Whether a section without `train:` is trained at `train_config`'s defaults (pixel-dit: always trained), or
    # trained only where the suite writes `train:` (MAR: otherwise the released model is loaded).
    train_by_default: bool = True
    # What `flops` prices one of, as the plan names it: one denoiser evaluation of one latent, for noise predictors.
    evaluation: str = "evaluation"

    def __init__(self, config):
        self.config = config

    @staticmethod
    def check_required(config, fail) -> None:
        """The fields this kind cannot do without, checked right after the kind itself: `fail(field, message)`."""

    @staticmethod
    def check(config, image_size: int, fail) -> None:
        """The suite's checks of this kind's fields, after the fields every kind has: `fail(field, message)`."""

    def guided_channels(self) -> int | None:
        """How many noise channels guidance combines: as the suite sets it, else the kind's default."""
        if self.config.guided_channels is not None:
            return self.config.guided_channels
        return self.default_guided_channels

    def typical_guidance(self) -> float:
        """The guidance scale this backbone samples at by default: what a paper's guidance written for another
        generator is mapped onto (methods/base.py `map_guidance`)."""
        raise NotImplementedError

    def check_guided_channels(self, latent_channels: int) -> None:
        n = self.guided_channels()
        if n is not None and n > latent_channels:
            raise GeneratorError(
                f"backbone.guided_channels: {n} is more than the backbone's {latent_channels} latent channels"
            )

    def prepare(self, real, out: Path) -> tuple[str, str]:
        """The backbone's source (what `load` reads: a folder or hub id) and its identity hash, made (trained,
        fetched) into the cache if it must be. GeneratorError where it cannot be had."""
        raise NotImplementedError

    def load(self, source: str, device="cpu"):
        """The Backbone protocol object (harness/models/generators/__init__.py) at `source`."""
        raise NotImplementedError

    def flops(self, channels: int, num_classes: int) -> tuple[float, float, int, str]:
        """For the plan, on the meta device: FLOPs of one denoiser evaluation of one latent and of one VAE
        pass of one image (0 without a VAE), the parameters of both, and what was sized. GeneratorError where
        it cannot be sized without the hub."""
        raise NotImplementedError

    def random_backbone(self):
        """The Backbone protocol object at this kind's true architecture with random weights, needing neither the
        hub nor training: what the rehearsal (perf/rehearsal.py) measures memory and FLOPs on. GeneratorError
        where the architecture is not known without the hub."""
        raise GeneratorError(f"backbone.kind: {self.kind} cannot be built at its true size without its weights")

    @torch.no_grad()
    def check_images(
        self, backbone, condition: int, count: int, generator: torch.Generator, steps: int, cfg_scale: float, batch=100
    ) -> torch.Tensor:
        """`count` images in [0, 1] of the backbone's class `condition` for the backbone check (harness/stages/
        prepare.py), drawn from `generator`: DDIM over the noise predictor at `steps` steps and guidance
        `cfg_scale`, for every kind that predicts noise; a kind that samples otherwise (MAR) overrides it."""
        noise = torch.randn((count, *backbone.latent_shape), generator=generator)
        images = []
        for i in range(0, count, batch):
            z = ddim_sample(backbone, noise[i : i + batch].to(backbone.device), condition, steps, cfg_scale)
            images.append(backbone.decode(z))
        return torch.cat(images)

    def check_method(self, config, where: str, fail) -> None:
        """A method's settings against this backbone, at load, for what only the kind knows (MAR: no more AR steps
        than tokens): `fail(field, message)`, `where` naming the method (`methods.<name>`)."""

    def check_settings(self) -> dict:
        """What else decides the backbone check's samples beside the backbone's identity and the suite's `check_*`
        fields (a part of the check's cache key; empty for the kinds whose check is DDIM at `check_steps`)."""
        return {}

    def check_evaluations(self) -> float:
        """The `flops` units one backbone-check image costs (its decode and the teacher's look priced apart): the
        check's DDIM steps, each guided (the conditional and the null pass)."""
        return self.config.check_steps * 2

    def prepare_training(self) -> tuple[int, str] | None:
        """What `prepare` trains, for the plan: the samples it trains on (steps × batch) and what to call it;
        None for a backbone that is had, not trained."""
        return None

    def trained_steps(self) -> int | None:
        """The training steps of the backbone `prepare` trains (what names it among the checks of its training
        run, issue 31 item 1); None for a backbone that is had, not trained, or a kind that does not say."""
        return None

    def key_at_steps(self, real, steps: int) -> str | None:
        """The identity `prepare` would give this backbone trained for `steps` steps instead of the suite's (the
        same training run, stopped elsewhere); None where the kind does not say."""
        return None


def _cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, also counting attention as a CPU runs it: torch counts the fused attention kernels of
    GPUs (and the matrix products of the decomposed attention on the meta device) but has no formula for the CPU's
    flash attention, which would leave DiT-XL/2's attention (8.5 of its 237 GFLOPs) out of a count on real tensors."""
    aten = torch.ops.aten
    return FlopCounterMode(
        display=False,
        custom_mapping={
            aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
        },
    )


def count_flops(model, *inputs, **kwargs) -> float:
    with flop_counter() as counter:
        model(*inputs, **kwargs)
    return float(counter.get_total_flops())


def register_generator(cls):
    if not cls.kind or cls.kind in _REGISTRY:
        raise ValueError(f"generator kind {cls.kind!r} is empty or registered twice")
    _REGISTRY[cls.kind] = cls
    return cls


def get_generator(kind: str) -> type:
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown generator {kind!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def list_generators() -> list[str]:
    """The kinds in the order they registered: the package imports its modules by name."""
    return list(_REGISTRY)


def generator_for(config) -> Generator:
    """The generator of the suite's `backbone` section."""
    return get_generator(config.kind)(config)


# Training a kind `prepare` trains (pixel-dit, a trained MAR): the threads it takes and where it checkpoints.


def idle_cores() -> int:
    """The cores no other process keeps busy (the last minute's load average off this process's cores), at
    least one: torch's default of every core beside busy Ray actors or other jobs made a pixel DiT step 3–6 s
    instead of 0.55 s with one thread (issue 13)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores - round(os.getloadavg()[0])))


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def training_dir(out: Path, identity: dict, prefix: str) -> Path:
    """Where a kind `prepare` trains (`<prefix>-training-<hash>` in the cache): keyed by all but its step count, so
    raising `steps` extends the finished run from its last checkpoint. A run asked for fewer steps than that
    checkpoint holds trains in its own folder."""
    steps = identity["train"]["steps"]
    every_step_count = {**identity, "train": {**identity["train"], "steps": None}}
    shared = Path(out) / "cache" / f"{prefix}-training-{config_hash(every_step_count)}"
    checkpoint = shared / "checkpoint.pt"
    if checkpoint.exists() and torch.load(checkpoint, map_location="cpu", weights_only=False)["step"] > steps:
        return shared.with_name(f"{shared.name}-{steps}-steps")
    return shared
