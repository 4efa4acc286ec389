"""The board's rows: which stored rows are current, their mean ± std over seeds, the best of the protocols, and the
order every table shows them in. The Markdown board, its CSVs, the site and `--compare` all read their rows here,
so a cell means the same wherever it is shown.

Only rows of the configurations the suite defines now are shown (an old config's rows stay in the store but would
mix two experiments), and only rows trained under the current recipes. Rows copied from papers carry kind
"reported" and are never averaged with measured ones. A config a search chose is relabelled as its own method,
shown beside the method's own config and never averaged with it. Rows of sets made elsewhere and evaluated by
ddbench (`ddbench evaluate`, kind "external") are their own group: the same statistics as measured rows, each
name's latest set only, never averaged with a method's rows nor standing in for one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd

from harness.core.identity import FULL_DATA
from harness.core.sets import Manifest
from harness.core.store import latest_external_sets
from harness.models.protocols import get_protocol, list_protocols

GROUP = ["method", "config_hash", "ipc", "student", "protocol"]
MEASURED, EXTERNAL = "measured", "external"
# An external set that holds test-split near-duplicates (evaluated with --allow-overlap) carries this mark
# wherever its cells are shown, and OVERLAP_NOTE says what it means.
OVERLAP_MARK = " ⚠"
OVERLAP_NOTE = (
    "⚠: an external set holding images (near-)identical to test-split images, evaluated with --allow-overlap: "
    "its accuracy is inflated by an unknown amount"
)
FAILED_CHECK_MARK = " ✗"
# Off the table (the site's plots, `--compare`), a failed-check row keeps a mark too: † after its label (a font's
# sure glyph), an open marker in the plots, and this legend or footnote (issue 31, item 5).
FAILED_PLOT_MARK = "†"
FAILED_PLOT_NOTE = (
    "†: sampled from a backbone that FAILED its check (--accept-failed-check); not a result of the method"
)
FAILED_PLOT_LEGEND = "† open marker: backbone\nFAILED its check"


def trained_under(rows: list[dict], recipes: set[tuple[str, str]] | None) -> list[dict]:
    """The rows whose (student, protocol hash) is one of `recipes`; all of them where `recipes` is None."""
    return rows if recipes is None else [r for r in rows if (r.get("student"), r.get("protocol_hash")) in recipes]


def measured_rows(rows: list[dict], current: set[tuple[str, str]] | None = None) -> pd.DataFrame:
    """The store's measured rows (never a paper's reported ones) of the configurations in `current`."""
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if "kind" in df:
        df = df[df["kind"] == "measured"]
    if current is not None:
        df = df[[(m, h) in current for m, h in zip(df["method"], df["config_hash"])]]
    return df


def external_rows(rows: list[dict]) -> pd.DataFrame:
    """The store's rows of sets made elsewhere (kind "external"), of each name's latest set at each IPC only: the
    store is appended to, so the last row of a name and IPC says which set (config hash: the set's SHA-256) it stands
    for now; an earlier set under the name and IPC stays in the store but would mix two sets into one cell. A name
    evaluated at IPC 10 and then at IPC 50 keeps both (they are two columns of one row)."""
    external = [r for r in rows if r.get("kind") == EXTERNAL]
    latest = latest_external_sets(external)
    return pd.DataFrame([r for r in external if latest[(r["method"], r["ipc"])] == r["config_hash"]])


def cell_rows(rows: list[dict], current: set[tuple[str, str]] | None = None) -> pd.DataFrame:
    """The rows every cell of the board is made of: measured rows of the configurations in `current` and the
    external sets' rows. `--compare` and the leaders' intervals read these."""
    parts = [df for df in (measured_rows(rows, current), external_rows(rows)) if not df.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _statistics(df: pd.DataFrame, **extra) -> pd.DataFrame:
    """Each cell (GROUP) of `df`'s rows: mean ± sample std of accuracy over seeds, their number, and `extra`."""
    return (
        df.groupby(GROUP, sort=False)
        .agg(
            mean=("accuracy", "mean"),
            std=("accuracy", lambda a: a.std(ddof=1) if len(a) > 1 else 0.0),
            seeds=("seed", "nunique"),
            train_seconds=("train_seconds", "mean"),
            **extra,
        )
        .reset_index()
    )


def aggregate(rows: list[dict], current: set[tuple[str, str]] | None = None) -> pd.DataFrame:
    df = measured_rows(rows, current)
    if df.empty:
        return df
    return _statistics(
        df,
        seconds_per_image=("distill_seconds_per_image", "first"),
        peak_memory_mb=("peak_memory_bytes", lambda b: b.iloc[0] / 2**20),
    )


def aggregate_external(rows: list[dict]) -> pd.DataFrame:
    """The external sets' cells (`external_rows`), with the statistics of `aggregate` and each set's label: its
    source, SHA-256, the test-split near-duplicates it was allowed to hold (`overlap`) and the accuracy its paper
    reports for it (`reported_accuracy`, a fraction; NaN where none)."""
    df = external_rows(rows)
    if df.empty:
        return df
    for column, default in (("overlap", 0), ("reported_accuracy", float("nan")), ("set_source", "")):
        if column not in df:
            df[column] = default
    df["overlap"] = df["overlap"].fillna(0).astype(int)
    out = _statistics(
        df,
        set_source=("set_source", "last"),
        set_sha256=("set_sha256", "last"),
        overlap=("overlap", "max"),
        reported_accuracy=("reported_accuracy", "last"),
    )
    return out.assign(measured_minus_reported=out["mean"] - out["reported_accuracy"])


def external_label(method: str, config_hash: str, overlap: int = 0) -> str:
    """How an external set is named in a table: its name, that it was made elsewhere, its short hash, and the mark
    of a set that holds test-split near-duplicates."""
    return f"{method} (external, {config_hash})" + (OVERLAP_MARK if overlap else "")


def best_of_protocols(agg: pd.DataFrame) -> pd.DataFrame:
    """Per (method, config, IPC, student), the ranked protocol with the higher mean accuracy — how the papers
    report a setting. A protocol run only for a score (`ranked = False`) never stands for a setting."""
    agg = agg[agg["protocol"].map(ranked)]
    idx = agg.groupby(["method", "config_hash", "ipc", "student"], sort=False)["mean"].idxmax()
    return agg.loc[idx.values]


def ranked(protocol: str) -> bool:
    """Whether a protocol's rows may stand for a setting (a protocol the registry does not know may)."""
    return get_protocol(protocol).ranked if protocol in list_protocols() else True


def board_order(
    df: pd.DataFrame,
    method_order: list[str],
    students: list[str],
    protocols: list[str],
    by: tuple[str, ...] = ("method", "student", "protocol", "ipc"),
) -> pd.DataFrame:
    """`df` sorted by the columns `by`: methods in the run's order, students and protocols in the suite's
    (others after them, by name), IPCs ascending; so the board does not depend on the order in which rows
    reached the store."""
    if df.empty:
        return df
    orders = {"method": method_order, "student": students, "protocol": protocols}

    def rank(column: pd.Series) -> pd.Series:
        order = orders.get(column.name)
        if order is None:
            return column
        return column.map(lambda v: f"0{order.index(v):06d}" if v in order else f"1{v}")

    columns = [c for c in by if c in df]
    return df.sort_values(columns, key=rank, kind="stable").reset_index(drop=True)


def sampled_from_failed_check(m: Manifest) -> bool:
    """Whether set `m` was sampled from a backbone whose check failed (a run with --accept-failed-check)."""
    return bool(m.backbone and m.backbone_check and not m.backbone_check.get("passed", True))


def failed_check_cells(manifests: list[Manifest] | None, current) -> set[tuple[str, int]]:
    """(method, IPC) of the current sets (`current`: (method, config hash) pairs) sampled from a failed check."""
    return {
        (m.method, m.ipc)
        for m in manifests or []
        if sampled_from_failed_check(m) and (m.method, m.config_hash) in current
    }


def mark_failed_checks(agg: pd.DataFrame, manifests: list[Manifest] | None) -> tuple[pd.DataFrame, list[str]]:
    """`agg` with a `backbone_check_failed` column: the rows of sets sampled from a backbone whose check failed
    (run with --accept-failed-check), and the note that explains the mark, if any row has it."""
    failed = {(m.method, m.config_hash, m.ipc) for m in manifests or [] if sampled_from_failed_check(m)}
    if agg.empty or not failed:
        return agg, []
    agg = agg.assign(backbone_check_failed=[k in failed for k in zip(agg["method"], agg["config_hash"], agg["ipc"])])
    checks = {f"{m.backbone_check['agreement']:.1%}" for m in manifests if (m.method, m.config_hash, m.ipc) in failed}
    return agg, [
        f"{FAILED_CHECK_MARK.strip()}: sampled from a backbone that FAILED its check (teacher agreement "
        f"{', '.join(sorted(checks))}, below the suite's minimum; run with --accept-failed-check): not a "
        f"result of the method"
    ]


def searched_label(method: str, trials: int) -> str:
    return f"{method}, searched on val ({trials} trials)"


def with_searched_labels(
    rows: list[dict],
    current: set[tuple[str, str]],
    manifests: list[Manifest],
    method_order: list[str],
    labels: dict[tuple[str, str], str],
):
    """Rows, current sets, manifests and method order with each searched config's set under its own label, so
    that the board shows it as its own row beside the method's own config (and never averages the two)."""
    if not labels:
        return rows, current, manifests, method_order
    relabel = lambda method, h: labels.get((method, h), method)  # noqa: E731
    rows = [{**r, "method": relabel(r["method"], r["config_hash"])} if "config_hash" in r else r for r in rows]
    current = {(relabel(m, h), h) for m, h in current}
    manifests = [dataclasses.replace(m, method=relabel(m.method, m.config_hash)) for m in manifests]
    order = []
    for method in method_order:
        order += [method] + [label for (m, _), label in labels.items() if m == method]
    return rows, current, manifests, order


@dataclass(frozen=True)
class Board:
    """The rows one board shows, and the orders it shows them in."""

    rows: list[dict]  # the store's rows trained under the current recipes
    current: set[tuple[str, str]]  # (method, config hash) of the sets on the board
    agg: pd.DataFrame  # each set's cells, mean ± std over seeds, in board order; full data apart
    external: pd.DataFrame  # the external sets' cells (`aggregate_external`), by name, student, protocol, IPC
    full: pd.DataFrame  # the full-data reference rows
    failed_note: list[str]  # the note on cells sampled from a backbone that failed its check, if any
    method_order: list[str]
    students: list[str]  # the suite's, in its order
    protocols: list[str]  # the suite's protocol names, in its order

    def ordered(self, df: pd.DataFrame, by: tuple[str, ...]) -> pd.DataFrame:
        """`df` in this board's order of the columns `by` (see `board_order`)."""
        return board_order(df, self.method_order, self.students, self.protocols, by)

    def cells(self) -> pd.DataFrame:
        """The measured and external cells together (with a `kind` column), where a column's leader is resolved."""
        parts = [df.assign(kind=kind) for kind, df in ((MEASURED, self.agg), (EXTERNAL, self.external)) if len(df)]
        cells = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        if "backbone_check_failed" in cells:  # an external set is sampled from no backbone of ours
            cells["backbone_check_failed"] = cells["backbone_check_failed"].fillna(False).astype(bool)
        return cells


def board_rows(
    suite,
    rows: list[dict],
    current: set[tuple[str, str]],
    method_order: list[str],
    manifests: list[Manifest] | None = None,
    recipes: set[tuple[str, str]] | None = None,
) -> Board:
    """The board of `rows`: only those of the sets in `current` (method, config hash) and, where given, trained
    under the `recipes` (student, protocol hash), so that a store holding a quick profile's 30-epoch students
    beside the full suite's, or a student's rows from before its recipe was searched, never averages the two into
    one cell. Cells of sets sampled from a backbone that failed its check (their `manifests` say so) are marked.
    The external sets' cells (`aggregate_external`) are trained under the same `recipes`, or left off."""
    rows = trained_under(rows, recipes)
    students, protocols = list(getattr(suite, "students", [])), list(suite.protocols)
    agg, failed_note = mark_failed_checks(
        board_order(aggregate(rows, current), method_order, students, protocols), manifests
    )
    full = agg[agg["method"] == FULL_DATA] if not agg.empty else agg
    agg = agg[agg["method"] != FULL_DATA] if not agg.empty else agg
    external = board_order(aggregate_external(rows), [], students, protocols)
    return Board(rows, current, agg, external, full, failed_note, method_order, students, protocols)
