"""Evaluate: train a student on a distilled set under a protocol, test it on the real held-out test set.

`train_student` is the whole training loop, readable in one go. Data stays one tensor on the device and
augmentation is batched (one affine grid per batch), so a tiny student is not dominated by Python
overhead. The reported accuracy is that of the final epoch: choosing the best epoch by test accuracy
would tune on the test set.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .students import create_student


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
        for bound in sorted(self.epochs):
            if ipc <= bound:
                return self.epochs[bound]
        return self.epochs_beyond


def augment(x: torch.Tensor, gen: torch.Generator, cfg: HardLabelConfig) -> torch.Tensor:
    """Random-resized crop + flip (one affine grid for the batch) and colour jitter, per image."""
    n = x.shape[0]

    def uniform(lo, hi):
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    area = uniform(*cfg.rrc_scale)
    ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    cx, cy = uniform(-1, 1) * (1 - w), uniform(-1, 1) * (1 - h)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if cfg.color_jitter > 0:
        j = cfg.color_jitter
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


def cutmix(x: torch.Tensor, y: torch.Tensor, num_classes: int, gen: torch.Generator, beta: float):
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
    lam = 1 - (y1 - y0) * (x1 - x0) / (hgt * wid)
    onehot = F.one_hot(y, num_classes).float()
    return x, lam * onehot + (1 - lam) * onehot[perm]


@torch.no_grad()
def test_accuracy(model, images_u8: torch.Tensor, labels: torch.Tensor, mean: float, std: float,
                  batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images_u8), batch_size):
        x = (images_u8[i:i + batch_size].float().div(255) - mean) / std
        correct += (model(x).argmax(1) == labels[i:i + batch_size]).sum().item()
    return correct / len(images_u8)


def train_student(student: str, images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor,
                  test_labels: torch.Tensor, num_classes: int, ipc: int, cfg: HardLabelConfig, seed: int,
                  device: str = "cpu", progress=None) -> dict:
    """Hard-label training of `student` on uint8 `images`; returns final test accuracy and timings."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    in_chans, size = images.shape[1], images.shape[-1]
    model = create_student(student, num_classes, in_chans, size, **cfg.student_kwargs.get(student, {})).to(device)
    # Normalise with the test-free statistics of the training images the student is given.
    data, labels = images.to(device).float().div(255), labels.to(device)
    mean, std = data.mean().item(), max(data.std().item(), 1e-3)
    epochs = cfg.epochs_for(ipc)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(m * epochs) for m in cfg.milestones], cfg.gamma)
    t0 = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(data), generator=gen)
        for i in range(0, len(data), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size].to(device)
            x, y = augment(data[idx], gen, cfg), labels[idx]
            if cfg.cutmix_beta > 0 and len(idx) > 1 and torch.rand(1, generator=gen).item() < cfg.cutmix_prob:
                x, target = cutmix(x, y, num_classes, gen, cfg.cutmix_beta)
            else:
                target = F.one_hot(y, num_classes).float()
            logits = model((x - mean) / std)
            loss = torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    train_seconds = time.perf_counter() - t0
    acc = test_accuracy(model, test_images.to(device), test_labels.to(device), mean, std)
    return {"accuracy": acc, "train_seconds": train_seconds, "epochs": epochs,
            "test_seconds": time.perf_counter() - t0 - train_seconds}


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


def plan_trials(suite, manifests: list[dict], students: list[str], seeds: int) -> list[EvalTrial]:
    from .suite import config_hash

    trials = []
    for m in manifests:
        for student in students:
            for protocol, pcfg in suite.protocols.items():
                phash = config_hash(dataclasses.asdict(pcfg))
                for seed in range(seeds):
                    trials.append(EvalTrial(m["suite"], m["method"], m["config_hash"], m["ipc"], m["path"],
                                            student, protocol, phash, seed, m["seconds_per_image"],
                                            m["peak_memory_bytes"]))
    return trials


def run_trial(trial: EvalTrial, protocol_cfg: HardLabelConfig, classes: list[str], channels: int,
              test: tuple[torch.Tensor, torch.Tensor], device: str, threads: int) -> dict:
    from pathlib import Path

    from .distill import load_distilled, versions

    torch.set_num_threads(threads)
    images, labels = load_distilled(Path(trial.set_path), classes, channels)
    result = train_student(trial.student, images, labels, test[0], test[1], len(classes), trial.ipc,
                           protocol_cfg, trial.seed, device=device)
    row = dataclasses.asdict(trial)
    row.pop("set_path")
    row.update(result, kind="measured", versions=versions(), finished_at=time.time())
    return row


def evaluate(suite, real, manifests: list[dict], store, students: list[str], seeds: int, connect) -> int:
    """Train every (set, student, protocol, seed) not yet in the store as concurrent Ray tasks.

    Rows are appended as each task finishes, so an interrupted evaluation keeps what it finished.
    Returns the number of trials run.
    """
    import ray
    from tqdm.auto import tqdm

    trials = plan_trials(suite, manifests, students, seeds)
    todo = [t for t in trials if not store.has(t.key())]
    print(f"[evaluate] {len(trials)} trials, {len(todo)} to run ({len(trials) - len(todo)} already in the store)",
          flush=True)
    if not todo:
        return 0
    connect()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    # Small students share a GPU four ways; on CPU each trial is one single-threaded task per core.
    options, device = ({"num_gpus": 0.25, "num_cpus": 1}, "cuda") if gpus else ({"num_cpus": 1}, "cpu")
    task = ray.remote(**options)(run_trial)
    test_ref = ray.put((real.test.load(torch.arange(len(real.test))), real.test.labels))
    futures = {task.remote(t, suite.protocols[t.protocol], real.classes, real.channels, test_ref, device, 1): t
               for t in todo}
    bar = tqdm(total=len(todo), desc="[evaluate] trials done", mininterval=2)
    while futures:
        ready, _ = ray.wait(list(futures), num_returns=1)
        futures.pop(ready[0])
        store.append(ray.get(ready[0]))
        bar.update(1)
    bar.close()
    return len(todo)
