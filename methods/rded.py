"""rded: Realistic and Diverse Dataset Distillation (Sun et al., CVPR 2024, "On the Diversity and Realism of
Distilled Dataset: An Efficient Dataset Distillation Paradigm").

Real-image patches, chosen by the teacher (the paper's "observer") and stitched; no generator, no optimisation.
Per class, as the reference's `synthesize/main.py` (`init_images`) and `synthesize/utils.py` run it:

1. Candidates: `num_candidates` real images of the class drawn at random without replacement (the reference's
   `--mipc`: `ImageFolder(..., ipc=mipc, shuffle=True)` shuffles the class's files and takes the first mipc).
2. Crops: `num_crops` random-resized crops of each candidate (`MultiRandomCrop`: torchvision's
   `RandomResizedCrop(size // factor, ratio=(1, 1), antialias=True)` with its default scale (0.08, 1)), i.e. a
   square box covering a uniform fraction in [crop_scale_min, crop_scale_max] of the image's area, resized
   (bilinear, antialiased) to `image_size // factor` pixels.
3. Score (`selector`): each crop is centred on an `image_size` canvas whose padding is zero in the teacher's
   normalised input (`pad`, applied after `normalize`), and scored by the cross-entropy of its true class,
   −log softmax(teacher(x))[y] (`cross_entropy`); the realism score is its negative. Each candidate keeps its
   best crop (`argmin` over its crops); the class keeps the `ipc · factor²` candidates whose best crops score
   best (`argsort(...)[:n]`, best first).
4. Stitch (`mix_images`): image i of the class is a factor × factor grid whose tile k (row-major) is the
   (k · ipc + i)-th selected crop, resized (nearest) to the tile: with `image_size % factor = r`, the first r
   rows and columns of tiles are one pixel larger. The best ipc crops are therefore the top-left tiles.

The factor does not depend on the IPC in the reference: every script sets it per dataset (2 for the ImageNet
family at every IPC, 1 for CIFAR-10/100 and Tiny-ImageNet). Relabelling is the harness's soft-label protocol
(RDED `validation/main.py`), so the method only makes images. `rded-no-stitch` (factor 1: each image is one
whole-size crop) is the ablation; it draws the same candidates and crop boxes as `rded` (paired switch) as
long as IPC · factor² ≤ num_candidates (IPC ≤ 75 at the defaults); above that `rded` draws more candidates
than its ablation and the two rows no longer share their draws.

Choices the reference leaves open or that this harness forces, with reasons:

- Observer: the teacher that relabels (`relabel_teacher`): the suite's own, or the one trained on the subset
  where the suite names one (`teacher.relabel`, the ImageNet subsets), as the reference scores and relabels
  with one observer. The cross-entropy is read over all its outputs (`teacher_logits`): a pretrained
  ImageNet-1k teacher over its 1,000 classes, as the reference's ImageNet-1k run reads torchvision's
  ResNet-18; a subset observer over the subset's classes.
- Resolution: the reference synthesises at the observer's input size (224 for ResNet-18) from the full-size
  JPEGs; the harness returns the suite's `image_size` (256 for the ImageNet suites) and hands the method the
  real images already at that size, so crops are cut from those, resized to `image_size // factor` (128),
  scored on an `image_size` canvas that the teacher resizes to its own input size. A small crop is thus
  upsampled from fewer source pixels than in the reference.
- Padding: "zero in the teacher's normalised input" is the teacher's mean in [0, 1] pixels (the teacher's
  `mean`; averaged over its channels where the data's channel count differs from the teacher's).
- Fewer real images than `num_candidates`: all of them are candidates (the reference would fail). If
  `ipc · factor²` exceeds `num_candidates` (e.g. IPC 100 at factor 2), that many candidates are drawn (the
  reference's `mix_images` would fail on too few crops); fewer real images than that is an error.
- A box larger than a non-square image's shorter side is clamped to it (torchvision would retry, then fall back
  to a centre crop; the harness's images are square, where this never happens).
- Ties: the first crop of a candidate and the earlier candidate in draw order win (stable sort).
- argument.py's `--min-scale-crops`/`--max-scale-crops` (lines 108-113) do not reach synthesis: `MultiRandomCrop`
  never passes a scale, so the crop scale is torchvision's default, the same (0.08, 1).
- Soft labels: the reference's relabelling takes its patch shuffle and crop scale from the same factor
  (`ShufflePatches(factor)`, `RandomResizedCrop(scale=(1 / factor, 1))`, validation/main.py lines 117-121), so
  its factor-1 runs shuffle nothing and crop the whole image. The harness's soft-label protocol has its own
  `patch_factor` per suite, shared by every method; this module cannot set it.

Defaults (pinned by tests/test_contract.py):
    factor = 2  scripts/imagenet-*_cr5.sh line 4 `--factor 2`; argument.py line 56 (default 2)
    num_crops = 5  scripts/*_cr5.sh line 5 `--num-crop 5` (argument.py line 45's default is 1)
    num_candidates = 300  scripts/*.sh line 6 `--mipc 300` (argument.py line 33's default is 600)
    crop_scale_min = 0.08  synthesize/utils.py lines 62-66: RandomResizedCrop's default scale (0.08, 1)
    crop_scale_max = 1.0  synthesize/utils.py lines 62-66: RandomResizedCrop's default scale (0.08, 1)
    batch_size = 300  memory only (the reference scores mipc crops per forward, synthesize/utils.py line 116)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import ClassTask, Method, Work, draw_real, real_as_float, teacher_logits, teacher_output_index
from .registry import register_method, register_variant


@dataclass(frozen=True)
class RDEDConfig:
    # factor × factor crops per image (1: one whole-size crop per image, the reference's low-resolution setting).
    factor: int = 2
    # Random-resized crops scored per candidate image, and candidate real images per class.
    num_crops: int = 5
    num_candidates: int = 300
    # RandomResizedCrop's area fraction (aspect ratio fixed at 1).
    crop_scale_min: float = 0.08
    crop_scale_max: float = 1.0
    # Crops per teacher forward: memory only.
    batch_size: int = 300

    def __post_init__(self):
        if self.factor < 1 or self.num_crops < 1 or self.num_candidates < 1 or self.batch_size < 1:
            raise ValueError("factor, num_crops, num_candidates and batch_size must be at least 1")
        if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1:
            raise ValueError(
                f"crop scale must satisfy 0 < min ≤ max ≤ 1, got ({self.crop_scale_min}, {self.crop_scale_max})"
            )


def draw_boxes(
    n: int, m: int, height: int, width: int, scale: tuple[float, float], gen: torch.Generator
) -> torch.Tensor:
    """(n, m, 3) long tensor of square crop boxes (top, left, side): RandomResizedCrop with ratio (1, 1), each box
    covering a uniform fraction in `scale` of the image's area at a uniform position. All draws come from `gen`
    in one fixed order (area fractions, then positions)."""
    lo, hi = scale
    frac = torch.rand((n, m), generator=gen, dtype=torch.float64) * (hi - lo) + lo
    pos = torch.rand((n, m, 2), generator=gen, dtype=torch.float64)
    side = torch.round(torch.sqrt(frac * height * width)).long().clamp(1, min(height, width))
    top = torch.minimum((pos[..., 0] * (height - side + 1)).floor().long(), height - side)
    left = torch.minimum((pos[..., 1] * (width - side + 1)).floor().long(), width - side)
    return torch.stack([top, left, side], -1)


def cut_crops(images01: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(n, m, C, size, size): each image's boxes cut out and resized to `size` (bilinear, antialiased, as
    torchvision's RandomResizedCrop on a tensor)."""
    n, m = boxes.shape[:2]
    out = torch.empty((n, m, images01.shape[1], size, size), dtype=torch.float32)
    for i in range(n):
        for j in range(m):
            top, left, s = boxes[i, j].tolist()
            region = images01[i : i + 1, :, top : top + s, left : left + s].float()
            resized = F.interpolate(region, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out[i, j] = resized[0]
    return out.clamp_(0, 1)


def pad_value(teacher, channels: int) -> torch.Tensor:
    """The pixel value (in [0, 1]) that the teacher normalises to zero, per data channel: (1, channels, 1, 1)."""
    mean = teacher.mean.detach().float().cpu().flatten()
    if len(mean) != channels:
        mean = mean.mean().expand(channels)
    return mean.view(1, channels, 1, 1)


def on_canvas(crops: torch.Tensor, size: int, fill: torch.Tensor) -> torch.Tensor:
    """Crops (N, C, h, w) centred on (N, C, size, size) canvases of `fill` (the reference's `pad`: the extra
    row/column goes below/right)."""
    n, c, h, w = crops.shape
    if (h, w) == (size, size):
        return crops
    canvas = fill.expand(n, c, size, size).clone()
    top, left = (size - h) // 2, (size - w) // 2
    canvas[:, :, top : top + h, left : left + w] = crops
    return canvas


def true_class_cross_entropy(teacher, images01: torch.Tensor, label: int, batch_size: int = 300) -> torch.Tensor:
    """−log softmax(teacher(x))[y] per image, over all the teacher's outputs (float64, CPU). RDED's realism
    score is its negative; lower is better."""
    logits = teacher_logits(teacher, images01, batch_size).double()
    return -logits.log_softmax(1)[:, teacher_output_index(teacher, label)]


def select_best(cross_entropy: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From (n, m) cross-entropies: each candidate's best crop, then the `k` candidates whose best crops score
    best, best first. Returns (candidate indices, their crop indices)."""
    best, crop = cross_entropy.min(1)  # first minimum on ties
    order = torch.argsort(best, stable=True)[:k]
    return order, crop[order]


def stitch(crops: torch.Tensor, size: int, factor: int, ipc: int) -> torch.Tensor:
    """(ipc, C, size, size) from `ipc · factor²` crops, best first: image i's tile k (row-major) is crop
    k · ipc + i, resized (nearest) to the tile; the first `size % factor` tile rows and columns are one pixel
    larger (the reference's `mix_images`)."""
    if len(crops) != ipc * factor**2:
        raise ValueError(f"stitching {ipc} images at factor {factor} takes {ipc * factor**2} crops, got {len(crops)}")
    base, extra = divmod(size, factor)
    out = torch.zeros((ipc, crops.shape[1], size, size), dtype=torch.float32)
    k, y = 0, 0
    for i in range(factor):
        h = base + 1 if i < extra else base
        x = 0
        for j in range(factor):
            w = base + 1 if j < extra else base
            out[:, :, y : y + h, x : x + w] = F.interpolate(crops[k * ipc : (k + 1) * ipc], size=(h, w), mode="nearest")
            x, k = x + w, k + 1
        y += h
    return out


@dataclass
class Selection:
    crops: torch.Tensor  # (ipc · factor², C, s, s) the chosen crops, best first
    cross_entropy: torch.Tensor  # (ipc · factor²,) their scores
    candidates: torch.Tensor  # (n,) indices into task.real of the candidate images, in draw order
    boxes: torch.Tensor  # (n, num_crops, 3) every candidate's crop boxes (top, left, side)
    chosen: torch.Tensor  # (ipc · factor²,) positions in `candidates` of the chosen crops, best first
    chosen_crop: torch.Tensor  # (ipc · factor²,) which of its boxes each chosen candidate contributed


@register_method
class RDED(Method):
    name = "rded"
    # Small images: one whole-size crop per image, as every reference script at 32 and 64 px passes --factor 1.
    small_image_defaults = {"factor": 1}
    Config = RDEDConfig
    # The observer that scores the crops is the one whose soft labels the students learn from: RDED scores and
    # relabels with one model (synthesize/utils.py:227-240 loads the subset-trained observer for both).
    needs = frozenset({"relabel_teacher", "real_images"})
    # rded and rded-no-stitch draw the same candidates and boxes: the rows differ only in the stitching.
    paired_switches = ("factor",)
    stage_batches = {"score": "batch_size"}
    # One candidate more than none (IPC · factor² are drawn anyway) and one crop each, so that a teacher
    # forward holds `batch_size` crops.
    rehearsal_settings = {"num_candidates": 1, "num_crops": 1}

    @classmethod
    def real_images_needed(cls, config, ipc):
        return ipc * config.factor**2  # one crop from each of that many images (select_crops)

    @classmethod
    def work(cls, config, ipc, real_per_class):
        candidates = min(real_per_class, max(config.num_candidates, ipc * config.factor**2))
        return Work(teacher=candidates * config.num_crops)

    def select_crops(self, task: ClassTask) -> Selection:
        cfg, real = self.config, task.real
        need = task.ipc * cfg.factor**2
        if len(real) < need:
            raise ValueError(
                f"class {task.key} has {len(real)} real images; rded at IPC {task.ipc} and factor "
                f"{cfg.factor} takes one crop from each of {need}"
            )
        n = min(len(real), max(cfg.num_candidates, need))
        gen = task.generator()
        candidates = draw_real(task, gen, n)
        boxes = draw_boxes(
            n, cfg.num_crops, real.shape[-2], real.shape[-1], (cfg.crop_scale_min, cfg.crop_scale_max), gen
        )
        size = task.image_size // cfg.factor
        fill = pad_value(self.relabel_teacher, task.channels)
        best_crops = torch.empty((n, task.channels, size, size))
        cross_entropy = torch.empty((n, cfg.num_crops), dtype=torch.float64)
        chunk = max(1, cfg.batch_size // cfg.num_crops)
        with self.stage("score"):
            for a in range(0, n, chunk):
                b = min(n, a + chunk)
                crops = cut_crops(real_as_float(real[candidates[a:b]]), boxes[a:b], size)
                cross_entropy[a:b] = true_class_cross_entropy(
                    self.relabel_teacher,
                    on_canvas(crops.flatten(0, 1), task.image_size, fill),
                    task.label,
                    cfg.batch_size,
                ).view(b - a, cfg.num_crops)
                # Only each candidate's best crop is kept (the reference's per-image argmin).
                best_crops[a:b] = crops[torch.arange(b - a), cross_entropy[a:b].min(1).indices]
        chosen, chosen_crop = select_best(cross_entropy, need)
        return Selection(best_crops[chosen], cross_entropy[chosen, chosen_crop], candidates, boxes, chosen, chosen_crop)

    def distill_class(self, task: ClassTask) -> torch.Tensor:
        selection = self.select_crops(task)
        return stitch(selection.crops, task.image_size, self.config.factor, task.ipc)


register_variant(
    "rded-no-stitch", RDED, factor=1, doc="RDED without stitching: each image is one whole-size crop (factor 1)."
)
