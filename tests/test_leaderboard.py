"""Leaderboard aggregation: mean ± sample std over seeds, only current configs, best of protocols."""

import json
import math
from types import SimpleNamespace

from harness.config.loader import load_suite
from harness.core.sets import Manifest
from harness.models.protocols import HardLabel, SoftLabel
from harness.report.leaderboard import render
from harness.report.markdown import protocols_note
from harness.report.rows import aggregate, best_of_protocols
from harness.report.scores import label_robust_scores


def _suite(name="s"):
    """What `render` reads of a suite: its name, its protocols (name → protocol object) and its methods (the
    random baseline among them)."""
    return SimpleNamespace(
        name=name, protocols={"hard-label": HardLabel(), "soft-label": SoftLabel()}, methods=["random-real"]
    )


def _rows():
    rows = []
    for protocol, accs in (("hard-label", [0.50, 0.60]), ("soft-label", [0.70, 0.80])):
        for seed, acc in enumerate(accs):
            rows.append(
                dict(
                    method="m",
                    config_hash="h",
                    ipc=10,
                    student="convnet3",
                    protocol=protocol,
                    seed=seed,
                    accuracy=acc,
                    train_seconds=1.0,
                    distill_seconds_per_image=0.5,
                    peak_memory_bytes=2**20,
                    kind="measured",
                )
            )
    rows.append(dict(rows[0], config_hash="old", accuracy=0.99))  # an earlier config: not shown
    rows.append(dict(rows[0], kind="reported", accuracy=0.95))  # a paper's number: never averaged in
    return rows


def test_aggregate_and_best_of():
    agg = aggregate(_rows(), {("m", "h")})
    hard = agg[agg["protocol"] == "hard-label"].iloc[0]
    assert abs(hard["mean"] - 0.55) < 1e-9 and abs(hard["std"] - 0.0707107) < 1e-6 and hard["seeds"] == 2
    best = best_of_protocols(agg)
    assert len(best) == 1 and best.iloc[0]["protocol"] == "soft-label" and abs(best.iloc[0]["mean"] - 0.75) < 1e-9


def test_render_shows_tables_and_best_of(tmp_path):
    md, csv = render(_suite(), _rows(), {("m", "h")}, tmp_path, ["m"], ["a note"])
    text = md.read_text()
    assert "## convnet3, hard-label" in text and "## convnet3, soft-label" in text
    assert "| m | 75.0 ± 7.1 (2) soft-label |" in text and "99.0" not in text and "95.0" not in text
    assert csv.read_text().count("\n") == 3  # header + two protocols


def test_a_one_seed_cell_shows_no_spread(tmp_path):
    """One seed has no std: its cell is the accuracy and the count, not a made-up "± 0.0"."""
    rows = [r for r in _rows() if not (r["protocol"] == "hard-label" and r["seed"] == 1)]
    text = render(_suite(), rows, {("m", "h")}, tmp_path, ["m"], [])[0].read_text()
    assert "| m | 50.0 (1) |" in text and "± 0.0" not in text
    assert "| m | 75.0 ± 7.1 (2) |" in text  # two seeds keep their spread


