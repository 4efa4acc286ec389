"""Diversity and fidelity measures: behaviour on synthetic features, the torchmetrics/prdc path, small sets
reported as such, the cache beside a set, and the extractor choice."""

import json

import numpy as np
import prdc
import pytest
import scipy.linalg
import torch
import torchmetrics.image.fid
import torchmetrics.image.kid

from harness.config.loader import load_suite
from harness.config.schema import SuiteError
from harness.core.sets import save_images
from harness.models import measures
from harness.models.measures import DiversityConfig, DiversityError, check_config, measures_from_features
from harness.models.students import create_student
from harness.models.teachers import Teacher
from harness.stages import diversity
from harness.stages.diversity import DiversityMeter


def _clusters(n_per_class: int, classes: int = 4, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 4
    return centres[labels] + torch.randn(len(labels), dim, generator=g), labels


def test_identical_sets_are_perfect():
    real, labels = _clusters(50)
    m = measures_from_features(real, labels, real.clone(), labels.clone(), DiversityConfig())
    assert abs(m["fid"]) < 1e-6
    assert m["precision"] == m["recall"] == m["coverage"] == 1.0 and m["density"] == pytest.approx(1.0, abs=0.1)


def test_copies_of_one_image_have_fidelity_but_no_diversity():
    real, labels = _clusters(100)
    honest, honest_labels = _clusters(10, seed=1)  # a fresh sample of the same distribution
    copies = real[:1].repeat(len(honest), 1)  # one real image, 40 times
    cfg = DiversityConfig()
    good = measures_from_features(real, labels, honest, honest_labels, cfg)
    bad = measures_from_features(real, labels, copies, honest_labels, cfg)
    assert bad["precision"] == 1.0  # every copy is a real image...
    assert bad["recall"] == 0.0 and bad["coverage"] < 0.25  # ...but they cover one point of the data
    assert good["recall"] > 0.5 and good["coverage"] > 2 * bad["coverage"]
    assert bad["fid"] > good["fid"] and bad["kid"] > good["kid"]
    shifted = measures_from_features(real, labels, honest + 3.0, honest_labels, cfg)
    assert shifted["fid"] > good["fid"] and shifted["precision"] < good["precision"]


def test_measures_come_from_torchmetrics_and_prdc(monkeypatch):
    calls = {"fid": 0, "kid": 0, "prdc": []}
    fid_impl, kid_impl, prdc_impl = (
        torchmetrics.image.fid._compute_fid,
        torchmetrics.image.kid.poly_mmd,
        prdc.compute_prdc,
    )

    def fid_spy(*a, **k):
        calls["fid"] += 1
        return fid_impl(*a, **k)

    def kid_spy(*a, **k):
        calls["kid"] += 1
        return kid_impl(*a, **k)

    def prdc_spy(real_features, fake_features, nearest_k):
        calls["prdc"].append(nearest_k)
        return prdc_impl(real_features, fake_features, nearest_k)

    monkeypatch.setattr(torchmetrics.image.fid, "_compute_fid", fid_spy)
    monkeypatch.setattr(torchmetrics.image.kid, "poly_mmd", kid_spy)
    monkeypatch.setattr(prdc, "compute_prdc", prdc_spy)
    real, labels = _clusters(20)
    fake, fake_labels = _clusters(20, seed=2)
    cfg = DiversityConfig(nearest_k=3, real_draws=4, kid_subsets=7)
    m = measures_from_features(real, labels, fake, fake_labels, cfg)
    assert calls == {"fid": 1, "kid": 7, "prdc": [3] * 4}
    # The real pool is exactly the set's size and balance, so every draw is all of it: prdc's own numbers.
    direct = prdc_impl(real.numpy(), fake.numpy(), 3)
    for name in ("precision", "recall", "density", "coverage"):
        assert m[name] == pytest.approx(direct[name]) and m[f"{name}_std"] == pytest.approx(0.0)
    # FID against the textbook formula with scipy's matrix square root.
    r, f = real.double().numpy(), fake.double().numpy()
    s1, s2 = np.cov(r, rowvar=False), np.cov(f, rowvar=False)
    expected = ((r.mean(0) - f.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert m["fid"] == pytest.approx(expected, rel=1e-6)


def test_a_set_too_small_is_reported_as_such():
    real, labels = _clusters(100, dim=16)
    fake, fake_labels = _clusters(3, dim=16, seed=1)  # 12 images of 16 features: covariance singular
    m = measures_from_features(real, labels, fake, fake_labels, DiversityConfig())
    assert m["fid"] is None and m["fid_min_images"] == 17 and m["kid"] is not None and m["precision"] is not None
    tiny = measures_from_features(real, labels, fake[:6], fake_labels[:6], DiversityConfig(nearest_k=5))
    assert tiny["precision"] is None and tiny["coverage"] is None and tiny["prdc_min_images"] == 7
    one = measures_from_features(real, labels, fake[:1], fake_labels[:1], DiversityConfig())
    assert one["kid"] is None and one["fid"] is None
    # A suite may lower the bar knowingly.
    assert measures_from_features(real, labels, fake, fake_labels, DiversityConfig(fid_min_images=10))["fid"] > 0


def test_large_sets_are_subsampled_for_the_knn_measures_only():
    real, labels = _clusters(50)
    fake, fake_labels = _clusters(10, seed=1)
    m = measures_from_features(real, labels, fake, fake_labels, DiversityConfig(prdc_max_images=20))
    assert m["images"] == 40 and m["prdc_images"] == m["real_draw_images"] == 20 and m["kid_subset_size"] == 40


def test_bad_settings_are_one_line_errors(tmp_path, tiny_suite):
    with pytest.raises(
        DiversityError,
        match=r"^diversity\.extractor: unknown extractor 'clip' \(known: teacher, "
        r"inception\)$",
    ):
        check_config(DiversityConfig(extractor="clip"))
    with pytest.raises(DiversityError, match=r"^diversity\.nearest_k: must be at least 1"):
        check_config(DiversityConfig(nearest_k=0))
    with pytest.raises(SuiteError, match=r"tiny-suite\.yaml: diversity\.extractor: unknown extractor 'clip'"):
        load_suite(tiny_suite.source, overrides={"diversity": {"extractor": "clip"}})
    with pytest.raises(SuiteError, match=r"diversity\.inception_weights: .* is not a file"):
        load_suite(
            tiny_suite.source,
            overrides={"diversity": {"extractor": "inception", "inception_weights": str(tmp_path / "none.pth")}},
        )


@pytest.fixture()
def disk_set(tmp_path, tiny_real):
    """A set on disk the way distill writes one: 3 real images of every class as PNGs."""
    path = tmp_path / "set"
    for label, key in enumerate(tiny_real.classes):
        (path / key).mkdir(parents=True)
        save_images(tiny_real.train.class_images(label)[:3].float() / 255, path / key)
    return path


def _random_teacher():
    torch.manual_seed(0)
    return Teacher(create_student("convnet3", 10, 1, 28, width=8), 28, 1, [0.5], [0.5])


def test_results_are_cached_beside_the_set(disk_set, tiny_real, tmp_path, monkeypatch):
    teacher = _random_teacher()
    cfg = DiversityConfig(real_per_class=30, kid_subsets=10, real_draws=3)
    cache = tmp_path / "cache"
    first = DiversityMeter(cfg, tiny_real, lambda: teacher, "teacher-hash", cache).measure(disk_set)
    assert first["images"] == 30 and first["real_images"] == 300 and first["feature_dim"] == 72
    assert first["fid"] is None and 0 <= first["coverage"] <= 1  # 30 images < 73: no FID
    stored = json.loads((disk_set / "diversity.json").read_text())
    (key,) = stored
    assert key.startswith("teacher-") and stored[key] == first

    def must_not_run(*a, **k):
        raise AssertionError("recomputed a cached measure")

    monkeypatch.setattr(diversity, "measures_from_features", must_not_run)
    monkeypatch.setattr(diversity, "extract", must_not_run)
    again = DiversityMeter(cfg, tiny_real, lambda: pytest.fail("loaded the teacher"), "teacher-hash", cache)
    assert again.measure(disk_set) == first
    monkeypatch.undo()

    # Another setting is another entry; the real reference's features come from the run's cache.
    extracted = []
    extract = diversity.extract
    monkeypatch.setattr(diversity, "extract", lambda *a, **k: extracted.append(a[2]) or extract(*a, **k))
    other = DiversityMeter(
        DiversityConfig(real_per_class=30, kid_subsets=10, real_draws=3, nearest_k=3),
        tiny_real,
        lambda: teacher,
        "teacher-hash",
        cache,
    ).measure(disk_set)
    assert extracted == [30] and other["nearest_k"] == 3  # the set only
    assert len(json.loads((disk_set / "diversity.json").read_text())) == 2
    # Another teacher is another extractor identity: nothing of the first is reused.
    assert DiversityMeter(cfg, tiny_real, lambda: teacher, "other-teacher", cache).key != again.key


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A randomly initialised FID Inception saved as a weights file: the offline path real users take with the
    real weights (which cannot be downloaded here)."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    mp = pytest.MonkeyPatch()
    mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
    mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
    torch.manual_seed(0)
    net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    mp.undo()
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


def test_inception_extractor_on_grey_images(inception_weights, tiny_real):
    cfg = DiversityConfig(extractor="inception", inception_weights=str(inception_weights))
    extractor = measures.build_extractor(cfg, None, 1, 28)
    images = tiny_real.train.load(torch.arange(3))
    feats = measures.extract(extractor, lambda i: images[i], 3, 2)
    assert feats.shape == (3, 2048) and torch.isfinite(feats).all()
    assert DiversityMeter(cfg, tiny_real).key.startswith("inception-")


def test_principal_components_make_fid_defined_on_small_sets(disk_set, tiny_real, tmp_path):
    from harness.models.measures import principal_basis

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g) @ torch.tensor([[3.0, 0, 0], [0, 1.0, 0], [0, 0, 0.1]])
    mean, basis, kept = principal_basis(x, 2)
    assert basis.shape == (3, 2) and 0.99 < kept < 1
    torch.testing.assert_close(basis.abs(), torch.eye(3, dtype=torch.float64)[:, :2], atol=0.1, rtol=0)
    cfg = DiversityConfig(real_per_class=30, kid_subsets=10, real_draws=3, feature_dim=8)
    m = DiversityMeter(cfg, tiny_real, _random_teacher, "teacher-hash", tmp_path / "cache").measure(disk_set)
    assert m["feature_dim"] == 8 and m["fid_min_images"] == 9 and m["fid"] is not None and m["fid"] >= 0
    assert 0 < m["pca_variance_kept"] <= 1
    with pytest.raises(DiversityError, match=r"^diversity\.feature_dim: must be at least 1"):
        check_config(DiversityConfig(feature_dim=0))
