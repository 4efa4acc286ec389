"""Evaluate: train a student on a distilled set under a protocol, test it on the real held-out test set.

`train_student` is the whole training loop, readable in one go. Data stays one tensor on the device and
augmentation is batched (one affine grid per batch), so a tiny student is not dominated by Python
overhead. The reported accuracy is that of the final epoch: choosing the best epoch by test accuracy
would tune on the test set.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .students import create_student


def by_ipc(table: dict[int, int], ipc: int, beyond: int) -> int:
    """The value of the first IPC bound ≥ `ipc` in `table`, or `beyond` above all of them."""
    return next((table[bound] for bound in sorted(table) if ipc <= bound), beyond)


@dataclass
class HardLabelConfig:
    """The hard-label recipe of Minimax / CaO2 (SGD, multistep, CutMix, RRC, flip, colour jitter)."""
    # Epochs by IPC: the first key >= IPC applies, `epochs_beyond` above every key (Minimax argument.py:
    # 1 → 3000, ≤10 → 2000, ≤50 → 1500, ≤200 → 1000, ≤500 → 500, else 300).
    epochs: dict[int, int] = field(default_factory=lambda: {1: 3000, 10: 2000, 50: 1500, 200: 1000, 500: 500})
    epochs_beyond: int = 300
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: list[float] = field(default_factory=lambda: [2 / 3, 5 / 6])  # fractions of training
    gamma: float = 0.2
    cutmix_beta: float = 1.0
    cutmix_prob: float = 1.0  # the reference's mix_p for ImageNet (it uses 0.5 for MNIST-like data)
    rrc_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    flip: bool = True
    color_jitter: float = 0.4
    student_kwargs: dict[str, dict] = field(default_factory=dict)  # per student, e.g. {convnet3: {width: 64}}

    def epochs_for(self, ipc: int) -> int:
        return by_ipc(self.epochs, ipc, self.epochs_beyond)


@dataclass
class SoftLabelConfig:
    """The soft-label recipe of RDED `validation/main.py` (used by CaO2): the teacher relabels every augmented
    batch; KL between temperature-softened student and teacher outputs; AdamW with RDED's cosine."""
    epochs: dict[int, int] = field(default_factory=dict)
    epochs_beyond: int = 300
    # Batch size by IPC (RDED argument.py: 1 → 10, 10 → 50, 50 → 100), doubled for ≥ 100 classes,
    # never above the number of images.
    batch_size: dict[int, int] = field(default_factory=lambda: {1: 10, 10: 50, 50: 100})
    batch_size_beyond: int = 100
    lr: float = 1e-3
    # RDED's per-student AdamW learning rates (names as timm spells them; prefixes match families).
    student_lr: dict[str, float] = field(default_factory=lambda: {
        "efficientnet_b0": 2e-3, "mobilenetv2": 2.5e-3, "vit_": 1e-4, "swin_": 1e-4})
    weight_decay: float = 0.01
    mix: str = "cutmix"              # "cutmix" (temperature 20) or "mixup" (temperature 4), as RDED pairs them
    cutmix_beta: float = 1.0
    mixup_alpha: float = 0.8
    temperature: float | None = None  # None: 20 for cutmix, 4 for mixup
    patch_factor: int = 2            # ShufflePatches(factor) and crop scale (1/factor, 1)
    flip: bool = True
    student_kwargs: dict[str, dict] = field(default_factory=dict)

    def epochs_for(self, ipc: int) -> int:
        return by_ipc(self.epochs, ipc, self.epochs_beyond)

    def batch_for(self, ipc: int, num_classes: int, images: int) -> int:
        size = by_ipc(self.batch_size, ipc, self.batch_size_beyond)
        return min(size * (2 if num_classes >= 100 else 1), images)

    def lr_for(self, student: str) -> float:
        return next((lr for prefix, lr in self.student_lr.items() if student.startswith(prefix)), self.lr)

    def tau(self) -> float:
        return self.temperature if self.temperature is not None else (20.0 if self.mix == "cutmix" else 4.0)


