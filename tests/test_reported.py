"""The papers' own numbers (`reported:` in the ImageNet-family suites): checked like any field, each one found
in its table's text, and shown on the board beside the measured numbers, never inside them."""

import copy
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.config.loader import load_suite
from harness.config.schema import BENCHMARKS_DIR, BEST_OF_PROTOCOLS, SuiteError
from harness.core.identity import FULL_DATA
from harness.core.store import ResultStore
from harness.report.leaderboard import render
from harness.report.scores import label_robust_scores
from harness.stages.evaluate import full_data_protocol

SEEDS = Path("/work/shared/seeds")
IMAGENET_SUITES = ["imagenet", "imagenette", "imagewoof", "imageidc", "imagenet-100"]
# (paper, table) → (paper file, text where the table starts, text just after it)
TABLES = {
    ("CaO2", "Table 1"): ("000_65130d1c6a4314d4.txt", "Settings\tIPC\tImageWoof", "Table 1. **Performance"),
    ("CaO2", "Table 2"): ("000_65130d1c6a4314d4.txt", "Settings\tIPC\tImageNet-100", "Table 2. **Performance"),
    ("CaO2", "Table 5"): ("000_65130d1c6a4314d4.txt", "Method\tWoof IPC=10", "Table 5. Performance"),
    ("Adaptive sampling", "Table 2"): ("004_b327daff7559c905.txt", "dataset\tIPC\tSRe", "Table 2: Experimental"),
    ("Adaptive sampling", "Table 3"): ("004_b327daff7559c905.txt", "ImageNet, IPC=50\tOurs", "Table 3: Property"),
    # Tables 6 and 7 of CaO2's appendix 7.1 are extracted side by side, their rows interleaved: one span holds both.
    ("CaO2", "Table 6 (appendix 7.1)"): ("000_65130d1c6a4314d4.txt", "7.1. Quantitative Comparison", "Table 6. Base"),
    ("CaO2", "Table 7 (appendix 7.1)"): ("000_65130d1c6a4314d4.txt", "7.1. Quantitative Comparison", "Table 7. Comp"),
    ("IMS3", "Table 1"): ("003_5765f50bc01fb1de.txt", "| IPC (Ratio) | Model |", "5.1 Experimental Settings"),
    ("IMS3", "Table 4"): ("003_5765f50bc01fb1de.txt", "| Method | ImageWoof | ImageNette |", "Analysis on . Fig. 4"),
    ("IMS3", "Table 5 (appendix 8.1)"): ("003_5765f50bc01fb1de.txt", "8.1 Comparison on ImageNet-100\n|", "8.2 Exp"),
    ("IMS3", "Table 6 (appendix 8.2)"): (
        "003_5765f50bc01fb1de.txt",
        "8.2 Experiment Results on Different Student Model\n|",
        "Tab. 6 reports",
    ),
    ("IMS3", "Table 12 (appendix 8.11)"): ("003_5765f50bc01fb1de.txt", "Table 12 reports results.", "8.12 Dec"),
    ("IMS3", "Sec. 5.2 text"): ("003_5765f50bc01fb1de.txt", "ImageIDC. We further evaluate", "5.3 Analysis"),
    ("Patch selection", "Table 1"): ("002_3deef3254d3e388d.txt", "Dataset\tIPC\tResNet-18", "Table 1. Performance"),
}


def _table_text(paper: str, table: str) -> str:
    name, start, end = TABLES[(paper, table)]
    text = (SEEDS / name).read_text()
    begin = text.index(start)
    return text[begin : text.index(end, begin)]


