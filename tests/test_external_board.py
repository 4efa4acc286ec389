"""Sets made elsewhere on the board (issue 27, item 3): their rows (kind "external", as `ddbench evaluate` stores
them) are a group of their own beside the measured ones, labelled by name, source and hash, with the same
statistics and intervals; only their latest set per name and only rows trained under the current recipes; an
overlap with the test split marked; the paper's number beside with measured − reported; `--compare` between an
external set and a method; and the site's first view, the methods × IPC matrix."""

import math
from html.parser import HTMLParser
from types import SimpleNamespace

import pandas as pd
import pytest

from harness.cli import main, parse
from harness.config.flag_checks import SuiteNames, chosen_verb
from harness.config.loader import load_suite
from harness.config.schema import BEST_OF_PROTOCOLS, ReportedConfig, ReportedEntry
from harness.core.sets import Manifest, save_images
from harness.models.protocols import HardLabel, SoftLabel
from harness.report.compare import by_seed, compare, difference
from harness.report.leaderboard import render
from harness.report.rows import OVERLAP_MARK, aggregate, board_rows, cell_rows, external_rows, trained_under
from harness.report.site import build_site

SHA = "c0ffee" + "0123456789abcdef" * 3 + "0123456789"  # 64 hex digits
OLD_SHA = "dead" * 16
RECIPE = "p1"  # the protocol hash every current row was trained under


def _rows(method, accs, ipc=10, protocol="hard-label", kind="measured", config_hash="h", **extra):
    return [
        dict(
            method=method,
            config_hash=config_hash,
            ipc=ipc,
            student="convnet3",
            protocol=protocol,
            protocol_hash=RECIPE,
            seed=seed,
            accuracy=acc,
            epochs=300,
            train_seconds=1.0,
            kind=kind,
            **({"distill_seconds_per_image": 0.5, "peak_memory_bytes": 2**20} if kind == "measured" else {}),
            **extra,
        )
        for seed, acc in enumerate(accs)
    ]


def _external(name, accs, sha=SHA, **extra):
    """Rows as the evaluate verb stores them: the contract of issue 27's helpers."""
    return _rows(
        name,
        accs,
        kind="external",
        config_hash=sha[:12],
        set_source=f"https://example.org/{name}.tar.gz",
        set_sha256=sha,
        **{"overlap": 0, **extra},
    )


def _store():
    """Two methods at IPC 10, and the released set "rel": ahead of both on every seed, an earlier set under the same
    name (another SHA-256) that must not mix in, and a row trained under another recipe that must stay off."""
    return (
        _rows("a", [0.72, 0.75, 0.70])
        + _rows("b", [0.70, 0.735, 0.685])
        + _external("rel", [0.10, 0.10, 0.10], sha=OLD_SHA)
        + _external("rel", [0.78, 0.80, 0.77], reported_accuracy=0.761)
        + [dict(_external("rel", [0.99])[0], protocol_hash="an-old-recipe", seed=3)]
    )


def _suite(name="s", reported=None):
    return SimpleNamespace(
        name=name,
        protocols={"hard-label": HardLabel(), "soft-label": SoftLabel()},
        methods=["a", "b"],
        students=["convnet3"],
        reported=reported,
    )


RECIPES = {("convnet3", RECIPE)}


