"""patch-selection: Efficient Dataset Distillation via Diffusion-Driven Patch Selection (Zhong et al.; seed paper
002_3deef3254d3e388d). No public code exists: Algorithm 1, §3.2–3.4, §4.1–4.2 and the appendix are the
specification.

Per class, from real images only (nothing is generated):

1. Score (Stage I, §3.2): each candidate image is encoded to its latent z and scored by the representativeness
   R(z|c) = E_{t∼U(0.1,0.7), ε}[L_t(z, ε, c) − L_t(z, ε, ∅)] (Eq. 6) from `draws` (t, ε) pairs, the same pairs
   for both conditions (Algorithm 1, lines 7–11). On high-resolution suites every window of `patch_fraction` of
   the side (224 of 256 px) is scored by average-pooling the loss map (§4.2: "a 224x224 averaging pool kernel")
   and each image contributes its most typical window (Algorithm 1, line 12); low-resolution suites score the
   whole image (§4.2, "of full-image without cropping"). The condition is the class's backbone label
   (`ClassTask.condition`: its ImageNet-1k index for a pretrained DiT), ∅ the null class. On a text-conditioned
   backbone (Stable Diffusion, the paper's) c is the prompt "An image of <class name>" and ∅ "An image of ."
   (§3.2, after Eq. 5), which the method asks for (`prompts`).
2. Sign: Eq. 5 gives p(c|z) = 1 / (1 + exp R(z|c)), which falls as R grows, while Algorithm 1 writes argmax R.
   The most typical patch is the one the class condition helps most, the lowest R (`typical = "low"`); the
   check on Fashion-MNIST (scripts/patch_selection_sign_check.py, docs/decisions.md) measured it.
3. Cluster (Stage II, §3.3): DIFT features of every selected patch (intermediate activations of the backbone at
   `dift_timestep` under the class condition), k-means with M = `clusters` centres; clusters ranked by the
   median typicality of their patches, patches within a cluster by distance to its centre; the top N =
   `top_clusters` clusters give `per_cluster` patches each, and a shortfall is filled with the unused patches in
   order of typicality (appendix §5).
4. Assemble (§3.4, §4.2): at IPC ≤ `stitch_max_ipc`, `factor`² patches per image (4 · IPC patches, each cluster
   giving 4 · IPC // N), stitched into a factor × factor grid as RDED does; above it, one patch per image (each
   cluster giving IPC // N). Image i is patches factor² · i … factor² · i + factor² − 1 of the selection order, so
   at IPC 10 each image holds the top 4 patches of one of the top 10 clusters (§4.2: "we select the top 4 patches
   from the top 10 clusters, resize each to 112x112, and concatenate them into a single image"). Low-resolution
   suites take RDED's low-resolution setting (§4.2), factor 1.

Ablations (Table 5): `patch-selection-no-cluster` (the `IPC · factor²` most typical patches) and
`patch-selection-teacher-cluster` (k-means on the suite teacher's pooled features in place of DIFT, the
harness's stand-in for Table 5's CLIP features). All three draw the same candidates, (t, ε) pairs and DIFT noise.

Choices the paper leaves open, with reasons (docs/decisions.md, "Diffusion-driven patch selection (issue 16)"):

- `draws`: the paper never gives Algorithm 1's N; 10 (t, ε) pairs.
- `num_candidates`: 300 real images per class, Fig. 6's "nearly on par with the full dataset" (and RDED's mipc).
- `dift_timestep = 160`: the paper's "t = 1.60" (appendix §3, Algorithm 1 line 14) read in hundreds of the
  1,000 training steps, as its R range is in fractions of them; t > 1 cannot be a fraction.
- `dift_block = 0.5`: the block halfway through the transformer (DIFT reads SD's U-Net at its second up block;
  a DiT has no encoder/decoder). On Stable Diffusion the backbone's blocks are the U-Net's four up blocks, and
  0.5 picks the second, `up_blocks[1]`: DIFT's own SD setting (`up_ft_index` 1).
  `dift_ensemble = 8`: DIFT's extract_dift.py `--ensemble_size` default.
- Noise: Eq. 1 prints (1 − √ᾱ_t)·ε; the backbone is trained on √(1 − ᾱ_t)·ε, which is used.
- Patches are cut from the suite's images at the window's pixel box and resized (bilinear, antialiased) to
  the tile (`image_size // factor`) or the whole image; the paper resizes 224-px patches to 112 and stitches
  224-px images, the harness returns the suite's `image_size`.

Defaults (pinned by tests/test_contract.py):
    num_candidates = 300  Fig. 6: 300 random real images per class are nearly on par with all of them
    draws = 10  Algorithm 1's N (t, ε) pairs: not given by the paper
    t_min = 0.1  §4.1 "a time-step range of [0.1, 0.7]"; Table 7's best range
    t_max = 0.7  §4.1 "a time-step range of [0.1, 0.7]"; Table 7's best range
    typical = 'low'  Eq. 5: p(c|z) = 1 / (1 + exp R), so the most typical patch has the lowest R
    patch_fraction = 0.875  §4.2 and appendix §6: 224-px patches of 256-px images
    factor = 2  §4.2: at IPC ≤ 10 four patches per image, 2 × 2
    stitch_max_ipc = 10  §3.4 and appendix §5: "when IPC ≤ 10"
    clusters = 32  §3.3: "we fix the number of cluster centers at 32"
    top_clusters = 10  §3.3 and §4.1: "the top 10 clusters"
    clustering = 'dift'  §3.3: k-means on DIFT features (Table 5's "w/ Cluster-DIFT")
    dift_timestep = 160  appendix §3: "t = 1.60" (Algorithm 1 line 14), in hundreds of training steps
    dift_block = 0.5  halfway through the transformer (DIFT reads a mid-decoder U-Net block)
    dift_ensemble = 8  DIFT extract_dift.py --ensemble_size default 8
    batch_size = 64  memory only: transformer rows per call
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans

from harness.models.generators.sampling import fit_to_backbone
from harness.models.generators.scoring import dift_features, representativeness

from .base import ClassTask, Method, Prompts, Work, draw_real, real_as_float, teacher_features
from .rded import cut_crops, stitch
from .registry import register_method, register_variant

CLUSTERINGS = ("dift", "teacher", "none")


@dataclass(frozen=True)
class PatchSelectionConfig:
    num_candidates: int = 300
    # Algorithm 1's N: (t, ε) pairs per image, t uniform in [t_min, t_max] of the training timesteps.
    draws: int = 10
    t_min: float = 0.1
    t_max: float = 0.7
    # Which end of R is "most typical": "low" (Eq. 5) or "high" (Algorithm 1's argmax, as printed).
    typical: str = "low"
    # Window side as a fraction of the image's (1.0: the whole image, the low-resolution setting).
    patch_fraction: float = 0.875
    # Patches per side stitched into one image at IPC ≤ stitch_max_ipc (1: no stitching).
    factor: int = 2
    stitch_max_ipc: int = 10
    # k-means centres (M) and the top clusters that give patches (N).
    clusters: int = 32
    top_clusters: int = 10
    # Features k-means runs on: "dift" (the paper), "teacher" (Table 5's other features), "none" (no clustering).
    clustering: str = "dift"
    dift_timestep: int = 160
    dift_block: float = 0.5
    dift_ensemble: int = 8
    batch_size: int = 64

    def __post_init__(self):
        for name in ("num_candidates", "draws", "factor", "clusters", "top_clusters", "dift_ensemble", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.t_min <= self.t_max <= 1:
            raise ValueError(f"t_min: 0 ≤ t_min ≤ t_max ≤ 1 is needed, got ({self.t_min}, {self.t_max})")
        if self.typical not in ("low", "high"):
            raise ValueError(f"typical: must be 'low' or 'high', got {self.typical!r}")
        if not 0 < self.patch_fraction <= 1:
            raise ValueError(f"patch_fraction: must be in (0, 1], got {self.patch_fraction}")
        if self.clustering not in CLUSTERINGS:
            raise ValueError(f"clustering: must be one of {', '.join(CLUSTERINGS)}, got {self.clustering!r}")
        if self.top_clusters > self.clusters:
            raise ValueError(f"top_clusters: {self.top_clusters} exceeds clusters ({self.clusters})")
        if not 0 <= self.dift_block <= 1:
            raise ValueError(f"dift_block: must be in [0, 1], got {self.dift_block}")

    def factor_at(self, ipc: int) -> int:
        return self.factor if ipc <= self.stitch_max_ipc else 1


def cluster_ranked_selection(
    typicality: torch.Tensor,
    assignment: torch.Tensor,
    distance: torch.Tensor,
    top_clusters: int,
    per_cluster: int,
    total: int,
) -> torch.Tensor:
    """Indices of `total` patches in selection order (appendix §5): clusters ranked by the median typicality of
    their patches (highest first; ties by cluster id), the first `top_clusters` giving their `per_cluster`
    patches nearest their centre (ties by index); then the unused patches, most typical first, until `total`."""
    ids = assignment.unique().tolist()
    medians = torch.tensor([float(np.median(typicality[assignment == c].numpy())) for c in ids], dtype=torch.float64)
    ranked = [ids[i] for i in torch.argsort(-medians, stable=True).tolist()]
    chosen: list[int] = []
    for c in ranked[:top_clusters]:
        members = torch.nonzero(assignment == c).flatten()
        chosen += members[torch.argsort(distance[members], stable=True)][:per_cluster].tolist()
    taken = set(chosen)
    chosen += [i for i in torch.argsort(-typicality, stable=True).tolist() if i not in taken][: total - len(chosen)]
    return torch.tensor(chosen[:total], dtype=torch.long)


def kmeans(features: torch.Tensor, k: int, random_state: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on (n, d) features: each row's cluster and its distance to that cluster's centre."""
    x = features.double().numpy()
    km = KMeans(n_clusters=min(k, len(x)), random_state=random_state, n_init="auto").fit(x)
    centres = torch.from_numpy(km.cluster_centers_)
    assignment = torch.from_numpy(km.labels_.astype(np.int64))
    return assignment, (features.double() - centres[assignment]).norm(dim=1)


