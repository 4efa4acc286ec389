"""dm: Dataset Condensation with Distribution Matching (Zhao and Bilen, WACV 2023; reference code
VICO-UoE/DatasetCondensation, main_DM.py).

Per class, `ipc` images initialised from real images of the class (main_DM.py:93-96, `--init real`) are optimised
so that the mean embedding of a randomly initialised ConvNet (instance norm, no training) over them matches its mean
embedding over a batch of `batch_real` real images of the class (main_DM.py:149-163):

    loss = ‖ mean_i ψ_θ(A_ω(x_real,i)) − mean_j ψ_θ(A_ω(x_syn,j)) ‖²,   θ redrawn every iteration,

ψ the ConvNet's flattened features (`embed`, networks.py:50-53), A_ω the differentiable Siamese augmentation (DSA)
with the same parameters ω for the real and the synthetic batch (the same seed, main_DM.py:155-158). SGD with
momentum 0.5 at lr_img (main_DM.py:102) on the images in the data's normalised space (utils.py `get_dataset`:
`transforms.Normalize(mean, std)`), `iterations` steps; the images are returned de-normalised and clipped to [0, 1].

The reference sums the loss over classes under one network per iteration; a class's images receive only their own
class's term, so distilling class by class with its own network draws is the same optimisation (each class sees an
independent random network rather than one shared across classes, which the expectation over θ does not see).

DSA as the reference runs it (utils.py:474-650, `ParamDiffAug` and `DiffAugment` with a seed, i.e. Siamese and
`aug_mode` 'S'): each call picks one of color, crop, cutout, flip, scale, rotate uniformly and draws its parameters
once for the whole batch (`theta[:] = theta[0]`): brightness + (u − 0.5)·1.0, saturation ×2u about the channel mean,
contrast ×(u + 0.5) about the image mean; a translation of up to 0.125 of the side, zero-filled; a cutout of half
the side; a flip with probability 0.5; a scale by sx, sy uniform in [1/1.2, 1.2]; a rotation uniform in ±15°.

Choices the reference leaves open or that this harness forces, with reasons:

- Normalisation: the reference normalises with the whole dataset's channel mean and std; a shard sees one class,
  so the class's own real images' mean and std are used. The instance-normed ConvNet's embedding barely depends
  on an affine change of its input; the step size (lr_img in normalised units) and the colour augmentation's
  offsets do, by the ratio of the class's std to the data's (Fashion-MNIST: 0.29–0.40 by class against 0.353).
- The network: ConvNet-D of width 128 with instance norm and average pooling (utils.py:118-120), depth by the image
  side: 3 up to 32 px (the reference's `ConvNet`), 4 at 64 (its Tiny-ImageNet ConvNetD4), one more per doubling
  (5 at 128, 6 at 256, as the field runs DM on the ImageNet subsets). 28-px images are padded to 32 px as the
  reference's ConvNet does for MNIST-like data (networks.py:95-99: im_size 28 → 32, first conv padding 3).
  Its weights are redrawn every iteration from the task's generator with PyTorch's default initialisation
  (uniform ±1/√fan_in for weights and biases, norms at 1 and 0), where the reference reseeds torch from the clock.
- The reference runs `Iteration + 1` updates (main_DM.py:106, `range(args.Iteration+1)`); here `iterations`.
- Fewer real images in a class than `batch_real`: all of them each iteration (the reference's permutation slice
  does the same).

Defaults (pinned by tests/test_contract.py):
    iterations = 20000  main_DM.py:22 `--Iteration` default 20000
    lr_img = 1.0  main_DM.py:23 `--lr_img` default 1.0 (readme: `--lr_img 1`)
    momentum = 0.5  main_DM.py:102 `torch.optim.SGD([image_syn], lr=args.lr_img, momentum=0.5)`
    batch_real = 256  main_DM.py:25 `--batch_real` default 256
    init = 'real'  main_DM.py:27 `--init` default 'real'
    dsa = True  main_DM.py:28 `--dsa_strategy` default 'color_crop_cutout_flip_scale_rotate'
    width = 128  utils.py:119 `get_default_convnet_setting`: net_width 128
    depth = None  utils.py:119 net_depth 3 at 32 px (None: by the image side, above)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.students import create_student

from .base import ClassTask, Method, Work, real_as_float
from .registry import register_method

# ParamDiffAug (utils.py:474-484).
PROB_FLIP, RATIO_SCALE, RATIO_ROTATE, RATIO_CROP_PAD, RATIO_CUTOUT = 0.5, 1.2, 15.0, 0.125, 0.5
BRIGHTNESS, SATURATION, CONTRAST = 1.0, 2.0, 0.5
DSA_STRATEGY = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DMConfig:
    iterations: int = 20000
    lr_img: float = 1.0
    momentum: float = 0.5
    # Real images of the class per iteration, drawn afresh.
    batch_real: int = 256
    # "real": start from real images of the class; "noise": from N(0, 1) in the normalised space.
    init: str = "real"
    # Differentiable Siamese augmentation of both batches, with the same draws.
    dsa: bool = True
    # The random ConvNet: width, and depth (None: by the image side).
    width: int = 128
    depth: int | None = None

    def __post_init__(self):
        if self.iterations < 1 or self.batch_real < 1 or self.width < 1:
            raise ValueError("iterations, batch_real and width must be at least 1")
        if self.depth is not None and self.depth < 1:
            raise ValueError(f"depth must be at least 1 (or None: by the image side), got {self.depth}")
        if not (self.lr_img > 0 and 0 <= self.momentum < 1):
            raise ValueError(f"lr_img must be positive and momentum in [0, 1), got {self.lr_img}, {self.momentum}")
        if self.init not in ("real", "noise"):
            raise ValueError(f"init must be 'real' or 'noise', got {self.init!r}")


def network_side(image_size: int) -> int:
    """The side the ConvNet sees: 28-px images padded to 32 (networks.py:95-96)."""
    return 32 if image_size == 28 else image_size


def network_depth(config: DMConfig, image_size: int) -> int:
    """3 up to 32 px, one more per doubling (4 at 64, 5 at 128, 6 at 256)."""
    if config.depth is not None:
        return config.depth
    return max(3, round(math.log2(network_side(image_size))) - 2)


def redraw(net: nn.Module, gen: torch.Generator) -> None:
    """PyTorch's default initialisation of every conv and linear layer (uniform ±1/√fan_in, which kaiming_uniform_
    with a = √5 comes to), drawn from `gen`; norms at weight 1, bias 0."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                bound = 1 / math.sqrt(m.weight[0].numel())
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 2 * bound - bound)
                if m.bias is not None:
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 2 * bound - bound)
            elif isinstance(m, nn.GroupNorm) and m.affine:
                m.weight.fill_(1)
                m.bias.fill_(0)