def test_label_robust_score_on_fractions_paired_by_seed(tmp_path):
    base = dict(
        config_hash="h",
        ipc=10,
        student="convnet3",
        train_seconds=1.0,
        distill_seconds_per_image=0.0,
        peak_memory_bytes=0,
        kind="measured",
    )
    rows = [dict(base, method="full-data", ipc=0, protocol="hard-label", seed=0, accuracy=0.90)]
    accs = {
        ("m", "hard-label"): [0.60, 0.70],
        ("m", "soft-label"): [0.80, 0.82],
        ("random-real", "hard-label"): [0.5, 0.5],
        ("random-real", "soft-label"): [0.70, 0.78],
    }
    for (method, protocol), values in accs.items():
        rows += [dict(base, method=method, protocol=protocol, seed=s, accuracy=a) for s, a in enumerate(values)]
    lrs = label_robust_scores(
        rows, {("m", "h"), ("random-real", "h"), ("full-data", "h")}, "random-real", "hard-label", "soft-label"
    ).set_index("method")

    def score(hard, soft, rand):  # DD-Ranking's formula with λ = 0.5 on fractions
        alpha = 0.5 * (soft - rand) - 0.5 * (0.90 - hard)
        return (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))

    expected = [score(0.60, 0.80, 0.70), score(0.70, 0.82, 0.78)]
    assert abs(lrs.loc["m", "lrs"] - sum(expected) / 2) < 1e-9 and lrs.loc["m", "seeds"] == 2
    assert abs(lrs.loc["m", "hlr"] - 0.25) < 1e-9 and abs(lrs.loc["m", "ior"] - 0.07) < 1e-9
    assert 0 < lrs.loc["m", "lrs"] < 1 and lrs.loc["m", "ior_protocol"] == "soft-label"
    # the baseline against itself: IOR = 0, so its score only reflects how far it is from full data
    assert abs(lrs.loc["random-real", "ior"]) < 1e-12
    # One seed's score has no spread to print.
    one_seed = [r for r in rows if r["seed"] == 0]
    text = render(
        _suite(), one_seed, {("m", "h"), ("random-real", "h"), ("full-data", "h")}, tmp_path, ["m", "random-real"], []
    )[0].read_text()
    scores = text[text.index("## DD-Ranking label-robust score") :]
    assert f"| m | {100 * score(0.60, 0.80, 0.70):.1f} (1) |" in scores and "± 0.0" not in scores


def _manifest(method, ipc, seconds, stages=None, diversity=None, **extra):
    fields = dict(
        dict(
            suite="s",
            method=method,
            config={},
            config_hash="h",
            ipc=ipc,
            classes=[f"c{i}" for i in range(10)],
            seeds={},
            images=10 * ipc,
            distill_seconds=seconds,
            seconds_per_image=seconds / (10 * ipc),
            peak_memory_bytes=300 * 2**20,
            peak_memory_kind="shard_peak_rss",
            stage_seconds=stages or {},
            device="cpu",
            cpu="Some CPU",
            torch_threads=1,
        ),
        **extra,
    )
    return Manifest(**fields, diversity=diversity)


def _div(images, fid):
    return dict(
        extractor="teacher",
        images=images,
        real_images=10000,
        feature_dim=576,
        fid_min_images=577,
        fid=fid,
        kid=0.0123,
        kid_std=0.001,
        nearest_k=5,
        prdc_min_images=7,
        real_draws=10,
        precision=0.84,
        recall=0.45,
        density=1.86,
        coverage=0.33,
        precision_std=0.01,
        recall_std=0.02,
        density_std=0.1,
        coverage_std=0.01,
    )


def test_cost_and_diversity_tables_from_manifests(tmp_path):
    manifests = [
        _manifest("adaptive-sampling", 10, 27.0, {"bo": 7.0, "sampling": 20.0}, _div(100, None)),
        _manifest("m", 10, 26.0, diversity=_div(1000, 48.7)),
    ]
    md, _ = render(_suite(), _rows(), {("m", "h")}, tmp_path, ["m", "adaptive-sampling"], [], manifests)
    text = md.read_text()
    cost = text[text.index("## Cost of distillation") : text.index("## Diversity and fidelity")]
    assert "| m | 10 | 100 | 0.260 | 300 | – |" in cost
    assert "| adaptive-sampling | 10 | 100 | 0.270 | 300 | bo 26 %, sampling 74 % |" in cost
    assert "machine: cpu (Some CPU, 1 torch thread(s))" in cost and "`shard_peak_rss`" in cost
    assert cost.index("| m |") < cost.index("| adaptive-sampling |")  # the suite's method order
    csv = (tmp_path / "s-cost.csv").read_text().splitlines()
    assert "stage_bo_share" in csv[0] and len(csv) == 3
    div = text[text.index("## Diversity and fidelity") :]
    assert "| m | 10 | 1000 | 48.70 | 0.0123 | 0.84 | 0.45 | 1.86 | 0.33 |" in div
    assert "| adaptive-sampling | 10 | 100 | – | 0.0123 |" in div and "fewer than 577 images" in div
    assert "not comparable with the Inception FIDs" in div
    assert (tmp_path / "s-diversity.csv").read_text().count("\n") == 3