def stitch_groups(patches: torch.Tensor, size: int, factor: int, ipc: int) -> torch.Tensor:
    """(ipc, C, size, size): image i is patches factor²·i … factor²·i + factor² − 1 in row-major tiles."""
    per = factor**2
    order = torch.arange(ipc * per).view(ipc, per).t().flatten()  # rded.stitch reads tile k of image i at k·ipc + i
    return stitch(patches[order], size, factor, ipc)


@dataclass
class Scored:
    candidates: torch.Tensor  # (n,) indices into task.real, in draw order
    r: torch.Tensor  # (n,) R(p|c) of each candidate's chosen window
    boxes: torch.Tensor  # (n, 3) the chosen window's pixel box (top, left, side) in the suite's image
    latents: torch.Tensor  # (n, C, h, w) the candidates' latents


@register_method
class PatchSelection(Method):
    name = "patch-selection"
    # Small images: the paper's low-resolution setting (§4.2): R of the whole image, no crops, one patch an image.
    small_image_defaults = {"patch_fraction": 1.0, "factor": 1}
    Config = PatchSelectionConfig
    needs = frozenset({"backbone", "real_images"})
    paired_switches = ("clustering",)
    # §3.2: "the label text prompt ... (i.e., "An image of ." and "An image of c")", on SD v1.5.
    prompts = Prompts("An image of {name}", "An image of .")
    # `batch_size` is transformer rows per call, and a draw takes two (the class and the null condition): the
    # rehearsal measures two and four rows, at IPC 1 (its IPC · factor² candidates, one draw and one DIFT pass each).
    stage_batches = {"score": "batch_size", "features": "batch_size"}
    rehearsal_settings = {"num_candidates": 1, "draws": 1, "dift_ensemble": 1}
    rehearsal_batches = (2, 4)
    rehearsal_ipc = 1

    @classmethod
    def needs_for(cls, config):
        return cls.needs | {"teacher"} if config.clustering == "teacher" else cls.needs

    @classmethod
    def real_images_needed(cls, config, ipc):
        return ipc * config.factor_at(ipc) ** 2  # one patch from each of that many images

    @classmethod
    def work(cls, config, ipc, real_per_class):
        n = min(real_per_class, max(config.num_candidates, cls.real_images_needed(config, ipc)))
        dift = config.clustering == "dift"
        windowed = config.patch_fraction < 1
        return Work(
            backbone=n * config.draws * 2 + (n * config.dift_ensemble if dift else 0),
            vae=n * (2 if dift and windowed else 1),
            teacher=n if config.clustering == "teacher" else 0,
        )

    def _window(self) -> int | None:
        """The scoring window's side in latent positions; None for the whole image."""
        if self.config.patch_fraction >= 1:
            return None
        return max(1, round(self.config.patch_fraction * self.backbone.latent_size))

    def _draws(self, task: ClassTask, n: int):
        # Every draw up front, whatever the clustering switch, so that the ablations share them.
        gen, cfg = task.generator(), self.config
        candidates = draw_real(task, gen, n)
        u = torch.rand((n, cfg.draws), generator=gen, dtype=torch.float64) * (cfg.t_max - cfg.t_min) + cfg.t_min
        timesteps = (u * self.backbone.num_train_timesteps).long().clamp(0, self.backbone.num_train_timesteps - 1)
        noise = torch.randn((n, cfg.draws, *self.backbone.latent_shape), generator=gen)
        dift_noise = torch.randn((n, cfg.dift_ensemble, *self.backbone.latent_shape), generator=gen)
        random_state = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        return candidates, timesteps, noise, dift_noise, random_state

    @torch.no_grad()
    def _encode(self, images01: torch.Tensor) -> torch.Tensor:
        bb, step = self.backbone, self.config.batch_size
        fitted = fit_to_backbone(images01, bb)
        return torch.cat([bb.encode(fitted[i : i + step].to(self.device)).cpu() for i in range(0, len(fitted), step)])

    def score(self, task: ClassTask, candidates, timesteps, noise) -> Scored:
        """R of every candidate's windows; each candidate keeps its most typical window."""
        latents = self._encode(real_as_float(task.real[candidates]))
        window = self._window()
        r = (
            representativeness(
                self.backbone,
                latents.to(self.device),
                task.condition,
                timesteps.to(self.device),
                noise,
                window,
                self.config.batch_size,
            )
            .cpu()
            .double()
        )
        n, size = len(candidates), task.image_size
        if window is None:
            boxes = torch.tensor([[0, 0, size]]).expand(n, 3).clone()
        else:
            flat = r.flatten(1)
            pick = flat.argmin(1) if self.config.typical == "low" else flat.argmax(1)
            row, col = pick // r.shape[-1], pick % r.shape[-1]
            r = flat[torch.arange(n), pick]
            scale = size / self.backbone.latent_size  # suite pixels per latent position
            side = min(size, round(window * scale))
            top = (row.double() * scale).round().long().clamp(max=size - side)
            left = (col.double() * scale).round().long().clamp(max=size - side)
            boxes = torch.stack([top, left, torch.full_like(top, side)], 1)
        return Scored(candidates, r, boxes, latents)

    def typicality(self, r: torch.Tensor) -> torch.Tensor:
        return -r if self.config.typical == "low" else r

    def features(self, task: ClassTask, scored: Scored, patches01: torch.Tensor, dift_noise) -> torch.Tensor:
        cfg = self.config
        if cfg.clustering == "teacher":
            return teacher_features(self.teacher, patches01.to(self.device)).cpu()
        whole = bool((scored.boxes[:, 2] == task.image_size).all())
        latents = scored.latents if whole else self._encode(patches01)
        block = min(self.backbone.depth - 1, max(0, round(cfg.dift_block * self.backbone.depth) - 1))
        return dift_features(
            self.backbone, latents.to(self.device), task.condition, cfg.dift_timestep, dift_noise, block, cfg.batch_size
        ).cpu()

    def select(self, task: ClassTask) -> tuple[torch.Tensor, torch.Tensor, Scored]:
        """(patches in selection order (IPC · factor², C, s, s), their indices into the candidates, the scores)."""
        cfg = self.config
        factor = cfg.factor_at(task.ipc)
        total = task.ipc * factor**2
        if len(task.real) < total:
            raise ValueError(
                f"class {task.key} has {len(task.real)} real images; patch-selection at IPC {task.ipc} "
                f"takes one patch from each of {total}"
            )
        n = min(len(task.real), max(cfg.num_candidates, total))
        candidates, timesteps, noise, dift_noise, random_state = self._draws(task, n)
        with self.stage("score"):
            scored = self.score(task, candidates, timesteps, noise)
        typicality = self.typicality(scored.r)
        tile = task.image_size // factor
        patches = cut_crops(real_as_float(task.real[candidates]), scored.boxes[:, None], tile)[:, 0]
        if cfg.clustering == "none":
            order = torch.argsort(-typicality, stable=True)[:total]
        else:
            with self.stage("features"):
                full = (
                    patches
                    if tile == task.image_size
                    else cut_crops(real_as_float(task.real[candidates]), scored.boxes[:, None], task.image_size)[:, 0]
                )
                feats = self.features(task, scored, full, dift_noise)
            assignment, distance = kmeans(feats, cfg.clusters, random_state)
            order = cluster_ranked_selection(
                typicality, assignment, distance, cfg.top_clusters, total // cfg.top_clusters, total
            )
        return patches[order], order, scored

    def distill_class(self, task: ClassTask) -> torch.Tensor:
        patches, _, _ = self.select(task)
        return stitch_groups(patches, task.image_size, self.config.factor_at(task.ipc), task.ipc).clamp(0, 1)


register_variant(
    "patch-selection-no-cluster",
    PatchSelection,
    clustering="none",
    doc="Patch selection without clustering (Table 5, 'w/o Cluster'): the most typical patches.",
)
# Revision 1: its draws are patch-selection's (before, the teacher it clusters on entered its seed key).
register_variant(
    "patch-selection-teacher-cluster",
    PatchSelection,
    clustering="teacher",
    revision=1,
    doc="Patch selection clustering the teacher's features in place of DIFT (Table 5's CLIP row).",
)
register_variant(
    "patch-selection-sd",
    PatchSelection,
    backbone_kind="stable-diffusion",
    doc="Patch selection on Stable Diffusion v1.5, as the paper runs it (§3.2–3.3): R(z|c) under SD's text U-Net with "
    '"An image of c" against "An image of .", DIFT at its second up block; the suite\'s backbones.stable-diffusion.',
)