PROTOCOLS = {"hard-label": HardLabelConfig, "soft-label": SoftLabelConfig}


def augment(x: torch.Tensor, gen: torch.Generator, rrc_scale, flip: bool, color_jitter: float = 0.0) -> torch.Tensor:
    """Random-resized crop + flip (one affine grid for the batch) and colour jitter, per image."""
    n = x.shape[0]

    def uniform(lo, hi):
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    area = uniform(*rrc_scale)
    ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    cx, cy = uniform(-1, 1) * (1 - w), uniform(-1, 1) * (1 - h)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if color_jitter > 0:
        j = color_jitter
        bright, contrast = uniform(1 - j, 1 + j).to(x.device), uniform(1 - j, 1 + j).to(x.device)
        x = x * bright.view(-1, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast.view(-1, 1, 1, 1) + mean
        if x.shape[1] == 3:
            sat = uniform(1 - j, 1 + j).to(x.device).view(-1, 1, 1, 1)
            grey = x.mean(1, keepdim=True)
            x = (x - grey) * sat + grey
        x = x.clamp(0, 1)
    return x


def shuffle_patches(x: torch.Tensor, factor: int, gen: torch.Generator) -> torch.Tensor:
    """RDED's ShufflePatches: cut each image into `factor` vertical strips and shuffle them, then the same
    with horizontal strips (a permutation per image)."""
    if factor <= 1:
        return x
    n, _, h, w = x.shape
    for dim, size in ((3, w), (2, h)):
        edges = [i * (size // factor) for i in range(factor)] + [size]
        strips = [x.narrow(dim, a, b - a) for a, b in zip(edges[:-1], edges[1:])]
        order = torch.argsort(torch.rand(n, factor, generator=gen), dim=1)
        out = [torch.cat([strips[j][i:i + 1] for j in order[i].tolist()], dim) for i in range(n)]
        x = torch.cat(out, 0)
    return x


def cutmix(x: torch.Tensor, y: torch.Tensor | None, num_classes: int, gen: torch.Generator, beta: float):
    """CutMix (Yun et al. 2019): paste a box from a shuffled batch; soft targets by pasted area."""
    n, _, hgt, wid = x.shape
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen))).beta(beta, beta))
    perm = torch.randperm(n, generator=gen).to(x.device)
    cut = math.sqrt(1 - lam)
    ch, cw = int(hgt * cut), int(wid * cut)
    cy, cx = int(torch.randint(0, hgt, (1,), generator=gen)), int(torch.randint(0, wid, (1,), generator=gen))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, hgt)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, wid)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    if y is None:
        return x, None
    lam = 1 - (y1 - y0) * (x1 - x0) / (hgt * wid)
    onehot = F.one_hot(y, num_classes).float()
    return x, lam * onehot + (1 - lam) * onehot[perm]


def mixup(x: torch.Tensor, gen: torch.Generator, alpha: float) -> torch.Tensor:
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen))).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    return lam * x + (1 - lam) * x[perm]


def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened outputs, batch mean, as RDED computes it (no τ² factor)."""
    return F.kl_div(F.log_softmax(student_logits / tau, 1), F.softmax(teacher_logits / tau, 1),
                    reduction="batchmean")


def rded_cosine(epochs: int):
    """RDED's schedule factor: 0.5·(1 + cos(π·epoch / epochs / 2)) — a quarter cosine ending at half the lr."""
    return lambda epoch: 0.5 * (1.0 + math.cos(math.pi * epoch / epochs / 2)) if epoch <= epochs else 0.0


@torch.no_grad()
def test_accuracy(model, images_u8: torch.Tensor, labels: torch.Tensor, mean: float, std: float,
                  batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images_u8), batch_size):
        x = (images_u8[i:i + batch_size].float().div(255) - mean) / std
        correct += (model(x).argmax(1) == labels[i:i + batch_size]).sum().item()
    return correct / len(images_u8)