def draw_dsa(gen: torch.Generator, size: int) -> tuple[str, dict]:
    """One DSA call's strategy and parameters, shared by every image of both batches."""
    kind = DSA_STRATEGY[int(torch.randint(0, len(DSA_STRATEGY), (1,), generator=gen))]
    u = lambda: float(torch.rand(1, generator=gen))  # noqa: E731
    if kind == "color":
        return kind, {"brightness": u(), "saturation": u(), "contrast": u()}
    if kind == "crop":
        shift = int(size * RATIO_CROP_PAD + 0.5)
        return kind, {"dx": int(torch.randint(-shift, shift + 1, (1,), generator=gen)),
                      "dy": int(torch.randint(-shift, shift + 1, (1,), generator=gen))}  # fmt: skip
    if kind == "cutout":
        cut = int(size * RATIO_CUTOUT + 0.5)
        high = size + (1 - cut % 2)
        return kind, {"x": int(torch.randint(0, high, (1,), generator=gen)),
                      "y": int(torch.randint(0, high, (1,), generator=gen)), "size": cut}  # fmt: skip
    if kind == "flip":
        return kind, {"flip": u() < PROB_FLIP}
    if kind == "scale":
        lo = 1.0 / RATIO_SCALE
        return kind, {"sx": u() * (RATIO_SCALE - lo) + lo, "sy": u() * (RATIO_SCALE - lo) + lo}
    return kind, {"theta": (u() - 0.5) * 2 * RATIO_ROTATE / 180 * math.pi}