def _entries(name):
    return load_suite(name, check_files=False).reported.entries


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the paper texts are not on this machine")
@pytest.mark.parametrize("name", IMAGENET_SUITES)
def test_every_reported_number_is_in_its_table(name):
    """Each entry's mean — and its std right after it where the paper prints one, `±` or not (IMS3's text lost
    its ± signs) — occurs in the text of the table it cites, so a mistyped digit fails."""
    checked = 0
    for e in _entries(name):
        if e.paper == "torchvision":
            continue
        number = rf"(?<![\d.]){re.escape(f'{e.accuracy:.1f}')}"
        cell = number + (rf"\s*(±\s*)?{re.escape(f'{e.std:.1f}')}(?![\d])" if e.std is not None else r"(?![\d])")
        assert re.search(cell, _table_text(e.paper, e.table)), f"{name}: {e}"
        checked += 1
    assert checked >= 1


# Cells read off the papers by hand, row and column named: (suite, paper, table, student, method, IPC, protocol)
# → (mean, std).
SPOT = {
    # CaO2 Table 1, ImageWoof columns, ResNet-50 row, IPC 10, RDED column
    ("imagewoof", "CaO2", "Table 1", "resnet50", "rded", 10, BEST_OF_PROTOCOLS): (29.9, 2.2),
    # CaO2 Table 5, "+ CaO2" row under MAR, Woof IPC=10 column
    ("imagewoof", "CaO2", "Table 5", "resnet18", "cao2-mar", 10, BEST_OF_PROTOCOLS): (43.9, 0.8),
    # CaO2 Table 5, MAR row, Nette IPC=50 column
    ("imagenette", "CaO2", "Table 5", "resnet18", "mar", 50, BEST_OF_PROTOCOLS): (86.3, 0.4),
    # CaO2 Table 2, ImageNet-1K columns, ResNet-101 row, IPC 10, Ours column
    ("imagenet", "CaO2", "Table 2", "resnet101", "cao2", 10, BEST_OF_PROTOCOLS): (52.2, 1.1),
    # CaO2 Table 2, ImageNet-1K columns, ResNet-18 row, IPC 50, D4M column (CaO2 prints ±0.0)
    ("imagenet", "CaO2", "Table 2", "resnet18", "d4m", 50, BEST_OF_PROTOCOLS): (55.2, 0.0),
    # Adaptive sampling Table 2, ImageNet-1K row, IPC 100, ResNet-101 Proposed column
    ("imagenet", "Adaptive sampling", "Table 2", "resnet101", "adaptive-sampling", 100, "soft-label"): (68.8, None),
    # Adaptive sampling Table 2, ImageNette row, IPC 10, ResNet-18 D4M column
    ("imagenette", "Adaptive sampling", "Table 2", "resnet18", "d4m", 10, "soft-label"): (67.4, None),
    # Patch selection Table 1, ImageNet-100 row, IPC 50, ResNet-101 Ours^S column
    ("imagenet-100", "Patch selection", "Table 1", "resnet101", "patch-selection-single", 50, "soft-label"): (
        69.4,
        0.6,
    ),
    # IMS3 Table 1 (ImageWoof), IPC 70, ConvNet-6 row, D4M column
    ("imagewoof", "IMS3", "Table 1", "convnet6", "d4m", 70, BEST_OF_PROTOCOLS): (50.5, 0.4),
    # IMS3 Table 1, ResNet-18 rows, Full column
    ("imagewoof", "IMS3", "Table 1", "resnet18", FULL_DATA, 0, "hard-label"): (89.3, 1.2),
    # IMS3 Table 4, + ImS3 row, ImageNette IPC = 50 column
    ("imagenette", "IMS3", "Table 4", "resnetap10", "ims3", 50, BEST_OF_PROTOCOLS): (84.2, 1.0),
    # IMS3 Table 5 (appendix 8.1, ImageNet-100), IPC 20, ResNet-18 row, Random column
    ("imagenet-100", "IMS3", "Table 5 (appendix 8.1)", "resnet18", "random-real", 20, BEST_OF_PROTOCOLS): (25.5, 0.3),
    # IMS3 Table 1 (ImageWoof), IPC 10, ResNetAP-10 row, D3HR column
    ("imagewoof", "IMS3", "Table 1", "resnetap10", "d3hr", 10, BEST_OF_PROTOCOLS): (40.7, 1.0),
    # IMS3 Table 5 (appendix 8.1, ImageNet-100), IPC 20, ResNetAP-10 row, MGD3 column
    ("imagenet-100", "IMS3", "Table 5 (appendix 8.1)", "resnetap10", "mgd3", 20, BEST_OF_PROTOCOLS): (33.9, 1.1),
    # Adaptive sampling Table 3, "Acc (%, aligned case, DiT)" row, MGD3 column
    ("imagenet", "Adaptive sampling", "Table 3", "resnet18", "mgd3", 50, "soft-label"): (60.2, None),
}


