"""Student evaluation against the field's loops: the same student trained on the same set for the same epochs and
tested on the same test split, (a) as ddbench does (harness/models/training.py: the set one uint8 tensor on the
device, augmentation batched, the seeds' streams from generators) and (b) as the reference scripts do — a plain
PyTorch loop over a DataLoader of in-memory PIL images with per-image torchvision transforms (issue 29, item 4).

(b) follows, for `hard-label`, Minimax's train.py (`train_epoch`: RandomResizedCrop(scale 0.5–1), flip, colour
jitter, normalise per image; CutMix with probability mix_p per batch on the labels; SGD, MultiStepLR) and, for
`soft-label`, RDED's validation/main.py (`train`: ToTensor, ShufflePatches(factor), RandomResizedCrop(1/factor–1),
flip, normalise per image; per batch the student's forward pass on the clean images for its accuracy, CutMix, the
teacher's softmax(·/τ) on the mixed batch, KL divergence, AdamW), which DD-Ranking's train_and_eval.py repeats;
the test split through a DataLoader with Resize/CenterCrop, ToTensor and Normalize per image. The settings are the
suite's protocol's, so both loops do the same work; the teacher is an untrained network of the suite's teacher
architecture (its cost per batch is a trained one's). The student is the same network in both, built as each side
builds it: ddbench's 2×2 average pooling is its own CPU kernel (students.AvgPool2x2, bitwise PyTorch's), the
field's modules use nn.AvgPool2d. Each loop runs in a fresh process: ddbench's with the allocator setting of its
trial processes (harness/runtime/allocator.py), the reference with glibc's defaults, as the field's scripts run
(--reference-keeps-freed-memory gives it ddbench's setting, to separate the loop from the allocator).

    python perf/eval_throughput.py                      # CPU, ConvNet-3 at 28 px, the fashion suite, IPC 10
    python perf/eval_throughput.py --device cuda --student resnet18 --size 224

Prints training and test samples/s of each (medians of --repeats alternated runs: glibc's own heuristics make the
reference's speed swing by up to 1.8× between processes), and the ratio (a)/(b). Single-threaded on CPU unless
--threads.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms  # noqa: E402

from harness.config.loader import load_suite  # noqa: E402
from harness.models.data import load_real_data  # noqa: E402
from harness.models.students import create_student, with_torchs_pooling  # noqa: E402
from harness.models.training import train_student  # noqa: E402
from harness.runtime.allocator import keep_freed_memory  # noqa: E402


class PILSet(torch.utils.data.Dataset):
    """In-memory PIL images and labels, each image through `transform` when drawn (RDED's ImageFolder, mem=True)."""

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, transform):
        mode = "L" if images_u8.shape[1] == 1 else "RGB"
        arrays = images_u8.permute(0, 2, 3, 1).numpy()
        self.images = [Image.fromarray(a[..., 0] if mode == "L" else a, mode) for a in arrays]
        self.labels, self.transform = labels.tolist(), transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


