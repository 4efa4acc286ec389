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


def train_student(student: str, images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor,
                  test_labels: torch.Tensor, num_classes: int, ipc: int, cfg, seed: int,
                  device: str = "cpu", teacher=None, progress=None) -> dict:
    """Train `student` on uint8 `images` under a hard- or soft-label protocol; final test accuracy + timings.

    One loop, two configurations: hard-label trains on (CutMix-mixed) one-hot labels with SGD; soft-label
    asks `teacher` for the labels of every augmented, mixed batch and trains with AdamW on their KL.
    """
    soft = isinstance(cfg, SoftLabelConfig)
    if soft and teacher is None:
        raise ValueError("the soft-label protocol needs a teacher")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    in_chans, size = images.shape[1], images.shape[-1]
    model = create_student(student, num_classes, in_chans, size, **cfg.student_kwargs.get(student, {})).to(device)
    # Normalise with the test-free statistics of the training images the student is given.
    data, labels = images.to(device).float().div(255), labels.to(device)
    mean, std = data.mean().item(), max(data.std().item(), 1e-3)
    epochs = cfg.epochs_for(ipc)
    if soft:
        batch_size = cfg.batch_for(ipc, num_classes, len(data))
        decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "weight" in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "weight" in n)]
        opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=cfg.lr_for(student), betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, rded_cosine(epochs))
        teacher = teacher.to(device).eval()
    else:
        batch_size = cfg.batch_size
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(m * epochs) for m in cfg.milestones], cfg.gamma)
    t0 = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(data), generator=gen)
        for i in range(0, len(data), batch_size):
            idx = perm[i:i + batch_size].to(device)
            if soft:
                x = augment(shuffle_patches(data[idx], cfg.patch_factor, gen), gen, [1 / cfg.patch_factor, 1.0],
                            cfg.flip)
                x = cutmix(x, None, num_classes, gen, cfg.cutmix_beta)[0] if cfg.mix == "cutmix" \
                    else mixup(x, gen, cfg.mixup_alpha)
                with torch.no_grad():
                    teacher_logits = teacher(x)
                loss = soft_label_loss(model((x - mean) / std), teacher_logits, cfg.tau())
            else:
                x, y = augment(data[idx], gen, cfg.rrc_scale, cfg.flip, cfg.color_jitter), labels[idx]
                if cfg.cutmix_beta > 0 and len(idx) > 1 and torch.rand(1, generator=gen).item() < cfg.cutmix_prob:
                    x, target = cutmix(x, y, num_classes, gen, cfg.cutmix_beta)
                else:
                    target = F.one_hot(y, num_classes).float()
                loss = torch.sum(-target * F.log_softmax(model((x - mean) / std), 1), 1).mean()
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


def run_trial(trial: EvalTrial, protocol_cfg, classes: list[str], channels: int,
              test: tuple[torch.Tensor, torch.Tensor], device: str, threads: int, suite=None, prepared=None) -> dict:
    from pathlib import Path

    from .distill import load_distilled, versions

    torch.set_num_threads(threads)
    images, labels = load_distilled(Path(trial.set_path), classes, channels)
    teacher = None
    if isinstance(protocol_cfg, SoftLabelConfig):
        teacher = prepared.load_teacher(suite, classes, device)
    result = train_student(trial.student, images, labels, test[0], test[1], len(classes), trial.ipc,
                           protocol_cfg, trial.seed, device=device, teacher=teacher)
    row = dataclasses.asdict(trial)
    row.pop("set_path")
    row.update(result, kind="measured", versions=versions(), finished_at=time.time())
    return row


def evaluate(suite, real, manifests: list[dict], store, students: list[str], seeds: int, connect,
             prepared=None) -> int:
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
    suite_ref, prepared_ref = ray.put(suite), ray.put(prepared)
    futures = {task.remote(t, suite.protocols[t.protocol], real.classes, real.channels, test_ref, device, 1,
                           suite_ref, prepared_ref): t for t in todo}
    bar = tqdm(total=len(todo), desc="[evaluate] trials done", mininterval=2)
    while futures:
        ready, _ = ray.wait(list(futures), num_returns=1)
        futures.pop(ready[0])
        store.append(ray.get(ready[0]))
        bar.update(1)
    bar.close()
    return len(todo)