@pytest.mark.parametrize("key", list(SPOT), ids=lambda k: "-".join(map(str, k[:5])))
def test_spot_checked_cells(key):
    suite, paper, table, student, method, ipc, protocol = key
    found = [
        (e.accuracy, e.std)
        for e in _entries(suite)
        if (e.paper, e.table, e.student, e.method, e.ipc, e.protocol) == (paper, table, student, method, ipc, protocol)
    ]
    assert found == [SPOT[key]]


def test_imagenet_full_data_stands_in_from_the_teachers_published_accuracy():
    """The teacher's weights' documented top-1, labelled as reported (torchvision's own metadata says 69.758)."""
    from torchvision.models import ResNet18_Weights

    suite = load_suite("imagenet", check_files=False)
    (full,) = [e for e in suite.reported.entries if e.kind == FULL_DATA]
    assert full.accuracy == ResNet18_Weights.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    assert (full.student, full.ipc, full.paper) == ("resnet18", 0, "torchvision")
    assert suite.teacher.weights == "resnet18.tv_in1k" and full.protocol in suite.reported.protocols
    assert suite.full_data.epochs == 0  # 1.28 M images do not fit the in-memory loader: reported only


@pytest.mark.parametrize("name", IMAGENET_SUITES)
def test_every_imagenet_suite_carries_reported_rows(name):
    suite = load_suite(name, check_files=False)
    assert suite.reported.entries and all(e.paper in suite.reported.papers for e in suite.reported.entries)
    # the 10-class subsets train the reference's full-data row (Minimax's train.py, --ipc -1: 300 epochs, batch 64)
    ten_classes = len(suite.data.class_keys()) == 10
    assert (suite.full_data.epochs, suite.full_data.batch_size) == ((300, 64) if ten_classes else (0, 128))


def test_fashion_carries_the_literatures_convnet_rows():
    """Issue 28 item 3: DC's Table 1 (and DSA's) on Fashion-MNIST, ConvNet-3, compared with the hard-label rows.
    DC / DSA values as the authors' readme prints them (VICO-UoE/DatasetCondensation readme.md l.65-69, l.126-130);
    random and the whole data as issue 28 quotes DC's Table 1."""
    reported = load_suite("fashion-mnist").reported
    cell = {(e.method, e.ipc): e.accuracy for e in reported.entries}
    assert [cell[("dc", i)] for i in (1, 10, 50)] == [70.5, 82.3, 83.6]
    assert [cell[("dsa", i)] for i in (1, 10, 50)] == [70.6, 84.6, 88.7]
    assert [cell[("random-real", i)] for i in (1, 10, 50)] == [51.4, 73.8, 82.5]
    assert cell[("full-data", 0)] == 93.5
    assert {(e.student, e.protocol) for e in reported.entries} == {("convnet3", "hard-label")}
    assert {"dc", "dsa", "forgetting"} <= set(reported.not_implemented)


# --- validation -------------------------------------------------------------------------------------------------


def _woof_raw():
    return yaml.safe_load((BENCHMARKS_DIR / "imagewoof.yaml").read_text())


