"""Diffusion-driven patch selection on tiny real models: the batched scorer and feature extractor against a direct
loop over draws (latent DiT and pixel DiT), the chosen windows are the most typical by Eq. 5, the stitched images
hold exactly the chosen patches, the cluster ranking and per-cluster counts on a hand-made case, the ablations on
the same draws, the defaults pinned to the paper, and the suites."""

import dataclasses

import pytest
import torch

from harness.config.loader import load_suite
from harness.models.generators.dit import DiTBackbone
from harness.models.generators.pixel_dit import PixelDiTConfig, build_scheduler, build_transformer
from harness.models.generators.sampling import fit_to_backbone
from harness.models.generators.scoring import dift_features, loss_gap_map, representativeness
from methods import get_method
from methods.base import MethodContext
from methods.patch_selection import PatchSelectionConfig, cluster_ranked_selection
from tests.factories import real_task, tiny_latent_dit, tiny_teacher

LABEL = 7
IMAGENET_SUITES = ["imagenet", "imagenette", "imagewoof", "imageidc", "imagenet-100"]


def tiny_pixel_dit() -> DiTBackbone:
    torch.manual_seed(1)
    cfg = PixelDiTConfig(sample_size=8, patch_size=2, width=16, depth=2, heads=2)
    return DiTBackbone(build_transformer(cfg, 1, 10), build_scheduler())


@pytest.fixture(scope="module")
def backbone():
    return tiny_latent_dit()


def _loop(bb, z, labels, timesteps, noise):
    """R's loss-gap map one (image, draw, condition) at a time, as Algorithm 1 lines 6–11 write it."""
    ac = bb.alphas_cumprod
    out = torch.zeros(z.shape[0], *z.shape[-2:])
    for b in range(z.shape[0]):
        for n in range(timesteps.shape[1]):
            t, eps = timesteps[b, n], noise[b, n][None]
            x_t = ac[t].sqrt() * z[b : b + 1] + (1 - ac[t]).sqrt() * eps
            cond = (bb.eps(x_t, t[None], labels[b : b + 1]) - eps).pow(2).mean(1)[0]
            null = (bb.eps(x_t, t[None], torch.tensor([bb.null_class])) - eps).pow(2).mean(1)[0]
            out[b] += cond - null
    return out / timesteps.shape[1]


@pytest.mark.parametrize("make", [tiny_latent_dit, tiny_pixel_dit], ids=["latent-dit", "pixel-dit"])
def test_batched_scorer_and_features_equal_a_direct_loop(make):
    bb = make()
    gen = torch.Generator().manual_seed(0)
    z = torch.randn((3, *bb.latent_shape), generator=gen)
    labels = torch.tensor([1, 4, 7])
    timesteps = torch.randint(100, 700, (3, 5), generator=gen)
    noise = torch.randn((3, 5, *bb.latent_shape), generator=gen)
    with torch.no_grad():
        expected = _loop(bb, z, labels, timesteps, noise)
    # batch_size 4 puts two draws per call, so calls straddle images.
    got = loss_gap_map(bb, z, labels, timesteps, noise, batch_size=4)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        representativeness(bb, z, labels, timesteps, noise), expected.mean((1, 2)), atol=1e-6, rtol=1e-5
    )
    windows = representativeness(bb, z, labels, timesteps, noise, window=2, batch_size=7)
    side = bb.latent_size - 1
    assert windows.shape == (3, side, side)
    torch.testing.assert_close(windows[2, side - 1, 0], expected[2, -2:, :2].mean(), atol=1e-6, rtol=1e-5)
    # DIFT: the ensemble's mean of the mid-network tokens' mean, one (image, draw) at a time.
    ens = torch.randn((3, 2, *bb.latent_shape), generator=gen)
    ac = bb.alphas_cumprod[160]
    with torch.no_grad():
        by_hand = torch.stack(
            [
                torch.stack(
                    [
                        bb.block_features(
                            ac.sqrt() * z[b : b + 1] + (1 - ac).sqrt() * ens[b, e][None],
                            torch.tensor([160]),
                            labels[b : b + 1],
                            0,
                        ).mean(1)[0]
                        for e in range(2)
                    ]
                ).mean(0)
                for b in range(3)
            ]
        )
    torch.testing.assert_close(
        dift_features(bb, z, labels, 160, ens, block=0, batch_size=5), by_hand, atol=1e-5, rtol=1e-5
    )