class ShufflePatches(torch.nn.Module):
    """RDED validation/utils.py's ShufflePatches: the image cut into `factor` strips across, shuffled, then down."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def shuffle(self, img):
        w = img.shape[-1]
        tw = w // self.factor
        patches = [img[..., i * tw : (i + 1) * tw if i != self.factor - 1 else w] for i in range(self.factor)]
        random.shuffle(patches)
        return torch.cat(patches, -1)

    def forward(self, img):
        return self.shuffle(self.shuffle(img).permute(0, 2, 1)).permute(0, 2, 1)


def rand_bbox(size, lam):
    """RDED/Minimax's CutMix box: a uniform centre, side ratio sqrt(1 − λ)."""
    w, h = size[2], size[3]
    cut = np.sqrt(1.0 - lam)
    cw, ch = int(w * cut), int(h * cut)
    cx, cy = np.random.randint(w), np.random.randint(h)
    return (
        np.clip(cx - cw // 2, 0, w),
        np.clip(cy - ch // 2, 0, h),
        np.clip(cx + cw // 2, 0, w),
        np.clip(cy + ch // 2, 0, h),
    )


def reference_loop(student, images, labels, test, classes, ipc, protocol, args, teacher, device):
    """(b): the field's loop; (train seconds, test seconds, accuracy)."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    size = args.size or images.shape[-1]
    channels = images.shape[1]
    mean, std = [images.float().div(255).mean().item()] * channels, [images.float().div(255).std().item()] * channels
    normalize = transforms.Normalize(mean, std)
    if protocol.needs_teacher:  # RDED validation/main.py l.115–126
        factor = protocol.patch_factor
        augment = [
            transforms.ToTensor(),
            ShufflePatches(factor),
            transforms.RandomResizedCrop(size, scale=(1 / factor, 1.0), antialias=True),
            transforms.RandomHorizontalFlip(),
            normalize,
        ]
    else:  # Minimax data.py transform_imagenet: RRC, ToTensor, flip, jitter, normalise
        augment = [transforms.RandomResizedCrop(size, scale=tuple(protocol.rrc_scale)), transforms.ToTensor()]
        augment += [transforms.RandomHorizontalFlip()]
        if protocol.color_jitter:
            jitter = protocol.color_jitter
            augment += [transforms.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter)]
        augment += [normalize]
    batch_size = protocol.batch_size_for(ipc, classes, len(images))
    loader = torch.utils.data.DataLoader(
        PILSet(images, labels, transforms.Compose(augment)),
        batch_size=batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device == "cuda",
    )
    test_size = protocol.test_resize or size
    test_loader = torch.utils.data.DataLoader(
        PILSet(
            *test,
            transforms.Compose(
                [transforms.Resize(test_size), transforms.CenterCrop(size), transforms.ToTensor(), normalize]
            ),
        ),
        batch_size=batch_size,
        shuffle=False,
        num_workers=args.workers,
        pin_memory=device == "cuda",
    )
    model = create_student(student, classes, channels, size, **protocol.student_kwargs.get(student, {}))
    model = with_torchs_pooling(model).to(device)
    epochs = args.epochs or protocol.epochs_for(ipc)
    if protocol.needs_teacher:
        opt = torch.optim.AdamW(model.parameters(), lr=protocol.lr_for(student), weight_decay=protocol.weight_decay)
        kl, tau = torch.nn.KLDivLoss(reduction="batchmean"), protocol.tau()
    else:
        opt = torch.optim.SGD(
            model.parameters(), protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay
        )
        ce = torch.nn.CrossEntropyLoss()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [2 * epochs // 3, 5 * epochs // 6], 0.2)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if protocol.needs_teacher:  # RDED validation/main.py `train`, l.206–232
                with torch.no_grad():
                    model(x)  # pred_label: the student's accuracy on the clean batch, which RDED logs
                    index = torch.randperm(len(x), device=device)
                    x1, y1, x2, y2 = rand_bbox(x.size(), np.random.beta(protocol.cutmix_beta, protocol.cutmix_beta))
                    x[:, :, x1:x2, y1:y2] = x[index, :, x1:x2, y1:y2]
                    soft = F.softmax(teacher(x) / tau, dim=1)
                opt.zero_grad()
                loss = kl(F.log_softmax(model(x) / tau, dim=1), soft)
            else:  # Minimax train.py `train_epoch`, l.178–212
                if np.random.rand(1) < protocol.cutmix_prob:
                    lam = np.random.beta(protocol.cutmix_beta, protocol.cutmix_beta)
                    index = torch.randperm(len(x), device=device)
                    x1, y1, x2, y2 = rand_bbox(x.size(), lam)
                    x[:, :, x1:x2, y1:y2] = x[index, :, x1:x2, y1:y2]
                    ratio = 1 - ((x2 - x1) * (y2 - y1) / (x.size()[-1] * x.size()[-2]))
                    out = model(x)
                    loss = ce(out, y) * ratio + ce(out, y[index]) * (1.0 - ratio)
                else:
                    loss = ce(model(x), y)
                opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    if device == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    return train_seconds, time.perf_counter() - t1, correct / len(test[1])


def measure(args, name: str, loop: str) -> dict:
    """One loop on one protocol, in a fresh process (the caller's): ddbench's loop as a trial runs it (the allocator
    kept warm, harness/runtime/allocator.py), the reference as the field's scripts run, with glibc's defaults
    unless --reference-keeps-freed-memory."""
    torch.set_num_threads(args.threads)
    if loop == "ddbench" or args.reference_keeps_freed_memory:
        keep_freed_memory()
    suite = load_suite(args.suite)
    real = load_real_data(suite.data)
    classes = len(real.classes)
    n_test = args.test_images or len(real.test)
    test = (real.test.load(torch.arange(n_test)), real.test.labels[:n_test])
    g = torch.Generator().manual_seed(0)
    picks = [
        real.train.indices_of(c)[torch.randperm(len(real.train.indices_of(c)), generator=g)[: args.ipc]]
        for c in range(classes)
    ]
    idx = torch.cat(picks)
    images, labels = real.train.load(idx), real.train.labels[idx]
    size = args.size or real.image_size
    torch.manual_seed(0)  # the same (untrained) teacher in every process
    teacher = (
        create_student(
            suite.teacher.arch,
            classes,
            real.channels,
            size,
            **({"width": suite.teacher.train.width} if suite.teacher.arch.startswith("convnet") else {}),
        )
        .eval()
        .to(args.device)
    )
    protocol = suite.protocols[name].for_student(args.student)
    if args.epochs:
        protocol = dataclasses.replace(protocol, epochs={}, epochs_beyond=args.epochs)
    if args.size and args.size != real.image_size:
        protocol = dataclasses.replace(protocol, input_size=args.size)
    protocol = protocol.on_device(args.device)
    epochs = protocol.epochs_for(args.ipc)
    t0 = time.perf_counter()
    if loop == "ddbench":
        if args.precision:
            protocol = dataclasses.replace(protocol, precision=args.precision)
        row = train_student(
            args.student, images, labels, *test, classes, args.ipc, protocol, 0, device=args.device, teacher=teacher
        )
        train_s, test_s, acc = row["train_seconds"], row["test_seconds"], row["accuracy"]
    else:
        train_s, test_s, acc = reference_loop(
            args.student,
            images,
            labels,
            test,
            classes,
            args.ipc,
            protocol,
            args,
            with_torchs_pooling(teacher),
            args.device,
        )
    return {
        "train_s": train_s,
        "test_s": test_s,
        "accuracy": acc,
        "whole_s": time.perf_counter() - t0,
        "epochs": epochs,
        "trained": epochs * len(images),
        "n_test": n_test,
        "images": len(images),
        "size": size,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="fashion-mnist")
    p.add_argument("--student", default="convnet3")
    p.add_argument("--protocols", default="hard-label,soft-label", help="comma-separated protocols of the suite")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--epochs", type=int, default=None, help="epochs of both loops (default: the protocol's)")
    p.add_argument("--size", type=int, default=None, help="the student's input side (default: the images')")
    p.add_argument("--test-images", type=int, default=None, help="the first N test images (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a ddbench CPU trial has one)")
    p.add_argument("--workers", type=int, default=0, help="the reference loop's DataLoader workers")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="ddbench's loop in this precision instead of the device's (bf16 autocast also runs on a CPU with "
        "AVX-512 BF16 or AMX; the rows of such a protocol are keyed apart); the reference loop stays fp32, as the "
        "field's scripts run",
    )
    p.add_argument(
        "--reference-keeps-freed-memory",
        action="store_true",
        help="the reference loop with ddbench's allocator setting too: what is left of the ratio is the loop's",
    )
    p.add_argument("--repeats", type=int, default=3, help="alternated runs of each loop; medians are printed")
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    spawn = multiprocessing.get_context("spawn")
    header = False
    for name in args.protocols.split(","):
        runs = {"ddbench": [], "reference": []}
        for _ in range(args.repeats):
            for loop in runs:
                # Each loop in a fresh process (neither inherits the other's heap), not a daemon: the reference's
                # DataLoader may start workers of its own (--workers).
                with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
                    runs[loop].append(pool.submit(measure, args, name, loop).result())
        if not header:
            first = runs["ddbench"][0]
            print(
                f"device {args.device}, {args.threads} thread(s), torch {torch.__version__}, ddbench's loop in "
                f"{args.precision or 'the device precision'}; {args.student} at {first['size']} px, "
                f"{first['images']} images (IPC {args.ipc}), {first['n_test']} test images; reference allocator: "
                f"{'ddbench' if args.reference_keeps_freed_memory else 'glibc defaults'}; medians of "
                f"{args.repeats} alternated runs"
            )
            print(
                "| protocol | epochs | loop | train samples/s | test samples/s | all samples/s | accuracy |\n"
                "|---|---|---|---|---|---|---|"
            )
            header = True
        rates = {loop: [(f["trained"] + f["n_test"]) / f["whole_s"] for f in fs] for loop, fs in runs.items()}
        for loop, fs in runs.items():
            f = fs[0]
            train_rate = statistics.median(g["trained"] / g["train_s"] for g in fs)
            test_rate = statistics.median(g["n_test"] / g["test_s"] for g in fs)
            print(
                f"| {name} | {f['epochs']} | {loop} | {train_rate:,.0f} | {test_rate:,.0f} | "
                f"{statistics.median(rates[loop]):,.0f} | {f['accuracy']:.2%} |",
                flush=True,
            )
        pairs = [a / b for a, b in zip(rates["ddbench"], rates["reference"])]
        spread = f" (runs: {min(pairs):.2f}–{max(pairs):.2f}×)" if len(pairs) > 1 else ""
        ratio = statistics.median(rates["ddbench"]) / statistics.median(rates["reference"])
        print(f"| {name} | | **ratio** | | | **{ratio:.2f}×**{spread} | |", flush=True)


if __name__ == "__main__":
    main()
