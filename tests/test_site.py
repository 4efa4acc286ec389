"""The site, comparisons and exports (issue 17): intervals as SciPy's t makes them, a lead marked only where it is
resolved, a set exported and loaded back by `datasets` unchanged, and the generated site opened in headless
Chromium as a reader would: tables, every plot and every grid there, and a filter that changes the rows."""

import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from harness.config.loader import load_suite
from harness.core.sets import Manifest, load_set, save_images
from harness.models.protocols import HardLabel, SoftLabel
from harness.report.compare import by_seed, compare, difference, leaders
from harness.report.export import CHECKSUMS, PARQUET, export_set
from harness.report.leaderboard import render
from harness.report.rows import searched_label
from harness.report.scores import label_robust_scores
from harness.report.site import build_site, grid_stamp, pareto_front, recorded_versions, stamp_grid
from harness.report.tables import dd_ranking_table

ROOT = Path(__file__).resolve().parent.parent
BOARD = ROOT / "leaderboard"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _t_interval(values):
    """The textbook 95 % t interval of a mean, to check SciPy's use against."""
    v = np.asarray(values, float)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return v.mean() - half, v.mean() + half


def test_paired_and_welch_intervals():
    a, b = {0: 0.71, 1: 0.74, 2: 0.70}, {0: 0.69, 1: 0.71, 2: 0.68}
    d = difference(a, b)
    low, high = _t_interval([a[s] - b[s] for s in a])
    assert d.test == "paired t" and math.isclose(d.low, low) and math.isclose(d.high, high) and d.resolved
    # Other seeds: Welch, by its own degrees of freedom; wider here, and not resolved.
    w = difference(a, {3: 0.69, 4: 0.71, 5: 0.68})
    va, vb = np.var(list(a.values()), ddof=1) / 3, np.var([0.69, 0.71, 0.68], ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert w.test == "Welch t" and math.isclose(w.high - w.low, 2 * half) and not w.resolved
    assert math.isclose(w.mean, d.mean)
    # One seed has no spread; an identical pair differs by nothing.
    assert not difference({0: 0.9}, {0: 0.1}).resolved and "one seed" in difference({0: 0.9}, {0: 0.1}).test
    assert not difference(a, a).resolved and difference(a, a).mean == 0


def _rows(accs: dict[str, list[float]], ipc=10, protocol="hard-label"):
    return [
        dict(
            method=m,
            config_hash="h",
            ipc=ipc,
            student="convnet3",
            protocol=protocol,
            seed=seed,
            accuracy=acc,
            train_seconds=1.0,
            distill_seconds_per_image=0.5,
            peak_memory_bytes=2**20,
            kind="measured",
        )
        for m, values in accs.items()
        for seed, acc in enumerate(values)
    ]


def test_the_board_marks_a_leader_only_where_its_lead_is_resolved(tmp_path):
    # IPC 10: a beats b by 2 points on every seed; IPC 50: a leads by as much on average, but seed by seed
    # the sign flips.
    rows = _rows({"a": [0.72, 0.75, 0.70], "b": [0.70, 0.735, 0.685]}) + _rows(
        {"a": [0.80, 0.70, 0.78], "b": [0.70, 0.74, 0.78]}, ipc=50
    )
    suite = SimpleNamespace(
        name="s", protocols={"hard-label": HardLabel(), "soft-label": SoftLabel()}, methods=["a", "b"]
    )
    md, _ = render(suite, rows, None, tmp_path, ["a", "b"], [])
    text = md.read_text()
    assert "| a | **72.3 ± 2.5 (3)** | 76.0 ± 5.3 (3) |" in text and "| b | 70.7 ± 2.6 (3) | 74.0 ± 4.0 (3) |" in text
    table = compare(pd.DataFrame(rows), "a", "b").set_index("ipc")
    assert table.loc[10, "resolved"] and not table.loc[50, "resolved"] and table.loc[10, "test"] == "paired t"
    agg = pd.DataFrame(
        [
            {
                "method": m,
                "student": "convnet3",
                "protocol": "hard-label",
                "ipc": i,
                "mean": np.mean([r["accuracy"] for r in rows if (r["method"], r["ipc"]) == (m, i)]),
            }
            for m in "ab"
            for i in (10, 50)
        ]
    )
    assert leaders(agg, by_seed(pd.DataFrame(rows)), ["student", "protocol", "ipc"]) == {
        ("convnet3", "hard-label", 10): "a"
    }


def test_pareto_front():
    cost, acc = np.array([0.1, 1.0, 0.5, 2.0, 0.05]), np.array([0.6, 0.8, 0.5, 0.7, 0.55])
    assert list(pareto_front(cost, acc)) == [4, 0, 1]


@pytest.fixture(scope="module")
def sets(tmp_path_factory, tiny_real):
    """Sets on disk as a run leaves them, of real Fashion-MNIST images, under three committed methods' names, with
    the costs and diversity the committed board measured for those sets."""
    out = tmp_path_factory.mktemp("sets")
    cost, div = pd.read_csv(BOARD / "fashion-mnist-cost.csv"), pd.read_csv(BOARD / "fashion-mnist-diversity.csv")
    manifests = []
    for k, method in enumerate(("random-real", "cao2", "d4m")):
        for ipc in (1, 10):
            c = cost[(cost["method"] == method) & (cost["ipc"] == ipc)].iloc[0]
            d = div[(div["method"] == method) & (div["ipc"] == ipc)].iloc[0].to_dict()
            path, sums = out / method / f"ipc{ipc}", {}
            for label, key in enumerate(tiny_real.classes):
                (path / key).mkdir(parents=True)
                images = tiny_real.train.class_images(label)[k * 10 : k * 10 + ipc]
                sums[key] = save_images(images.float() / 255, path / key)
            m = Manifest(
                suite="fashion-mnist",
                method=method,
                config={},
                config_hash=c["config_hash"],
                ipc=ipc,
                classes=list(tiny_real.classes),
                seeds={},
                images=ipc * len(tiny_real.classes),
                distill_seconds=c["distill_seconds"],
                seconds_per_image=c["seconds_per_image"],
                peak_memory_bytes=int(c["peak_memory_mib"] * 2**20),
                peak_memory_kind=c["peak_memory_kind"],
                device=c["device"],
                cpu=c["cpu"],
                torch_threads=1,
                checksums=sums,
                path=str(path),
                diversity=d,
            )
            m.write(path)
            manifests.append(m)
    return manifests


def test_an_exported_set_loads_back_unchanged(sets, tmp_path):
    datasets = pytest.importorskip("datasets", reason="the export extra (pip install -e .[export]) is not installed")
    manifest = next(m for m in sets if m.method == "d4m" and m.ipc == 10)
    dest = export_set(manifest, tmp_path / "export", "fashion-mnist")
    loaded = datasets.load_dataset(str(dest), split="train", cache_dir=str(tmp_path / "hf-cache"))
    images, labels = load_set(Path(manifest.path), manifest.classes, channels=1)
    assert loaded.features["label"].names == manifest.classes and len(loaded) == len(labels) == 100
    assert loaded["label"] == labels.tolist()
    decoded = np.stack([np.asarray(img) for img in loaded["image"]])
    assert np.array_equal(decoded, images[:, 0].numpy())
    # The checksums file covers what the folder holds, and the manifest is the set's own.
    for line in (dest / CHECKSUMS).read_text().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == digest
    assert PARQUET in (dest / CHECKSUMS).read_text()
    assert json.loads((dest / "manifest.json").read_text())["checksums"] == manifest.checksums


def test_the_dd_ranking_csv_is_the_boards_label_robust_score():
    suite = load_suite("fashion-mnist", "leaderboard")
    rows = [json.loads(line) for line in (BOARD / "results" / "fashion-mnist.jsonl").read_text().splitlines()]
    csv = dd_ranking_table(rows, None, suite, "random-real", "hard-label", "soft-label")
    assert list(csv.columns[:10]) == [
        "method",
        "method_reference",
        "date",
        "verified",
        "dataset",
        "ipc",
        "label_type",
        "recovery",
        "improvement",
        "score",
    ]
    soft = label_robust_scores(rows, None, "random-real", "hard-label", "soft-label").set_index(
        ["method", "ipc", "student"]
    )
    row = csv[
        (csv["label_type"] == "Soft Label")
        & (csv["method"] == "d4m")
        & (csv["ipc"] == 10)
        & (csv["student"] == "convnet3")
    ].iloc[0]
    assert math.isclose(row["score"], 100 * soft.loc[("d4m", 10, "convnet3"), "lrs"], abs_tol=1e-3)
    assert set(csv["label_type"]) == {"Hard Label", "Soft Label"} and "random-real" not in set(csv["method"])


class _Dom(HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.elements = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))