def test_the_condition_is_the_class_and_the_null_class_the_reference():
    bb = tiny_latent_dit()
    gen = torch.Generator().manual_seed(2)
    z = torch.randn((2, *bb.latent_shape), generator=gen)
    t = torch.randint(100, 700, (2, 3), generator=gen)
    noise = torch.randn((2, 3, *bb.latent_shape), generator=gen)
    assert torch.equal(representativeness(bb, z, bb.null_class, t, noise), torch.zeros(2))
    assert not torch.equal(representativeness(bb, z, 3, t, noise), representativeness(bb, z, 4, t, noise))


def test_defaults_are_the_papers():
    cfg = PatchSelectionConfig()
    assert (cfg.t_min, cfg.t_max) == (0.1, 0.7)  # §4.1, Table 7
    assert (cfg.clusters, cfg.top_clusters) == (32, 10)  # §3.3: M = 32, the top 10 clusters
    assert (cfg.factor, cfg.stitch_max_ipc) == (2, 10)  # §3.4: four patches per image at IPC ≤ 10
    assert cfg.patch_fraction == 224 / 256  # §4.2, appendix §6
    assert (cfg.typical, cfg.clustering) == ("low", "dift")  # Eq. 5; §3.3
    assert cfg.dift_timestep == 160 and cfg.num_candidates == 300  # appendix §3 "t = 1.60"; Fig. 6
    assert (cfg.factor_at(10), cfg.factor_at(20)) == (2, 1)
    for bad in (
        {"typical": "max"},
        {"clustering": "clip"},
        {"top_clusters": 40},
        {"t_min": 0.8},
        {"patch_fraction": 0.0},
        {"draws": 0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
            PatchSelectionConfig(**bad)


def test_cluster_ranking_and_counts_on_a_hand_made_case():
    # Three clusters: 0 = {0, 1, 2} (typicality median 5), 1 = {3, 4, 5, 6} (median 8.5), 2 = {7, 8} (median 1.5).
    typicality = torch.tensor([5.0, 9.0, 1.0, 8.0, 9.0, 7.0, 10.0, 2.0, 1.0], dtype=torch.float64)
    assignment = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])
    distance = torch.tensor([0.3, 0.1, 0.2, 0.4, 0.9, 0.1, 0.5, 0.0, 0.1], dtype=torch.float64)
    # Top 2 clusters (1, then 0), 2 patches each nearest their centre (not the most typical): 5, 3, then 1, 2.
    assert cluster_ranked_selection(typicality, assignment, distance, 2, 2, 4).tolist() == [5, 3, 1, 2]
    # Shortfall: 3 per cluster from the top 2 gives 6; the seventh is the most typical unused patch (4 at 9.0,
    # tied with 1, already taken; stable order keeps the lower index first).
    assert cluster_ranked_selection(typicality, assignment, distance, 2, 3, 7).tolist() == [5, 3, 6, 1, 2, 0, 4]
    # A top cluster smaller than its share gives all it has; the rest comes by typicality: IPC 1 (0 per cluster).
    assert cluster_ranked_selection(typicality, assignment, distance, 3, 3, 9).tolist() == [5, 3, 6, 1, 2, 0, 7, 8, 4]
    assert cluster_ranked_selection(typicality, assignment, distance, 3, 0, 3).tolist() == [6, 1, 4]


def _task(tiny_real, ipc=2, seed=3):
    return real_task(tiny_real, LABEL, ipc, seed, n_real=40)


def _method(backbone, name="patch-selection", **overrides):
    cls = get_method(name)
    config = dataclasses.replace(
        cls.default_config(),
        **{"draws": 3, "dift_ensemble": 2, "patch_fraction": 0.5, "clusters": 6, "top_clusters": 3, **overrides},
    )
    return cls(config, MethodContext(backbone=backbone, teacher=tiny_teacher()))