class SeedStack:
    """S independently initialised copies of one student, trained as one: `forward` takes a batch per seed
    ([S, B, ...]) and returns logits per seed ([S, B, K]).

    Vectorised, the copies are one set of stacked parameters run through `torch.func.vmap`: on a GPU S small
    students then cost about one kernel launch stream instead of S. Not vectorised, the copies run one after
    another: on a CPU, where a student's convolutions already saturate the cores, that is as fast and exactly
    reproduces S separate runs. Either way the optimiser is elementwise (SGD, AdamW), so one optimiser over all
    seeds' parameters is S independent optimisers.
    """

    def __init__(self, models: list[torch.nn.Module], vectorise: bool):
        self.models, self.vectorise = models, vectorise
        names = [n for n, _ in models[0].named_parameters()]
        if vectorise:
            from torch.func import functional_call, stack_module_state, vmap

            params, self.buffers = stack_module_state(models)
            self.params = params
            base = copy.deepcopy(models[0]).to("meta")
            self._forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), randomness="different")
            self.named = [(n, [params[n]]) for n in names]
        else:
            self.named = [(n, [dict(m.named_parameters())[n] for m in models]) for n in names]

    def param_groups(self, no_decay_on_bias_and_norm: bool, weight_decay: float) -> list[dict]:
        """All parameters; with `no_decay_on_bias_and_norm`, biases and norm weights (≤ 1-D per model) in a
        group without weight decay, as RDED has it."""
        shapes = dict(self.models[0].named_parameters())
        if not no_decay_on_bias_and_norm:
            return [{"params": [p for _, ps in self.named for p in ps]}]
        decay = [p for n, ps in self.named for p in ps if shapes[n].ndim > 1 and "weight" in n]
        rest = [p for n, ps in self.named for p in ps if not (shapes[n].ndim > 1 and "weight" in n)]
        return [{"params": decay}, {"params": rest, "weight_decay": 0.0}]

    def train(self, mode: bool = True):
        for m in self.models:
            m.train(mode)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.vectorise:
            return self._forward(self.params, self.buffers, x)
        return torch.stack([m(xs) for m, xs in zip(self.models, x)])

    def unstacked(self) -> list[torch.nn.Module]:
        """The trained copies as ordinary modules (for testing)."""
        if self.vectorise:
            with torch.no_grad():
                for s, m in enumerate(self.models):
                    for n, t in list(m.named_parameters()) + list(m.named_buffers()):
                        t.copy_((self.params.get(n) if n in self.params else self.buffers[n])[s])
        return self.models


