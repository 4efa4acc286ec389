"""Diversity and fidelity of a distilled set against the real data it was distilled from: FID and KID
(torchmetrics), precision, recall, density and coverage (`prdc`, Naeem et al. 2020), the measures of the
adaptive-sampling paper's Table 4, on a frozen feature extractor.

- **Extractor** (`diversity.extractor`): `teacher`, the suite's frozen teacher's penultimate features (trained
  on the suite's real data, available offline for every suite), or `inception`, the FID Inception-v3 of
  torch-fidelity that papers report with (its weights must be reachable: `diversity.inception_weights`).
- **Whole set.** Every measure compares the whole set (all classes) with a class-balanced real reference; the
  labels only decide how the real sample is drawn.
- **Real reference.** `real_per_class` training images per class, a seeded random subset (the training split
  is what methods distil from). FID and KID use all of it; precision/recall/density/coverage use draws of
  exactly the set's size and class balance (Naeem et al. recommend equal sizes: coverage in particular is
  bounded by the fake-to-real ratio), `real_draws` of them, averaged.
- **Small sets.** FID needs more images than feature dimensions on both sides (`fid_min_images`, default
  dimension + 1), or its covariance is singular and the estimate is mostly sample-size bias; below that it is
  reported as missing, never as a number. KID is unbiased and is reported from 2 images up; the k-NN
  measures need `nearest_k + 2` images (prdc's neighbour radius).

Results are cached in `diversity.json` beside the set's manifest, keyed by extractor and a hash of
everything that decides them, so a rerun recomputes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from harness.core import atomic
from harness.core.identity import diversity_keys
from harness.core.sets import load_set
from harness.models.measures import (
    DiversityConfig,
    build_extractor,
    check_config,
    extract,
    measures_from_features,
    principal_basis,
    real_reference_indices,
)

# Bumped when what a measure means changes, so cached results of the old meaning are not shown.
MEASURES_VERSION = 1


class DiversityMeter:
    """Measures sets against one real reference on one extractor. Nothing is loaded until a set misses its
    cached result: a rerun reads `diversity.json` files only."""

    def __init__(
        self,
        cfg: DiversityConfig,
        real,
        teacher_loader: Callable[[], nn.Module] | None = None,
        teacher_hash: str | None = None,
        cache_dir: Path | None = None,
        device: str | None = None,
    ):
        check_config(cfg)
        self.cfg, self.real, self.teacher_loader, self.cache_dir = cfg, real, teacher_loader, cache_dir
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        ident = {"extractor": cfg.extractor}
        if cfg.extractor == "teacher":
            ident["teacher"] = teacher_hash
        else:
            ident["weights"] = cfg.inception_weights
        self.reference_key, measures_key = diversity_keys(
            ident, real.train.fingerprint(), asdict(cfg), MEASURES_VERSION
        )
        self.key = f"{cfg.extractor}-{measures_key}"
        self._extractor = self._reference = None

    def extractor(self) -> nn.Module:
        if self._extractor is None:
            self._extractor = build_extractor(
                self.cfg, self.teacher_loader, self.real.channels, self.real.image_size, self.device
            )
        return self._extractor

    def reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Real features and labels, from the run's cache when an earlier run extracted them."""
        if self._reference is not None:
            return self._reference
        path = self.cache_dir / f"diversity-real-{self.reference_key}.pt" if self.cache_dir else None
        if path is not None and path.exists():
            try:
                saved = torch.load(path, weights_only=True)
                self._reference = saved["features"], saved["labels"]
                return self._reference
            except Exception as e:  # a damaged file (torch raises several kinds): extract the features again
                print(
                    f"[diversity] the cached {path} is damaged ({type(e).__name__}); extracting the real "
                    f"reference again",
                    flush=True,
                )
        train = self.real.train
        idx = real_reference_indices(train, self.cfg.real_per_class, self.cfg.seed)
        feats = extract(self.extractor(), lambda i: train.load(idx[i]), len(idx), self.cfg.batch_size)
        self._reference = feats, train.labels[idx].clone()
        if path is not None:
            atomic.torch_save({"features": feats, "labels": self._reference[1]}, path)
        return self._reference

    def measure(self, set_path: Path | str) -> dict:
        """The measures of the set in `set_path` (an ImageFolder of PNGs in the suite's class folders)."""
        set_path = Path(set_path)
        cache = set_path / "diversity.json"
        cached = _read_cache(cache)
        if self.key in cached:
            return cached[self.key]
        images, labels = load_set(set_path, self.real.classes, self.real.channels)
        fake = extract(self.extractor(), lambda i: images[i], len(images), self.cfg.batch_size)
        real_feats, real_labels = self.reference()
        projection = {}
        if self.cfg.feature_dim is not None:
            mean, basis, kept = principal_basis(real_feats, self.cfg.feature_dim)
            real_feats, fake = (real_feats.double() - mean) @ basis, (fake.double() - mean) @ basis
            projection = {"pca_variance_kept": kept}
        result = {
            "extractor": self.cfg.extractor,
            **projection,
            **measures_from_features(real_feats, real_labels, fake, labels, self.cfg),
        }
        cached[self.key] = result
        atomic.write_json(cache, cached, indent=1)
        return result


def measure_sets(suite, real, prepared, manifests: list, out: Path, cfg: DiversityConfig | None = None) -> None:
    """Measure every set of `manifests` (each gains its `diversity`), on the suite's choice of extractor."""
    cfg = cfg or suite.diversity
    meter = DiversityMeter(
        cfg, real, lambda: prepared.load_teacher(meter.device), prepared.teacher_hash, Path(out) / "cache"
    )
    # What a killed write of a cache left (atomic.replacing removes its temp only when the writer lives on). The
    # output folder is this run's alone (harness/core/lock.py), so no temp here is another writer's work in progress.
    for folder in [Path(out) / "cache", *(Path(m.path) for m in manifests)]:
        if folder.is_dir():
            atomic.sweep_temps(folder)
    todo = [m for m in manifests if meter.key not in _cached_keys(Path(m.path))]
    print(
        f"[diversity] {len(manifests)} sets on {cfg.extractor} features, {len(todo)} to measure "
        f"({len(manifests) - len(todo)} cached)",
        flush=True,
    )
    for m in tqdm(manifests, desc="[diversity] sets", disable=not todo, mininterval=2):
        m.diversity = meter.measure(m.path)


def _read_cache(cache: Path, quiet: bool = False) -> dict:
    """A set's cached measures; a damaged cache reads as empty (its measures are made again), with one line."""
    if not cache.exists():
        return {}
    try:
        cached = json.loads(cache.read_text())
        if isinstance(cached, dict):
            return cached
    except (OSError, ValueError):
        pass
    if not quiet:
        print(f"[diversity] the cached {cache} is damaged; measuring the set again", flush=True)
    return {}


def _cached_keys(set_path: Path) -> set[str]:
    return set(_read_cache(set_path / "diversity.json", quiet=True))