def apply_dsa(x: torch.Tensor, kind: str, p: dict) -> torch.Tensor:
    """The drawn augmentation on a batch (N, C, H, W), differentiable in x (utils.py:524-640)."""
    if kind == "color":
        x = x + (p["brightness"] - 0.5) * BRIGHTNESS
        m = x.mean(1, keepdim=True)
        x = (x - m) * (p["saturation"] * SATURATION) + m
        m = x.mean((1, 2, 3), keepdim=True)
        return (x - m) * (p["contrast"] + CONTRAST) + m
    if kind == "crop":  # out[i, j] = x[i + dx, j + dy], zero outside (the reference's 1-pixel zero pad and clamp)
        h, w = x.shape[-2:]
        rows = (torch.arange(h) + p["dx"] + 1).clamp(0, h + 1)
        cols = (torch.arange(w) + p["dy"] + 1).clamp(0, w + 1)
        return F.pad(x, (1, 1, 1, 1))[:, :, rows][:, :, :, cols]
    if kind == "cutout":
        h, w = x.shape[-2:]
        mask = torch.ones(h, w, dtype=x.dtype, device=x.device)
        r0, c0 = p["x"] - p["size"] // 2, p["y"] - p["size"] // 2
        rows = (torch.arange(p["size"]) + r0).clamp(0, h - 1)
        cols = (torch.arange(p["size"]) + c0).clamp(0, w - 1)
        mask[rows.unsqueeze(1), cols.unsqueeze(0)] = 0
        return x * mask
    if kind == "flip":
        return x.flip(3) if p["flip"] else x
    if kind == "scale":
        theta = torch.tensor([[p["sx"], 0.0, 0.0], [0.0, p["sy"], 0.0]])
    else:
        c, s = math.cos(p["theta"]), math.sin(p["theta"])
        theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]])
    theta = theta.to(x.device, x.dtype).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


@register_method
class DM(Method):
    name = "dm"
    Config = DMConfig
    needs = frozenset({"real_images"})
    stage_batches = {"match": "batch_real"}
    rehearsal_settings = {"iterations": 1}
    # The paper's free parameters: the images' step size (its only tuned optimisation setting) and the real batch.
    search_space = {"lr_img": ("log", 0.1, 10.0), "batch_real": ("int", 64, 512)}

    @classmethod
    def real_images_needed(cls, config, ipc):
        return ipc if config.init == "real" else 1

    @classmethod
    def own_network(cls, config, image_size):
        return "convnet3", {"width": config.width, "depth": network_depth(config, image_size)}, network_side(image_size)

    @classmethod
    def work(cls, config, ipc, real_per_class):
        # Per iteration: the real batch forward, the synthetic images forward and backward.
        return Work(network=config.iterations * (min(config.batch_real, real_per_class) + 3 * ipc))

    def distill_class(self, task: ClassTask) -> torch.Tensor:
        cfg, real = self.config, task.real
        gen = task.generator()
        real01 = real_as_float(real)
        mean = real01.mean((0, 2, 3), keepdim=True)
        std = real01.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
        normalised = (real01 - mean) / std
        pad = (network_side(task.image_size) - task.image_size) // 2
        if cfg.init == "real":
            start = torch.randperm(len(real), generator=gen)[: task.ipc]
            syn = normalised[start].clone()
        else:
            syn = torch.randn((task.ipc, task.channels, task.image_size, task.image_size), generator=gen)
        arch, kwargs, side = self.own_network(cfg, task.image_size)
        net = create_student(arch, task.num_classes, task.channels, side, **kwargs).to(self.device)
        net.train().requires_grad_(False)
        syn = syn.to(self.device).requires_grad_(True)
        optimizer = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum)
        n_real = min(cfg.batch_real, len(real))
        with torch.enable_grad(), self.stage("match"):
            for _ in range(cfg.iterations):
                redraw(net, gen)
                batch = normalised[torch.randperm(len(real), generator=gen)[:n_real]].to(self.device)
                x_real, x_syn = batch, syn
                if cfg.dsa:
                    kind, params = draw_dsa(gen, task.image_size)
                    x_real, x_syn = apply_dsa(x_real, kind, params), apply_dsa(x_syn, kind, params)
                if pad:
                    x_real, x_syn = F.pad(x_real, (pad,) * 4), F.pad(x_syn, (pad,) * 4)
                with torch.no_grad():
                    target = net.forward_features(x_real).mean(0)
                loss = ((target - net.forward_features(x_syn).mean(0)) ** 2).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return (syn.detach().cpu() * std + mean).clamp(0, 1)