def _entry(**changes):
    base = {
        "paper": "CaO2",
        "table": "Table 1",
        "student": "resnet18",
        "protocol": BEST_OF_PROTOCOLS,
        "method": "cao2",
        "ipc": 10,
        "accuracy": 45.6,
        "std": 1.4,
    }
    return {k: v for k, v in {**base, **changes}.items() if v is not ...}


@pytest.mark.parametrize(
    "change,where,why",
    [
        ({"entries": [_entry(pages="3")]}, "reported.entries[0].pages", "unknown field"),
        ({"entries": [_entry(accuracy=...)]}, "reported.entries[0].accuracy", "missing"),
        ({"entries": [_entry(accuracy="45.6%")]}, "reported.entries[0].accuracy", "expected a number"),
        ({"entries": [_entry(accuracy=456)]}, "reported.entries[0].accuracy", "percentage"),
        ({"entries": [_entry(method="minmax")]}, "reported.entries[0].method", "reported.not_implemented"),
        ({"entries": [_entry(student="resnet-18")]}, "reported.entries[0].student", "timm's registry"),
        ({"entries": [_entry(protocol="best-of")]}, "reported.entries[0].protocol", "reported.protocols"),
        ({"entries": [_entry(paper="CaO3")]}, "reported.entries[0].paper", "not in reported.papers"),
        ({"entries": [_entry(ipc=0)]}, "reported.entries[0].ipc", "≥ 1"),
        ({"entries": [_entry(method=FULL_DATA)]}, "reported.entries[0].ipc", "0 for"),
        ({"entries": [_entry(), _entry(accuracy=45.0)]}, "reported.entries[1]", "a second number"),
        ({"entries": []}, "reported.entries", "empty"),
        ({"not_implemented": {"cao2": "x"}}, "reported.not_implemented.cao2", "is implemented"),
        ({"protocols": {"soft-label": "x"}}, "reported.protocols.soft-label", "already a protocol"),
        ({"papers": None}, "reported.papers", "expected a mapping"),
    ],
)
def test_a_wrong_reported_field_is_one_line_naming_it(tmp_path, change, where, why):
    raw = _woof_raw()
    raw["reported"] = {**raw["reported"], **change}
    path = tmp_path / "woof.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    with pytest.raises(SuiteError) as e:
        load_suite(str(path), check_files=False)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path}: {where}: ") and why in message, message


def test_declared_labels_admit_names_the_suite_does_not_know(tmp_path):
    raw = _woof_raw()
    raw["reported"] = {
        "papers": {"P": "a paper"},
        "protocols": {"paper-recipe": "the paper's own"},
        "students": {"convnet-7": "a seven-block ConvNet"},
        "entries": [_entry(paper="P", student="convnet-7", protocol="paper-recipe", method="ddvlcp")],
    }
    with pytest.raises(SuiteError, match=r"entries\[0\]\.method"):  # ddvlcp is not declared not-implemented here
        load_suite(str(_dump(tmp_path, raw)), check_files=False)
    raw["reported"]["not_implemented"] = {"ddvlcp": "DDVLCP"}
    (entry,) = load_suite(str(_dump(tmp_path, raw)), check_files=False).reported.entries
    assert (entry.student, entry.protocol, entry.kind) == ("convnet-7", "paper-recipe", "distilled")


def _dump(tmp_path, raw) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


# --- the board --------------------------------------------------------------------------------------------------


