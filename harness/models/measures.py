"""The diversity and fidelity measures of a set against real data, as functions of features: FID and KID
(torchmetrics), precision, recall, density and coverage (`prdc`), their feature extractors and their settings.
The stage that caches them beside each set is harness/stages/diversity.py, whose docstring says what is measured
and why."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

EXTRACTORS = ("teacher", "inception")


class DiversityError(Exception):
    """A diversity setting cannot be met (unknown extractor, weights out of reach); one line."""


@dataclass
class DiversityConfig:
    extractor: str = "teacher"
    # A local copy of torch-fidelity's pt_inception-2015-12-05 weights (extractor: inception); None downloads them.
    inception_weights: str | None = None
    real_per_class: int = 1000
    seed: int = 0
    nearest_k: int = 5  # Naeem et al.'s recommendation
    real_draws: int = 10
    # prdc holds three full distance matrices: 10,000 images (Naeem et al.'s sample size) is 400 MB each;
    # larger sets (ImageNet-1k at IPC 50) are sub-sampled, seeded, for the k-NN measures only.
    prdc_max_images: int = 10000
    kid_subsets: int = 100  # torchmetrics' defaults
    kid_subset_size: int = 1000
    fid_min_images: int | None = None  # None: the feature dimension + 1
    # Project features onto the real reference's first principal components before measuring (None: keep
    # all). A 576-d teacher feature needs 577 images for a defined FID; 64 components let a fashion set of
    # IPC 10 (100 images) have one, and keep most of the variance (docs/decisions.md).
    feature_dim: int | None = None
    batch_size: int = 256


def check_config(cfg: DiversityConfig, where: str = "diversity") -> None:
    """Raises DiversityError naming the field of the first bad setting."""
    if cfg.extractor not in EXTRACTORS:
        raise DiversityError(f"{where}.extractor: unknown extractor {cfg.extractor!r} (known: {', '.join(EXTRACTORS)})")
    if cfg.inception_weights is not None and cfg.extractor != "inception":
        raise DiversityError(f"{where}.inception_weights: only used by extractor inception, not {cfg.extractor!r}")
    for name, low in (
        ("real_per_class", 1),
        ("nearest_k", 1),
        ("real_draws", 1),
        ("prdc_max_images", 2),
        ("kid_subsets", 1),
        ("kid_subset_size", 2),
        ("batch_size", 1),
    ):
        if getattr(cfg, name) < low:
            raise DiversityError(f"{where}.{name}: must be at least {low}, got {getattr(cfg, name)}")
    if cfg.feature_dim is not None and cfg.feature_dim < 1:
        raise DiversityError(f"{where}.feature_dim: must be at least 1 (or null), got {cfg.feature_dim}")
    if cfg.fid_min_images is not None and cfg.fid_min_images < 2:
        raise DiversityError(f"{where}.fid_min_images: must be at least 2 (or null), got {cfg.fid_min_images}")


# ---- feature extractors: images in [0, 1] (N, C, H, W) → features (N, D) ----


class TeacherFeatures(nn.Module):
    def __init__(self, teacher, channels: int, image_size: int):
        super().__init__()
        self.teacher = teacher
        with torch.no_grad():
            probe = torch.zeros(1, channels, image_size, image_size, device=teacher.mean.device)
            self.num_features = int(teacher.features(probe).flatten(1).shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher.features(x).flatten(1)


class InceptionFeatures(nn.Module):
    """torchmetrics' wrapper of torch-fidelity's FID Inception-v3 (pool3, 2,048 features), which takes uint8
    RGB at any size and resizes to 299 itself."""

    num_features = 2048

    def __init__(self, weights: str | None):
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.net = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=weights
            )
        except ModuleNotFoundError:
            raise DiversityError(
                "diversity.extractor: inception needs torch-fidelity: pip install torch-fidelity"
            ) from None
        except Exception as e:  # the download or the file: say which setting fixes it
            raise DiversityError(
                f"diversity.inception_weights: cannot load the FID Inception weights from "
                f"{weights or 'the network'} ({type(e).__name__}); without network, point it at "
                f"a local pt_inception-2015-12-05-6726825d.pth"
            ) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        if x.shape[1] == 1:  # grey data: the network is RGB
            x = x.expand(-1, 3, -1, -1)
        return self.net(x).reshape(len(x), -1)


def build_extractor(
    cfg: DiversityConfig,
    teacher_loader: Callable[[], nn.Module] | None,
    channels: int,
    image_size: int,
    device: str | torch.device = "cpu",
) -> nn.Module:
    check_config(cfg)
    if cfg.extractor == "teacher":
        if teacher_loader is None:
            raise DiversityError("diversity.extractor: teacher needs the suite's teacher, none was given")
        extractor = TeacherFeatures(teacher_loader(), channels, image_size)
    else:
        extractor = InceptionFeatures(cfg.inception_weights)
    return extractor.to(device).eval().requires_grad_(False)


@torch.no_grad()
def extract(
    extractor: nn.Module, load: Callable[[torch.Tensor], torch.Tensor], n: int, batch_size: int
) -> torch.Tensor:
    """Features of `n` images fetched in batches by `load(indices)` (uint8), so a large real reference never
    sits in memory as pixels."""
    device = next(extractor.parameters()).device
    out = []
    for i in range(0, n, batch_size):
        images = load(torch.arange(i, min(i + batch_size, n)))
        out.append(extractor(images.to(device).float().div(255)).double().cpu())
    return torch.cat(out) if out else torch.empty(0, extractor.num_features, dtype=torch.float64)


# ---- the measures, on features ----


class _Precomputed(nn.Module):
    """The `feature` module torchmetrics runs on what it is given: features already extracted once and shared
    by every measure (and cached), instead of images run through the extractor again per metric."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _balanced_draw(real_labels: torch.Tensor, fake_labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Indices of a real sample with the fake set's class counts (all of a class where it has fewer)."""
    idx = []
    for c, count in zip(*torch.unique(fake_labels, return_counts=True)):
        pool = torch.nonzero(real_labels == c).flatten()
        idx.append(pool[torch.randperm(len(pool), generator=g)[: int(count)]])
    return torch.cat(idx) if idx else torch.empty(0, dtype=torch.long)


