"""One function run data-parallel through Ray Train: the machinery behind distributed students
(harness/stages/evaluate.py) and teachers that `prepare` trains on a cluster's GPUs (harness/stages/prepare.py).

Ray Train V2 keeps a run's result only when `ray.train.report` carries a checkpoint (DESIGN §7), so rank 0's
outputs travel back as one: the caller reads them from that folder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch


@dataclass
class Worker:
    """What a data-parallel function is handed on each worker."""

    device: str
    rank: int
    world: int
    wrap: Callable  # Ray Train's prepare_model: wraps a model in DDP
    folder: Path  # rank 0's outputs go here; they come back to the caller


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def run_data_parallel(
    work: Callable[[Worker], None],
    workers: int,
    use_gpu: bool,
    collect: Callable[[Path], Any],
    storage_path: str | None = None,
) -> Any:
    """`work` on `workers` DDP processes through Ray Train's TorchTrainer (one GPU each where `use_gpu`);
    returns `collect(folder)` of the folder rank 0 wrote."""
    # Ray Train costs half a second to import; only runs that train data-parallel need it.
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer, prepare_model

    def loop(config):
        context = ray.train.get_context()
        device = str(ray.train.torch.get_device()) if use_gpu else "cpu"
        torch.set_num_threads(1)
        with tempfile.TemporaryDirectory() as tmp:
            work(
                Worker(
                    device,
                    context.get_world_rank(),
                    context.get_world_size(),
                    lambda m: prepare_model(m, move_to_device=use_gpu),
                    Path(tmp),
                )
            )
            if context.get_world_rank() != 0:
                ray.train.report({})
                return
            ray.train.report({"rank": 0}, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    result = TorchTrainer(
        loop,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(storage_path=storage_path),
    ).fit()
    with result.checkpoint.as_directory() as folder:
        return collect(Path(folder))