def train_student(student: str, images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor,
                  test_labels: torch.Tensor, num_classes: int, ipc: int, cfg, seed: int | list[int],
                  device: str = "cpu", teacher=None, progress=None, vectorise: bool | None = None,
                  rank: int = 0, world: int = 1, wrap=None):
    """Train `student` on uint8 `images` under a hard- or soft-label protocol; final test accuracy + timings.

    One loop, two configurations: hard-label trains on (CutMix-mixed) one-hot labels with SGD; soft-label
    asks `teacher` for the labels of every augmented, mixed batch and trains with AdamW on their KL.
    `seed` may be a list: the seeds are then trained together (see SeedStack; `vectorise` defaults to on for
    CUDA) and a list of results is returned. Each seed keeps its own initialisation, data order and
    augmentation stream, so seed s trained with others is seed s trained alone.

    Data-parallel (Ray Train's TorchTrainer calls this on each of `world` workers, `wrap` being its
    `prepare_model`): every worker draws the whole batch with the same generator and trains on its `rank`-th
    slice, so W workers see the batches one process would.
    """
    seeds = [seed] if isinstance(seed, int) else list(seed)
    soft = isinstance(cfg, SoftLabelConfig)
    if soft and teacher is None:
        raise ValueError("the soft-label protocol needs a teacher")
    vectorise = str(device).startswith("cuda") and world == 1 if vectorise is None else vectorise
    in_chans, size = images.shape[1], images.shape[-1]
    models = []
    for s in seeds:
        torch.manual_seed(s)
        models.append(create_student(student, num_classes, in_chans, size,
                                     **cfg.student_kwargs.get(student, {})).to(device))
    if wrap is not None:
        models = [wrap(m) for m in models]
    stack = SeedStack(models, vectorise)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    # Normalise with the test-free statistics of the training images the student is given.
    data, labels = images.to(device).float().div(255), labels.to(device)
    mean, std = data.mean().item(), max(data.std().item(), 1e-3)
    epochs = cfg.epochs_for(ipc)
    if soft:
        batch_size = cfg.batch_for(ipc, num_classes, len(data))
        opt = torch.optim.AdamW(stack.param_groups(True, cfg.weight_decay), lr=cfg.lr_for(student),
                                betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, rded_cosine(epochs))
        teacher = teacher.to(device).eval()
    else:
        batch_size = cfg.batch_size
        opt = torch.optim.SGD(stack.param_groups(False, 0.0), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(m * epochs) for m in cfg.milestones], cfg.gamma)

    def hard_batch(idx, gen):
        x, y = augment(data[idx], gen, cfg.rrc_scale, cfg.flip, cfg.color_jitter), labels[idx]
        if cfg.cutmix_beta > 0 and len(idx) > 1 and torch.rand(1, generator=gen).item() < cfg.cutmix_prob:
            return cutmix(x, y, num_classes, gen, cfg.cutmix_beta)
        return x, F.one_hot(y, num_classes).float()

    def soft_batch(idx, gen):
        x = augment(shuffle_patches(data[idx], cfg.patch_factor, gen), gen, [1 / cfg.patch_factor, 1.0], cfg.flip)
        return cutmix(x, None, num_classes, gen, cfg.cutmix_beta)[0] if cfg.mix == "cutmix" \
            else mixup(x, gen, cfg.mixup_alpha)

    t0 = time.perf_counter()
    stack.train()
    for epoch in range(epochs):
        perms = [torch.randperm(len(data), generator=g) for g in gens]
        for i in range(0, len(data), batch_size):
            idxs = [perm[i:i + batch_size].to(device) for perm in perms]
            if len(idxs[0]) < world:
                continue  # a last batch too small to give every worker an image
            if soft:
                x = torch.stack([soft_batch(idx, g) for idx, g in zip(idxs, gens)])[:, rank::world]
                with torch.no_grad():
                    target_logits = teacher(x.flatten(0, 1)).view(len(seeds), x.shape[1], -1)
                logits = stack((x - mean) / std)
                loss = sum(soft_label_loss(logits[k], target_logits[k], cfg.tau()) for k in range(len(seeds)))
            else:
                xs, targets = zip(*(hard_batch(idx, g) for idx, g in zip(idxs, gens)))
                x, target = torch.stack(xs)[:, rank::world], torch.stack(targets)[:, rank::world]
                loss = torch.sum(-target * F.log_softmax(stack((x - mean) / std), -1), -1).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    train_seconds = time.perf_counter() - t0
    results = []
    for model in stack.unstacked():
        t1 = time.perf_counter()
        acc = test_accuracy(model, test_images.to(device), test_labels.to(device), mean, std)
        results.append({"accuracy": acc, "train_seconds": train_seconds / len(seeds), "epochs": epochs,
                        "test_seconds": time.perf_counter() - t1, "seeds_together": len(seeds),
                        "vectorised": vectorise})
    return results[0] if isinstance(seed, int) else results


@dataclass
class EvalTrial:
    """One student trained on one distilled set under one protocol with one seed: one result row."""
    suite: str
    method: str
    config_hash: str
    ipc: int
    set_path: str
    student: str
    protocol: str
    protocol_hash: str
    seed: int
    distill_seconds_per_image: float
    peak_memory_bytes: int

    def key(self) -> tuple:
        return (self.suite, self.method, self.config_hash, self.ipc, self.student, self.protocol,
                self.protocol_hash, self.seed)


FULL_DATA = "full-data"


def full_data_config(suite) -> HardLabelConfig:
    """The hard-label recipe of the suite, run for `full_data.epochs` over the whole training split."""
    base = suite.protocols.get("hard-label") or HardLabelConfig()
    return dataclasses.replace(base, epochs={}, epochs_beyond=suite.full_data.epochs,
                               batch_size=suite.full_data.batch_size)