def principal_basis(real: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mean, the first `dim` principal directions (D, dim) of `real` features, and the share of variance they
    keep. A full SVD, not a randomised one, so the basis is the same on every run."""
    mean = real.double().mean(0)
    _, sv, vh = torch.linalg.svd(real.double() - mean, full_matrices=False)
    dim = min(dim, vh.shape[0])
    return mean, vh[:dim].T, float(sv[:dim].pow(2).sum() / sv.pow(2).sum())


def measures_from_features(
    real: torch.Tensor, real_labels: torch.Tensor, fake: torch.Tensor, fake_labels: torch.Tensor, cfg: DiversityConfig
) -> dict:
    """FID, KID, precision, recall, density and coverage of `fake` against `real` (features, (N, D)); a measure
    the set is too small for is None, with the minimum it needs beside it."""
    # torchmetrics costs half a second to import, which every suite check would otherwise pay.
    import prdc
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = real.double(), fake.double()
    n, d = fake.shape
    out = {"images": int(n), "real_images": int(len(real)), "feature_dim": int(d)}
    fid_min = cfg.fid_min_images or d + 1
    out["fid_min_images"] = int(fid_min)
    out["fid"] = None
    if n >= fid_min and len(real) >= fid_min:
        fid = FrechetInceptionDistance(feature=_Precomputed(d))
        fid.update(real, real=True)
        fid.update(fake, real=False)
        out["fid"] = float(fid.compute())

    m = min(cfg.kid_subset_size, n, len(real))
    out["kid"] = out["kid_std"] = None
    out["kid_subset_size"] = int(m)
    if m >= 2:
        with warnings.catch_warnings():  # its note that it keeps every feature: so do we, by design
            warnings.simplefilter("ignore", UserWarning)
            kid = KernelInceptionDistance(feature=_Precomputed(d), subsets=cfg.kid_subsets, subset_size=m)
        kid.update(real, real=True)
        kid.update(fake, real=False)
        with torch.random.fork_rng(devices=[]):  # its subsets come from torch's global generator
            torch.manual_seed(cfg.seed)
            mean, std = kid.compute()
        out["kid"], out["kid_std"] = float(mean), float(std)

    k = cfg.nearest_k
    out["nearest_k"] = k
    out["prdc_min_images"] = k + 2
    names = ("precision", "recall", "density", "coverage")
    for name in names:
        out[name] = out[f"{name}_std"] = None
    g = torch.Generator().manual_seed(cfg.seed)
    if n > cfg.prdc_max_images:
        keep = torch.randperm(n, generator=g)[: cfg.prdc_max_images]
        fake, fake_labels = fake[keep], fake_labels[keep]
    draws = []
    if len(fake) >= k + 2:
        for _ in range(cfg.real_draws):
            ref = real[_balanced_draw(real_labels, fake_labels, g)]
            if len(ref) < k + 2:
                break
            with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the sample sizes
                draws.append(prdc.compute_prdc(real_features=ref.numpy(), fake_features=fake.numpy(), nearest_k=k))
    if draws:
        out["real_draws"] = len(draws)
        out["prdc_images"], out["real_draw_images"] = int(len(fake)), int(len(ref))
        for name in names:
            values = np.array([dr[name] for dr in draws], dtype=np.float64)
            out[name], out[f"{name}_std"] = float(values.mean()), float(values.std(ddof=1) if len(values) > 1 else 0.0)
    return out


# ---- sets on disk, cached ----


def real_reference_indices(train, per_class: int, seed: int) -> torch.Tensor:
    """`per_class` training images of every class (all of a smaller class), the same ones for the same seed."""
    g = torch.Generator().manual_seed(seed)
    idx = []
    for label in range(len(train.classes)):
        pool = train.indices_of(label)
        idx.append(pool[torch.randperm(len(pool), generator=g)[:per_class]])
    return torch.sort(torch.cat(idx)).values