def _chromium(url: str, *args: str) -> str:
    run = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=1000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


@pytest.fixture(scope="module")
def site(sets, tmp_path_factory):
    suite = load_suite("fashion-mnist", "leaderboard")
    rows = [json.loads(line) for line in (BOARD / "results" / "fashion-mnist.jsonl").read_text().splitlines()]
    board = tmp_path_factory.mktemp("board")
    shutil.copy(BOARD / "fashion-mnist-cross-arch.csv", board)
    out = tmp_path_factory.mktemp("site")
    page = build_site(
        suite,
        rows,
        None,
        out,
        list(suite.methods),
        ["teacher: convnet3", "a note"],
        sets,
        board,
        "python benchmark.py --suite fashion-mnist --site",
    )
    return page


def test_a_searched_sets_grid_has_a_plain_file_name_and_anchor(sets, tmp_path):
    """A searched config's label has commas, spaces and brackets; its grid's file name and anchor must not."""
    label = searched_label("cao2", 20)
    searched = dataclasses.replace(next(m for m in sets if m.method == "cao2" and m.ipc == 10), method=label)
    page = build_site(
        load_suite("fashion-mnist", "leaderboard"),
        [],
        None,
        tmp_path / "site",
        [label],
        [],
        [searched],
        tmp_path,
        "python benchmark.py --suite fashion-mnist --site",
    )
    (grid,) = (tmp_path / "site" / "fashion-mnist" / "grids").iterdir()
    assert grid.name == "cao2_searched_on_val_20_trials-ipc-10.png"
    assert f'id="set-{grid.stem}"' in page.read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is absent (CI installs it: scripts/setup.sh)")