def plan_trials(suite, manifests: list[dict], students: list[str], seeds: int,
                real_fingerprint: str | None = None) -> list[EvalTrial]:
    """Every (set, student, protocol, seed), plus one full-data trial per student when the suite asks for it."""
    from .suite import config_hash

    trials = []
    if suite.full_data.epochs and real_fingerprint:
        phash = config_hash(dataclasses.asdict(full_data_config(suite)))
        trials += [EvalTrial(suite.name, FULL_DATA, real_fingerprint[:12], 0, "", student, "hard-label", phash, 0,
                             0.0, 0) for student in students]
    for m in manifests:
        for student in students:
            for protocol, pcfg in suite.protocols.items():
                phash = config_hash(dataclasses.asdict(pcfg))
                for seed in range(seeds):
                    trials.append(EvalTrial(m["suite"], m["method"], m["config_hash"], m["ipc"], m["path"],
                                            student, protocol, phash, seed, m["seconds_per_image"],
                                            m["peak_memory_bytes"]))
    return trials


def _trial_data(trial: EvalTrial, protocol_cfg, classes, channels, suite):
    from .distill import load_distilled

    if trial.method == FULL_DATA:
        from .data import load_real_data

        train = load_real_data(suite.data).train
        return train.load(torch.arange(len(train))), train.labels, full_data_config(suite)
    images, labels = load_distilled(Path(trial.set_path), classes, channels)
    return images, labels, protocol_cfg


def _rows(trials: list[EvalTrial], results: list[dict]) -> list[dict]:
    from .distill import versions

    rows = []
    for trial, result in zip(trials, results):
        row = dataclasses.asdict(trial)
        row.pop("set_path")
        row.update(result, kind="measured", versions=versions(), finished_at=time.time())
        rows.append(row)
    return rows


def _train_group(trials: list[EvalTrial], protocol_cfg, classes: list[str], channels: int, test, device: str,
                 suite, prepared, teacher, **options) -> list[dict]:
    """Load the group's set (or the real training split) and its teacher, train its seeds, make its rows."""
    images, labels, protocol_cfg = _trial_data(trials[0], protocol_cfg, classes, channels, suite)
    if teacher is None and isinstance(protocol_cfg, SoftLabelConfig):
        teacher = prepared.load_teacher(suite, classes, device)
    results = train_student(trials[0].student, images, labels, test[0], test[1], len(classes), trials[0].ipc,
                            protocol_cfg, [t.seed for t in trials], device=device, teacher=teacher, **options)
    return _rows(trials, results)


def run_group(trials: list[EvalTrial], protocol_cfg, classes: list[str], channels: int,
              test: tuple[torch.Tensor, torch.Tensor], device: str, threads: int, suite=None, prepared=None,
              teacher=None) -> list[dict]:
    """The seeds of one (set, student, protocol), trained together in one process; one row per seed."""
    torch.set_num_threads(threads)
    return _train_group(trials, protocol_cfg, classes, channels, test, device, suite, prepared, teacher)


def run_group_distributed(trials: list[EvalTrial], protocol_cfg, classes: list[str], channels: int,
                          test, workers: int, use_gpu: bool, suite=None, prepared=None, teacher=None,
                          storage_path: str | None = None) -> list[dict]:
    """The same group through Ray Train's TorchTrainer: `workers` DDP processes (one GPU each where GPUs
    exist) run `train_student` on their slices of every batch; rank 0 reports the rows."""
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer, prepare_model

    def loop(config):
        context = ray.train.get_context()
        device = str(ray.train.torch.get_device()) if use_gpu else "cpu"
        torch.set_num_threads(1)
        rows = _train_group(trials, protocol_cfg, classes, channels, test, device, suite, prepared, teacher,
                            vectorise=False, rank=context.get_world_rank(), world=context.get_world_size(),
                            wrap=lambda m: prepare_model(m, move_to_device=use_gpu))
        if context.get_world_rank() != 0:
            ray.train.report({})
            return
        with tempfile.TemporaryDirectory() as tmp:  # Ray Train keeps a result only with a checkpoint
            (Path(tmp) / "rows.json").write_text(json.dumps(rows))
            ray.train.report({"seeds": len(trials)}, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    result = TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
                          run_config=RunConfig(storage_path=storage_path)).fit()
    with result.checkpoint.as_directory() as folder:
        return json.loads((Path(folder) / "rows.json").read_text())