def _woof_store(tmp_path, suite) -> tuple[list[dict], set]:
    """A tiny ImageWoof-layout run's rows: cao2 and random-real at IPC 10 on ResNet-18 under both protocols, 3
    seeds, and the full-data row, written through the result store as trials write them."""
    store = ResultStore(tmp_path / "results" / "imagewoof.jsonl")
    protocols = {name: p.identity() for name, p in suite.protocols.items()}
    accs = {
        ("cao2", "hard-label"): [0.40, 0.42, 0.44],
        ("cao2", "soft-label"): [0.47, 0.48, 0.49],
        ("random-real", "hard-label"): [0.20, 0.22, 0.24],
        ("random-real", "soft-label"): [0.30, 0.31, 0.32],
    }
    base = dict(
        suite="imagewoof",
        config_hash="h",
        ipc=10,
        student="resnet18",
        train_seconds=1.0,
        distill_seconds_per_image=0.1,
        peak_memory_bytes=2**20,
        kind="measured",
    )
    for (method, protocol), values in accs.items():
        for seed, acc in enumerate(values):
            store.append(
                dict(base, method=method, protocol=protocol, protocol_hash=protocols[protocol], seed=seed, accuracy=acc)
            )
    full = full_data_protocol(suite)
    # A full-data row per student; a paper's hard-label full-data ResNet-18 is the instance-norm one
    # (reported.measured_as).
    for student in ("resnet18", "resnet18_instancenorm"):
        store.append(
            dict(
                base,
                method=FULL_DATA,
                config_hash="real",
                ipc=0,
                student=student,
                protocol=full.name,
                protocol_hash=full.identity(),
                seed=0,
                accuracy=0.85,
            )
        )
    current = {("cao2", "h"), ("random-real", "h"), (FULL_DATA, "real")}
    return store.read(), current


def test_the_board_shows_reported_numbers_beside_measured_ones(tmp_path):
    suite = load_suite("imagewoof", check_files=False)
    rows, current = _woof_store(tmp_path, suite)
    md, csv = render(suite, rows, current, tmp_path / "board", list(suite.methods), ["a note"])
    text = md.read_text()
    section = text[text.index("## Reported by the papers") :]
    # best of the two protocols (soft-label, 48.0) against CaO2's Table 1 cell, 45.6 ± 1.4: +2.4 points
    assert (
        "| cao2 | 10 | best-of-protocols | 45.6 ± 1.4 (CaO2, Table 1) | 48.0 ± 1.0 (3) soft-label | +2.4 |" in section
    )
    # the same set under soft labels against the adaptive-sampling paper's number for it
    assert "| cao2 | 10 | soft-label | 45.6 (Adaptive sampling, Table 2) | 48.0 ± 1.0 (3) | +2.4 |" in section
    # the measured full-data row against IMS3's Full column, with its note
    assert "| full-data | full | hard-label | 89.3 ± 1.2 (IMS3, Table 1) [" in section
    assert "| 85.0 (1) | -4.3 |" in section
    # methods ddbench does not run, shown and declared, with no measured cell; a method it runs but has not
    # measured yet, shown without the declaration
    assert "| sre2l | 10 | best-of-protocols | 20.2 ± 0.2 (CaO2, Table 1) | – | – |" in section
    assert "- sre2l (not implemented" not in section  # it runs since issue 28
    assert "- cao2-minimax (not implemented in ddbench): CaO2 on Minimax's fine-tuned DiT" in section
    assert "| minimax | 10 | best-of-protocols | 40.1 ± 1.0 (CaO2, Table 1) | – | – |" in section
    assert "- minimax (not implemented" not in section
    assert "- CaO2: Wang et al., CaO2" in section and "never a paper's" in section
    assert "except those under 'Reported by the papers'" in text.splitlines()[2]
    assert section.index("### resnetap10") < section.index("### resnet18") < section.index("### convnet6")

    reported = pd.read_csv(tmp_path / "board" / "imagewoof-reported.csv")
    assert len(reported) == len(suite.reported.entries)
    row = reported[
        (reported["method"] == "cao2")
        & (reported["paper"] == "CaO2")
        & (reported["ipc"] == 10)
        & (reported["student"] == "resnet18")
    ].iloc[0]
    assert math.isclose(row["reported_mean"], 0.456) and math.isclose(
        row["measured_minus_reported"], 0.024, abs_tol=1e-9
    )

    # Nothing measured changes: the accuracy CSV, the LRS and the tables above the section are those of the same
    # suite without a reported section.
    plain = copy.copy(suite)
    plain.reported = None
    md2, csv2 = render(plain, rows, current, tmp_path / "plain", list(suite.methods), ["a note"])
    assert csv.read_text() == csv2.read_text()
    assert (tmp_path / "board" / "imagewoof-lrs.csv").read_text() == (
        tmp_path / "plain" / "imagewoof-lrs.csv"
    ).read_text()
    above, plain_text = text[: text.index("## Reported by the papers")], md2.read_text()
    assert above.splitlines()[3:] == plain_text.splitlines()[3:] + [""]
    assert "none reported from papers" in plain_text.splitlines()[2] and "Reported" not in plain_text
    assert not (tmp_path / "plain" / "imagewoof-reported.csv").exists()