def test_external_rows_are_their_own_group_with_the_same_statistics(tmp_path):
    md, csv = render(_suite(), _store(), {("a", "h"), ("b", "h")}, tmp_path, ["a", "b"], [], recipes=RECIPES)
    text = md.read_text()
    # The same statistics as a measured row of the same accuracies would have.
    as_measured = aggregate(_rows("rel", [0.78, 0.80, 0.77]))
    cell = f"{100 * as_measured['mean'][0]:.1f} ± {100 * as_measured['std'][0]:.1f} (3)"
    assert cell == "78.3 ± 1.5 (3)"
    table = text[text.index("## convnet3, hard-label") :]
    table = table[: table.index("\n\n", table.index("| method"))]
    assert table.splitlines()[-2:] == [
        "| *made elsewhere, evaluated by ddbench* | |",
        f"| rel (external, {SHA[:12]}) | **{cell}** |",  # it leads a on every seed, by 3 to 7 points
    ]
    # Labelled by source and full hash; the paper's number beside, with measured − reported.
    assert f"| rel | https://example.org/rel.tar.gz | `{SHA}` | 0 |" in text
    assert f"| rel | 10 | convnet3 | hard-label | {cell} | 76.1 | +2.2 |" in text
    # Its own CSV; the measured one holds methods only; the earlier set and the old recipe never mix in.
    assert set(pd.read_csv(csv)["method"]) == {"a", "b"}
    external = pd.read_csv(tmp_path / "s-external.csv")
    assert len(external) == 1 and external["seeds"][0] == 3 and external["set_sha256"][0] == SHA
    assert math.isclose(external["measured_minus_reported"][0], 0.78333 - 0.761, abs_tol=1e-5)
    assert "10.0" not in text and "99.0" not in text
    # A later store without the external set no longer shows it, nor leaves its CSV behind.
    render(_suite(), _store()[:6], None, tmp_path, ["a", "b"], [], recipes=RECIPES)
    assert not (tmp_path / "s-external.csv").exists() and "External sets" not in md.read_text()


def test_an_external_set_holding_test_images_is_marked(tmp_path):
    rows = _rows("a", [0.72, 0.75, 0.70]) + _external("leaky", [0.9, 0.91, 0.9], overlap=3)
    md, _ = render(_suite(), rows, None, tmp_path, ["a"], [])
    text = md.read_text()
    assert f"| leaky (external, {SHA[:12]}){OVERLAP_MARK} |" in text and f"| 3{OVERLAP_MARK} |" in text
    assert "evaluated with --allow-overlap" in text
    page = build_site(_suite(), rows, None, tmp_path / "site", ["a"], [], [], tmp_path, "cmd")
    assert "evaluated with --allow-overlap" in page.read_text()


def test_compare_between_an_external_set_and_a_method():
    rows = _store()
    board = board_rows(_suite(), rows, {("a", "h"), ("b", "h")}, ["a", "b"], recipes=RECIPES)
    table = compare(cell_rows(board.rows, board.current), "rel", "a").iloc[0]
    expected = difference({0: 0.78, 1: 0.80, 2: 0.77}, {0: 0.72, 1: 0.75, 2: 0.70})
    assert table["test"] == "paired t" and table["resolved"] and table["rel_seeds"] == 3
    assert math.isclose(table["ci_low"], expected.low) and math.isclose(table["difference"], expected.mean)