def test_cost_table_shows_unlike_machines_and_old_manifests(tmp_path):
    stored = _manifest("m", 1, 1.0).stored()
    for key in ("stage_seconds", "device", "cpu", "torch_threads"):  # a set made before these were recorded
        del stored[key]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(stored))
    old = Manifest.read(tmp_path / "old")
    assert old.device is None and old.torch_threads is None and old.stage_seconds == {}
    manifests = [old, _manifest("m", 10, 5.0, device="NVIDIA H100 80GB HBM3", peak_memory_kind="cuda_max_allocated")]
    md, _ = render(_suite(), _rows(), {("m", "h")}, tmp_path, ["m"], [], manifests)
    cost = md.read_text().split("## Cost of distillation")[1]
    assert "| memory kind | machine |" in cost and "NVIDIA H100 80GB HBM3 (host Some CPU, 1 torch thread(s))" in cost
    assert "unrecorded" in cost and "## Diversity" not in md.read_text()


def test_the_board_does_not_depend_on_the_order_rows_reached_the_store(tmp_path):
    """Trials finish in whatever order Ray runs them: the same rows in another order make the same files."""
    import random

    rows = []
    for method in ("random-real", "m"):
        for student in ("convnet3", "resnet18"):
            for protocol in ("hard-label", "soft-label"):
                for ipc in (1, 10):
                    for seed in range(2):
                        rows.append(
                            dict(
                                _rows()[0],
                                method=method,
                                student=student,
                                protocol=protocol,
                                ipc=ipc,
                                seed=seed,
                                accuracy=0.3 + 0.01 * len(rows),
                            )
                        )
    suite = SimpleNamespace(
        name="s",
        protocols={"hard-label": HardLabel(), "soft-label": SoftLabel()},
        methods=["random-real", "m"],
        students=["resnet18", "convnet3"],
    )
    current = {("random-real", "h"), ("m", "h")}
    outputs = []
    for order in range(2):
        shuffled = list(rows)
        random.Random(order).shuffle(shuffled)
        folder = tmp_path / str(order)
        md, csv = render(suite, shuffled, current, folder, ["random-real", "m"], [])
        outputs.append((md.read_text(), csv.read_text()))
    assert outputs[0] == outputs[1]
    text = outputs[0][0]
    # Sections follow the suite's students and protocols, not the store's order.
    assert (
        text.index("## resnet18, hard-label")
        < text.index("## resnet18, soft-label")
        < text.index("## convnet3, hard-label")
    )


def test_a_cell_never_mixes_rows_trained_under_other_settings(tmp_path):
    """Two profiles into one store (quick 30-epoch students, then the full suite): the board shows only the
    rows of the recipes it is drawn for."""
    quick, full = HardLabel(epochs={10: 30}), HardLabel()
    rows = [dict(_rows()[0], protocol_hash=quick.identity(), seed=s, accuracy=0.30) for s in range(2)]
    rows += [dict(_rows()[0], protocol_hash=full.identity(), seed=s, accuracy=a) for s, a in enumerate([0.70, 0.72])]
    suite = SimpleNamespace(name="s", protocols={"hard-label": full}, methods=["m"])
    student = rows[0]["student"]
    md, _ = render(suite, rows, {("m", "h")}, tmp_path, ["m"], [], recipes={(student, full.identity())})
    assert "| m | 71.0 ± 1.4 (2) |" in md.read_text()
    md, _ = render(suite, rows, {("m", "h")}, tmp_path / "mixed", ["m"], [])
    assert "| m | 50.5 ± 23.7 (2) |" in md.read_text()  # what the filter prevents: four rows, two recipes
    # A recipe searched for one student: its rows from before the search are another recipe's, though their hash
    # is the one every other student still trains under.
    md, _ = render(
        suite,
        rows,
        {("m", "h")},
        tmp_path / "searched",
        ["m"],
        [],
        recipes={(student, quick.identity()), ("another-student", full.identity())},
    )
    assert "| m | 30.0 ± 0.0 (2) |" in md.read_text()


def test_the_protocols_note_names_a_students_own_recipe():
    suite = load_suite("fashion-mnist", "leaderboard")
    note = protocols_note(suite.protocols)
    assert "soft-label: epochs by IPC {1: 200, 10: 100, 50: 40}" in note
    assert "resnetap10 trains with lr 0.00482 and temperature 1.38" in note
    assert "trains with" not in protocols_note(load_suite("fashion-mnist").protocols)