def test_the_chosen_window_is_the_lowest_r_and_the_images_hold_exactly_the_chosen_patches(backbone, tiny_real):
    method, task = _method(backbone), _task(tiny_real)
    patches, order, scored = method.select(task)
    # The windows by hand: the R map of each candidate from the same draws, its lowest 2 × 2 window (Eq. 5).
    candidates, timesteps, noise, _, _ = method._draws(task, len(task.real))
    z = backbone.encode(fit_to_backbone(task.real[candidates].float() / 255, backbone))
    maps = representativeness(backbone, z, LABEL, timesteps, noise, window=2)
    low = maps.flatten(1).argmin(1)
    scale = task.image_size / backbone.latent_size  # 28 px over 4 latent positions: a window is 14 px
    assert torch.equal(scored.boxes[:, 0], (low // 3 * scale).round().long())
    assert torch.equal(scored.boxes[:, 1], (low % 3 * scale).round().long())
    torch.testing.assert_close(scored.r, maps.flatten(1).min(1).values.double())
    # Four patches per image at IPC 2, image i holding patches 4i … 4i + 3 of the selection, row-major.
    images = method.distill_class(task)
    assert images.shape == (2, 1, 28, 28) and len(order) == 8
    for i in range(2):
        for k in range(4):
            top, left, side = scored.boxes[order[4 * i + k]].tolist()
            assert side == 14
            patch = task.real[candidates[order[4 * i + k]], :, top : top + side, left : left + side].float() / 255
            y, x = 14 * (k // 2), 14 * (k % 2)
            torch.testing.assert_close(images[i, :, y : y + 14, x : x + 14], patch, atol=1e-6, rtol=0)
            torch.testing.assert_close(patches[4 * i + k], patch)


def test_ablations_share_the_draws_and_differ_in_the_clustering(backbone, tiny_real):
    task = _task(tiny_real, ipc=1)
    full = _method(backbone)
    _, order, scored = full.select(task)
    _, plain, plain_scored = _method(backbone, "patch-selection-no-cluster").select(task)
    assert torch.equal(scored.r, plain_scored.r) and torch.equal(scored.boxes, plain_scored.boxes)
    assert torch.equal(plain, scored.r.argsort(stable=True)[:4])  # the four lowest R: most typical by Eq. 5
    # Algorithm 1's argmax reading takes the other end.
    high = _method(backbone, "patch-selection-no-cluster", typical="high").select(task)[1]
    assert torch.equal(high, (-_method(backbone, typical="high").select(task)[2].r).argsort(stable=True)[:4])
    teacher = get_method("patch-selection-teacher-cluster")
    assert teacher.needs_for(teacher.default_config()) == {"backbone", "teacher", "real_images"}
    assert _method(backbone, "patch-selection-teacher-cluster").distill_class(task).shape == (1, 1, 28, 28)
    # IPC above stitch_max_ipc: one whole-size patch per image, each top cluster giving IPC // N.
    ipc12 = _method(backbone, stitch_max_ipc=1, patch_fraction=1.0)
    patches, order, scored = ipc12.select(_task(tiny_real, ipc=3))
    assert patches.shape == (3, 1, 28, 28) and (scored.boxes[:, 2] == 28).all()


def test_work_counts_the_scoring_and_the_features():
    cls = get_method("patch-selection")
    w = cls.work(cls.default_config(), 10, 1300)
    assert (w.backbone, w.vae, w.teacher) == (300 * 10 * 2 + 300 * 8, 600, 0)
    whole = dataclasses.replace(cls.default_config(), patch_fraction=1.0, factor=1)
    assert cls.work(whole, 50, 200).vae == 200
    for name, expected in (
        ("patch-selection-no-cluster", (300 * 10 * 2, 300, 0)),
        ("patch-selection-teacher-cluster", (300 * 10 * 2, 300, 300)),
    ):
        variant = get_method(name)
        w = variant.work(dataclasses.replace(variant.default_config(), patch_fraction=1.0, factor=1), 1, 300)
        assert (w.backbone, w.vae, w.teacher) == expected


@pytest.mark.parametrize("name", IMAGENET_SUITES)
def test_imagenet_suites_run_patch_selection_as_the_paper(name):
    suite = load_suite(name, check_files=False)
    for method in ("patch-selection", "patch-selection-no-cluster", "patch-selection-teacher-cluster"):
        assert suite.method_config(method) == get_method(method).default_config()


def test_fashion_mnist_runs_patch_selection_on_whole_images_on_the_leaderboard():
    suite = load_suite("fashion-mnist", "leaderboard", check_files=False)
    for method in ("patch-selection", "patch-selection-no-cluster", "patch-selection-teacher-cluster"):
        cfg = suite.method_config(method)
        assert (cfg.patch_fraction, cfg.factor) == (1.0, 1)  # §4.2: low resolution, RDED's setting
    assert "patch-selection" not in load_suite("fashion-mnist", check_files=False).methods