def test_the_site_in_a_browser(site, sets, tmp_path):
    shot = tmp_path / "page.png"
    _chromium(site.as_uri(), f"--screenshot={shot}", "--window-size=1280,1600")
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("L"))
    assert pixels.shape == (1600, 1280) and pixels.std() > 10  # drawn, not blank
    dom = _Dom(_chromium(site.as_uri(), "--dump-dom"))
    assert any(t == "body" and a.get("data-ready") == "1" for t, a in dom.elements), "the page's script did not run"
    rows = [a for t, a in dom.elements if t == "tr" and "data-method" in a]
    assert len(rows) > 100 and not any("hidden" in r for r in rows)
    plots = [a for t, a in dom.elements if t == "img" and a.get("class") == "plot"]
    assert {Path(p["src"]).stem for p in plots} == {"accuracy-vs-ipc", "cost", "diversity", "cross-arch"}
    grids = [a for t, a in dom.elements if t == "img" and a.get("class") == "grid"]
    assert len(grids) == len(sets)
    assert all(a.get("data-loaded") == "1" for a in plots + grids), "an image did not load"
    # Every set's grid is linked from its cells, and every link lands on a grid.
    anchors = {a["id"] for t, a in dom.elements if t == "figure" and a.get("class") == "set"}
    links = {a["href"] for t, a in dom.elements if t == "a" and a.get("href", "").startswith("#set-")}
    assert anchors == {h[1:] for h in links} and len(anchors) == len(sets)
    # A filter from the address hides every other IPC's rows.
    filtered = _Dom(_chromium(site.as_uri() + "?ipc=1&student=convnet3", "--dump-dom"))
    shown = [a for t, a in filtered.elements if t == "tr" and "data-method" in a and "hidden" not in a]
    assert 0 < len(shown) < len(rows) and {(a["data-ipc"], a["data-student"]) for a in shown} == {("1", "convnet3")}
    index = _Dom(site.with_name("index.html").read_text())  # no script: its file is its DOM
    assert {a.get("href") for t, a in index.elements if t == "a"} == {site.name}
    if os.environ.get("DDBENCH_SCREENSHOTS"):  # where a person wants to look at them
        shutil.copy(shot, Path(os.environ["DDBENCH_SCREENSHOTS"]) / "site-test.png")