def trial_resources() -> tuple[dict, str]:
    """Per-trial Ray resources and device: small students share a GPU four ways; on CPU each trial is a
    single-threaded task on one core."""
    import ray

    if ray.cluster_resources().get("GPU", 0):
        return {"num_gpus": 0.25, "num_cpus": 1}, "cuda"
    return {"num_cpus": 1}, "cpu"


def group_seeds(todo: list[EvalTrial]) -> list[list[EvalTrial]]:
    """The trials that differ only in seed, together: they are trained as one SeedStack."""
    groups: dict[tuple, list[EvalTrial]] = {}
    for t in todo:
        groups.setdefault(t.key()[:-1] + (t.set_path,), []).append(t)
    return list(groups.values())


def run_trials(todo: list[EvalTrial], protocol_for, real, store, suite, prepared, teacher_for=None,
               extra_for=None, desc: str = "[evaluate] trials done", storage_path: str | None = None) -> None:
    """Run `todo` on Ray, the seeds of a setting together, and append each row to `store` as its group
    finishes. A student listed in the suite's `distributed_students` runs through Ray Train (DDP) with that
    many workers; the others are concurrent single-core (or quarter-GPU) Ray tasks."""
    import ray
    from tqdm.auto import tqdm

    options, device = trial_resources()
    task = ray.remote(**options)(run_group)
    distributed = ray.remote(num_cpus=0)(run_group_distributed)  # its workers hold the resources
    test_ref = ray.put((real.test.load(torch.arange(len(real.test))), real.test.labels))
    suite_ref, prepared_ref = ray.put(suite), ray.put(prepared)
    workers_for = getattr(suite, "distributed_students", {}) or {}
    futures = {}
    for group in group_seeds(todo):
        first = group[0]
        teacher = teacher_for(first) if teacher_for else None
        if workers_for.get(first.student, 1) > 1:
            ref = distributed.remote(group, protocol_for(first), real.classes, real.channels, test_ref,
                                     workers_for[first.student], device == "cuda", suite_ref, prepared_ref, teacher,
                                     storage_path)
        else:
            ref = task.remote(group, protocol_for(first), real.classes, real.channels, test_ref, device, 1,
                              suite_ref, prepared_ref, teacher)
        futures[ref] = group
    bar = tqdm(total=len(todo), desc=desc, mininterval=2)
    while futures:
        ready, _ = ray.wait(list(futures), num_returns=1)
        group = futures.pop(ready[0])
        for trial, row in zip(group, ray.get(ready[0])):
            store.append({**row, **(extra_for(trial) if extra_for else {})})
        bar.update(len(group))
    bar.close()


def evaluate(suite, real, manifests: list[dict], store, students: list[str], seeds: int, connect,
             prepared=None, out=None) -> int:
    """Train every (set, student, protocol, seed) not yet in the store as concurrent Ray tasks.

    Rows are appended as each task finishes, so an interrupted evaluation keeps what it finished.
    Returns the number of trials run.
    """
    trials = plan_trials(suite, manifests, students, seeds, real.train.fingerprint())
    todo = [t for t in trials if not store.has(t.key())]
    print(f"[evaluate] {len(trials)} trials, {len(todo)} to run ({len(trials) - len(todo)} already in the store)",
          flush=True)
    if not todo:
        return 0
    connect()
    run_trials(todo, lambda t: suite.protocols[t.protocol], real, store, suite, prepared,
               storage_path=str((Path(out) / "ray_train").resolve()) if out is not None else None)
    return len(todo)