def test_a_reported_full_data_number_never_feeds_the_label_robust_score(tmp_path):
    """LRS reads measured rows only: without a measured full-data row there is no LRS, however many full-data
    numbers the papers report."""
    suite = load_suite("imagewoof", check_files=False)
    rows, current = _woof_store(tmp_path, suite)
    without_full = [r for r in rows if r["method"] != FULL_DATA]
    assert label_robust_scores(without_full, current, "random-real", "hard-label", "soft-label").empty
    md, _ = render(suite, without_full, current, tmp_path / "board", list(suite.methods), [])
    assert (
        "## DD-Ranking label-robust" not in md.read_text() and not (tmp_path / "board" / "imagewoof-lrs.csv").exists()
    )
    assert "| full-data | full | hard-label | 89.3 ± 1.2 (IMS3, Table 1) [" in md.read_text()


def test_a_board_of_reported_numbers_only(tmp_path):
    """Before anything is measured the board already shows the papers' numbers, labelled as such."""
    suite = load_suite("imagenet", check_files=False)
    md, _ = render(suite, [], set(), tmp_path, list(suite.methods), [])
    text = md.read_text()
    assert "No results yet." in text
    assert (
        "| full-data | full | torchvision-recipe | 69.758 (torchvision, ResNet18_Weights.IMAGENET1K_V1 metrics) "
        "| – | – |" in text
    )


def test_a_reported_resnet18_is_the_network_each_recipe_trains(tmp_path):
    """The papers' hard-label ResNet-18 is Minimax's instance-norm network and their soft-label one
    torchvision's: a best-of-protocols cell compares with the better of those two, never with the batch-norm
    network under hard labels, which no paper trained."""
    suite = load_suite("imagewoof", check_files=False)
    store = ResultStore(tmp_path / "results" / "imagewoof.jsonl")
    base = dict(
        suite="imagewoof",
        method="cao2",
        config_hash="h",
        ipc=10,
        train_seconds=1.0,
        distill_seconds_per_image=0.1,
        peak_memory_bytes=2**20,
        kind="measured",
    )
    for student, protocol, acc in (
        ("resnet18_instancenorm", "hard-label", 0.50),
        ("resnet18", "hard-label", 0.60),
        ("resnet18", "soft-label", 0.47),
    ):
        for seed in range(2):
            store.append(
                dict(
                    base,
                    student=student,
                    protocol=protocol,
                    seed=seed,
                    accuracy=acc,
                    protocol_hash=suite.protocols[protocol].identity(),
                )
            )
    md, _ = render(suite, store.read(), {("cao2", "h")}, tmp_path / "board", list(suite.methods), [])
    section = md.read_text()[md.read_text().index("## Reported by the papers") :]
    resnet18 = section[section.index("### resnet18\n") :]
    assert (
        "| cao2 | 10 | best-of-protocols | 45.6 ± 1.4 (CaO2, Table 1) | 50.0 ± 0.0 (2) hard-label | +4.4 |" in resnet18
    )