def test_a_grid_survives_a_redraw_without_its_set_only_when_stamped_with_its_config(sets, tmp_path):
    """A board redrawn from recorded manifests (scripts/redraw_board.py) keeps the grid of a set no longer on disk
    when the grid carries that set's config hash; a grid of another config, or an unstamped one, is removed."""
    suite = load_suite("fashion-mnist", "leaderboard")
    d4m = [m for m in sets if m.method == "d4m"]  # IPC 1 and 10
    site = tmp_path / "site"
    build_site(suite, [], None, site, ["d4m"], [], d4m, tmp_path, "drawn")
    grids = site / "fashion-mnist" / "grids"
    assert {p.name: grid_stamp(p) for p in grids.iterdir()} == {
        "d4m-ipc-1.png": d4m[0].config_hash,
        "d4m-ipc-10.png": d4m[1].config_hash,
    }
    drawn = (grids / "d4m-ipc-1.png").read_bytes()
    gone = [dataclasses.replace(m, path="") for m in d4m]  # the sets as recorded: not on disk
    gone[1] = dataclasses.replace(gone[1], config_hash="000000000000")  # IPC 10's config changed since its grid
    (grids / "d4m-ipc-50.png").write_bytes(drawn)  # a grid no manifest asks for
    page = build_site(suite, [], None, site, ["d4m"], [], gone, tmp_path, "redrawn")
    assert sorted(p.name for p in grids.iterdir()) == ["d4m-ipc-1.png"]
    assert (grids / "d4m-ipc-1.png").read_bytes() == drawn and 'id="set-d4m-ipc-1"' in page.read_text()
    assert 'id="set-d4m-ipc-10"' not in page.read_text()
    # An unstamped grid (drawn before grids were stamped) is not kept until it is stamped with its set's config.
    with Image.open(grids / "d4m-ipc-1.png") as img:
        img.load()
        img.copy().save(grids / "d4m-ipc-1.png")
    assert grid_stamp(grids / "d4m-ipc-1.png") is None
    build_site(suite, [], None, site, ["d4m"], [], gone[:1], tmp_path, "redrawn")
    assert not any(grids.iterdir())
    (grids / "d4m-ipc-1.png").write_bytes(drawn)
    stamp_grid(grids / "d4m-ipc-1.png", "000000000000")
    build_site(suite, [], None, site, ["d4m"], [], gone[:1], tmp_path, "redrawn")
    assert not any(grids.iterdir())
    (grids / "d4m-ipc-1.png").write_bytes(drawn)
    with Image.open(grids / "d4m-ipc-1.png") as img:
        pixels = np.asarray(img)
    stamp_grid(grids / "d4m-ipc-1.png", d4m[0].config_hash)  # the migration: its pixels unchanged
    with Image.open(grids / "d4m-ipc-1.png") as img:
        assert np.array_equal(np.asarray(img), pixels)
    build_site(suite, [], None, site, ["d4m"], [], gone[:1], tmp_path, "redrawn")
    assert [p.name for p in grids.iterdir()] == ["d4m-ipc-1.png"]


def test_the_site_lists_library_versions_once_and_the_commits_apart():
    """Rows made by two commits under the same libraries: one line of versions, both commits named."""
    libraries = {"torch": "2.14.1", "diffusers": "0.42.1"}
    rows = [
        {"versions": {**libraries, "ddbench": "aaaaaaaaaaaa"}},
        {"versions": {**libraries, "ddbench": "bbbbbbbbbbbb-dirty"}},
        {"versions": libraries},  # a row from before commits were recorded
        {"method": "reported"},  # no versions at all
    ]
    assert recorded_versions(rows) == ([libraries], ["aaaaaaaaaaaa", "bbbbbbbbbbbb-dirty"])