def test_the_command_line_compares_with_an_external_set_only_where_the_store_holds_it(tmp_path, capsys):
    suite_file = "tests/tiny-suite.yaml"
    suite = load_suite(suite_file)
    store = tmp_path / "results" / f"{suite.name}.jsonl"
    store.parent.mkdir()
    store.write_text("\n".join(pd.Series(_external("rel", [0.8, 0.8])).map(pd.io.json.ujson_dumps)) + "\n")
    args = parse(["compare", "--suite", suite_file, "--out", str(tmp_path), "herding,rel"])
    assert chosen_verb(args, SuiteNames.of_suite(suite)) == ("compare", ["herding", "rel"])
    with pytest.raises(SystemExit) as stop:
        main(["compare", "--suite", suite_file, "--out", str(tmp_path), "herding,magic"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert "magic not in the suite" in err[0] and "external sets in --out: rel" in err[0]


class _Matrix(HTMLParser):
    """The site's matrices as {(student, protocol): [(group, label, [cell text…])]}, and the order of its h2s."""

    def __init__(self, text):
        super().__init__()
        self.matrices, self.h2, self.cells = {}, [], {}
        self._key = self._group = self._row = self._text = None
        self._in = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._in.append(tag)
        if tag == "h2":
            self.h2.append(a.get("id"))
        if tag == "table" and a.get("class") == "matrix":
            self._key = (a["data-student"], a["data-protocol"])
            self.matrices[self._key] = []
        if self._key and tag == "tr":
            cls = a.get("class", "")
            if cls.startswith("group"):
                self._group, self._row = cls.split("group-")[1], None
            elif cls:
                self._row = [self._group, None, []]
                self.matrices[self._key].append(self._row)
        if self._key and tag in ("th", "td") and self._row is not None:
            self._text = []
            self._cell = a

    def handle_endtag(self, tag):
        self._in.pop()
        if tag == "table":
            self._key = self._row = None
        if self._key and tag in ("th", "td") and self._row is not None and self._text is not None:
            text = " ".join(" ".join(self._text).split())
            if tag == "th":
                self._row[1] = text
            else:
                self._row[2].append(text)
                self.cells[(self._key, self._row[0], self._row[1], len(self._row[2]))] = self._cell
            self._text = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def test_the_sites_first_view_is_the_methods_by_ipc_matrix(tmp_path):
    reported = ReportedConfig(
        papers={"P": "a paper"},
        entries=[
            ReportedEntry("b", "ConvNet-3", "hard-label", 69.5, "P", "Table 1", ipc=10, std=0.4),
            ReportedEntry("a", "ConvNet-3", BEST_OF_PROTOCOLS, 80.1, "P", "Table 2", ipc=50),
        ],
        measured_as={"ConvNet-3": {"hard-label": "convnet3", "soft-label": "convnet3"}},
    )
    rows = _store() + _rows("a", [0.6, 0.7, 0.65], ipc=10, protocol="soft-label")
    rows += _rows("b", [0.6, 0.5, 0.55], ipc=10, protocol="soft-label") + _rows("a", [0.8, 0.81], ipc=50)
    rows += _rows("full-data", [0.9], config_hash="f", ipc=0)
    current = {("a", "h"), ("b", "h"), ("full-data", "f")}
    suite = _suite(reported=reported)
    page = build_site(suite, rows, current, tmp_path, ["a", "b"], [], [], tmp_path, "cmd", recipes=RECIPES)
    html = _Matrix(page.read_text())
    assert html.h2[0] == "matrix" and html.h2[1] == "measured"  # the matrix first, the flat table second
    assert list(html.matrices) == [
        ("convnet3", "hard-label"),
        ("convnet3", "soft-label"),
        ("convnet3", "best of protocols"),
    ]
    hard = html.matrices[("convnet3", "hard-label")]
    d = difference({0: 0.78, 1: 0.80, 2: 0.77}, {0: 0.72, 1: 0.75, 2: 0.70})
    top = f"★ 78.3 ± 1.5 (3) {100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] vs a (paired t)"
    assert hard == [
        ["measured", "a", ["72.3 ± 2.5 (3)", "80.5 ± 0.7 (2)"]],
        ["measured", "b", ["70.7 ± 2.6 (3)", "–"]],
        ["external", f"rel (external, {SHA[:12]})", [top + " reported 76.1, measured − reported +2.2", "–"]],
        ["reported", "b", ["69.5 ± 0.4", "–"]],  # the paper's ConvNet-3 under hard labels, at IPC 10
    ]
    # A cell that is not the top says, on hover, its interval against the top.
    b = html.cells[(("convnet3", "hard-label"), "measured", "b", 1)]
    versus = difference({0: 0.70, 1: 0.735, 2: 0.685}, {0: 0.78, 1: 0.80, 2: 0.77})
    assert (
        b["title"] == f"{100 * versus.mean:+.1f} [{100 * versus.low:+.1f}, {100 * versus.high:+.1f}] vs rel (paired t)"
    )
    assert "class" in b and "leader" not in b["class"]
    # The best-of matrix takes the better protocol and shows the paper's best-of-protocols number there only.
    best = html.matrices[("convnet3", "best of protocols")]
    assert best[-1] == ["reported", "a", ["–", "80.1"]]
    assert all(r[0] != "reported" or r[1] != "a" for r in hard)
    # Under each matrix, the papers' "whole dataset" column: the full-data row, never a cell of the matrix.
    assert page.read_text().count("Full data (the student trained once on the whole training split): 90.0 (1)") == 3
    # An external set's row is in the flat table too, as its own family.
    assert f'data-method="rel (external, {SHA[:12]})" data-family="external"' in page.read_text()
    assert by_seed(cell_rows(trained_under(rows, RECIPES), current))[("rel", "convnet3", "hard-label", 10)] == {
        0: 0.78,
        1: 0.80,
        2: 0.77,
    }


def test_an_external_sets_cell_opens_its_grid(tmp_path, tiny_real):
    """The external set's manifest in the store's set folders (as `ddbench evaluate` copies a set there): its grid is
    drawn, and its matrix cell links to it."""
    path, sums = tmp_path / "rel" / "ipc10", {}
    for label, key in enumerate(tiny_real.classes):
        (path / key).mkdir(parents=True)
        sums[key] = save_images(tiny_real.train.class_images(label)[:10].float() / 255, path / key)
    manifest = Manifest(
        suite="s",
        method="rel",
        config={},
        config_hash=SHA[:12],
        ipc=10,
        classes=list(tiny_real.classes),
        seeds={},
        images=10 * len(tiny_real.classes),
        distill_seconds=0.0,
        seconds_per_image=0.0,
        peak_memory_bytes=0,
        checksums=sums,
        path=str(path),
    )
    site = tmp_path / "site"
    page = build_site(_suite(), _store(), None, site, ["a", "b"], [], [], tmp_path, "cmd", RECIPES, [manifest])
    cell = _Matrix(page.read_text()).cells[(("convnet3", "hard-label"), "external", f"rel (external, {SHA[:12]})", 1)]
    assert cell["class"] == "num mcell leader"
    assert '<a href="#set-rel-ipc-10">★ 78.3' in page.read_text() and (site / "s/grids/rel-ipc-10.png").is_file()


def test_an_external_set_has_dd_rankings_scores_in_its_own_group(tmp_path):
    """The label-robust score pairs an external set's seeds with the random baseline's, as a method's are."""
    both = {"hard-label": [0.60, 0.62, 0.61], "soft-label": [0.70, 0.71, 0.73]}
    rows = [r for p, accs in both.items() for r in _rows("random-real", [a - 0.1 for a in accs], protocol=p)]
    rows += [r for p, accs in both.items() for r in _external("rel", accs, protocol=p)]
    rows += _rows("full-data", [0.9], protocol="hard-label", config_hash="f", ipc=0)
    suite = SimpleNamespace(**{**vars(_suite()), "methods": ["random-real"]})
    md, _ = render(suite, rows, None, tmp_path, ["random-real"], [])
    lrs = pd.read_csv(tmp_path / "s-lrs.csv").set_index("method")
    # Per seed: HLR = full − set (hard), IOR = set − random-real (soft) = 0.1; the mean over the seeds.
    per_seed = [
        (math.exp(0.5 * 0.1 - 0.5 * (0.9 - h)) - math.exp(-1)) / (math.e - math.exp(-1)) for h in both["hard-label"]
    ]
    assert math.isclose(lrs.loc["rel", "lrs"], sum(per_seed) / 3, abs_tol=1e-5)  # the CSV keeps 5 decimals
    assert lrs.loc["rel", "kind"] == "external" and lrs.loc["rel", "seeds"] == 3
    section = md.read_text().split("## DD-Ranking label-robust score")[1]
    assert f"| rel (external, {SHA[:12]}) |" in section.split("## DD-Ranking augmentation")[0]


def test_one_external_name_keeps_each_ipcs_latest_set():
    """A name evaluated at IPC 10 and then at IPC 50 shows both cells; evaluated again at IPC 10 with another set,
    its IPC 10 cell is the new set's and its IPC 50 cell stays (the latest set per name and IPC)."""
    rows = _rows("theirs", [0.6, 0.62], ipc=10, kind="external", config_hash="aaa")
    rows += _rows("theirs", [0.7, 0.72], ipc=50, kind="external", config_hash="bbb")
    shown = external_rows(rows)
    assert sorted(set(zip(shown["ipc"], shown["config_hash"]))) == [(10, "aaa"), (50, "bbb")]
    rows += _rows("theirs", [0.65, 0.66], ipc=10, kind="external", config_hash="ccc")
    shown = external_rows(rows)
    assert sorted(set(zip(shown["ipc"], shown["config_hash"]))) == [(10, "ccc"), (50, "bbb")]
    assert sorted(shown[shown["ipc"] == 10]["accuracy"]) == [0.65, 0.66]
