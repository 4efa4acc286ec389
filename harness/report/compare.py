"""Is a lead real: the difference of two cells' mean accuracies with its 95 % confidence interval, and whether
the interval excludes zero ("resolved").

Student seed i of one set and seed i of another start from the same initialisation and draw the same batches
(harness/stages/evaluate.py), so where two cells hold the same seeds under the same protocol their accuracies are
paired and the paired t interval on the per-seed differences applies; otherwise (other seeds, or the best of
protocols picking different recipes) Welch's t interval. SciPy computes both. A cell of one seed has no
spread: nothing is resolved against it. The board (harness/report/leaderboard.py), the site and `--compare` all use
this one rule, so a lead marked anywhere is a lead resolved here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from harness.report.rows import FAILED_PLOT_MARK, FAILED_PLOT_NOTE

LEVEL = 0.95
CELL = ["student", "protocol", "ipc"]


@dataclass(frozen=True)
class Difference:
    mean: float  # a − b, accuracy as a fraction
    low: float  # the 95 % interval of the difference (nan where none can be made)
    high: float
    test: str  # "paired t", "Welch t", or why there is no interval

    @property
    def resolved(self) -> bool:
        return self.low > 0 or self.high < 0  # False for nan


def difference(a: dict[int, float], b: dict[int, float], paired: bool = True) -> Difference:
    """`a` − `b` from their accuracies by seed; `paired` where the two cells were trained under one recipe."""
    x, y = np.array(list(a.values()), float), np.array(list(b.values()), float)
    mean = float(x.mean() - y.mean())
    if paired and set(a) == set(b) and len(a) > 1:
        d = np.array([a[s] - b[s] for s in sorted(a)])
        if np.allclose(
            d, d[0], rtol=0, atol=1e-12
        ):  # every seed moved by the same amount: t has no spread to scale; the interval is the point
            return Difference(mean, float(d[0]), float(d[0]), "paired t")
        ci = stats.ttest_rel([a[s] for s in sorted(a)], [b[s] for s in sorted(a)]).confidence_interval(LEVEL)
        return Difference(mean, float(ci.low), float(ci.high), "paired t")
    if len(x) < 2 or len(y) < 2:
        return Difference(mean, math.nan, math.nan, "one seed: no interval")
    if x.std() == 0 and y.std() == 0:
        return Difference(mean, mean, mean, "Welch t")
    ci = stats.ttest_ind(x, y, equal_var=False).confidence_interval(LEVEL)
    return Difference(mean, float(ci.low), float(ci.high), "Welch t")


def by_seed(rows: pd.DataFrame) -> dict[tuple, dict[int, float]]:
    """(method, student, protocol, IPC) → {seed: accuracy} of measured rows (the last stored row of a seed)."""
    out: dict[tuple, dict[int, float]] = {}
    for r in rows.itertuples():
        out.setdefault((r.method, r.student, r.protocol, r.ipc), {})[int(r.seed)] = float(r.accuracy)
    return out


def compare(rows: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per (student, protocol, IPC) cell that both methods have: their means and seeds, a − b with its interval,
    the test, and whether the difference is resolved. `rows` are measured rows of current configurations."""
    seeds = by_seed(rows)
    out = []
    for (method, student, protocol, ipc), acc_a in seeds.items():
        acc_b = seeds.get((b, student, protocol, ipc))
        if method != a or acc_b is None:
            continue
        d = difference(acc_a, acc_b)
        out.append(
            {
                "student": student,
                "protocol": protocol,
                "ipc": ipc,
                f"{a}_mean": np.mean(list(acc_a.values())),
                f"{b}_mean": np.mean(list(acc_b.values())),
                f"{a}_seeds": len(acc_a),
                f"{b}_seeds": len(acc_b),
                "difference": d.mean,
                "ci_low": d.low,
                "ci_high": d.high,
                "test": d.test,
                "resolved": d.resolved,
            }
        )
    return pd.DataFrame(out)


def contests(agg: pd.DataFrame, seeds: dict[tuple, dict[int, float]], cell: list[str]) -> dict[tuple, tuple]:
    """Per cell of `agg` (grouped by `cell`) that holds two rows or more: (first, runner-up, first − runner-up with
    its interval), first and runner-up being the rows of the two highest means. `seeds` is `by_seed` of the rows
    `agg` aggregates; a row's own protocol picks its seeds (the best-of-protocols table mixes recipes: those pairs
    go to Welch)."""
    out = {}
    for key, part in agg.groupby(cell, sort=False):
        if len(part) < 2:
            continue
        first, second = part.sort_values("mean", ascending=False).iloc[:2].to_dict("records")

        def accuracies(r):
            return seeds.get((r["method"], r["student"], r["protocol"], r["ipc"]), {})

        d = difference(accuracies(first), accuracies(second), paired=first["protocol"] == second["protocol"])
        out[key if isinstance(key, tuple) else (key,)] = (first, second, d)
    return out


def leaders(agg: pd.DataFrame, seeds: dict[tuple, dict[int, float]], cell: list[str]) -> dict[tuple, str]:
    """Per cell of `agg` (grouped by `cell`), the method with the highest mean where its lead over the runner-up
    is resolved (`contests`); cells with no resolved lead are absent."""
    return {key: first["method"] for key, (first, _, d) in contests(agg, seeds, cell).items() if d.resolved}


def mark_failed(table: pd.DataFrame, a: str, b: str, failed: set[tuple[str, int]]) -> pd.DataFrame:
    """`table` with a `failed_check` column where any cell has one: which of the pair's cells ("a", "b", "a,b" or
    "") were sampled from a backbone that failed its check (`failed`: (method, IPC), harness/report/rows.py
    `failed_check_cells`)."""
    if table.empty:
        return table
    marked = [",".join(m for m in (a, b) if (m, int(ipc)) in failed) for ipc in table["ipc"]]
    return table.assign(failed_check=marked) if any(marked) else table  # a board with none keeps its columns


def lines(table: pd.DataFrame, a: str, b: str) -> list[str]:
    """The comparison as Markdown: one row per cell, points of accuracy; a cell sampled from a backbone that failed
    its check (the table's `failed_check`, `mark_failed`) carries † and a footnote says what it means."""
    head = [
        f"# {a} − {b}",
        "",
        f"Per cell: mean test accuracy of each (%, seeds in brackets), the difference {a} − {b} in points with "
        f"its {LEVEL:.0%} confidence interval (paired t over seeds trained alike, Welch t otherwise), and "
        "whether the interval excludes zero.",
        "",
    ]
    if table.empty:
        return head + [f"No cell holds both {a} and {b}."]
    resolved = int(table["resolved"].sum())
    head += [
        f"{resolved} of {len(table)} cells resolved.",
        "",
        f"| student | protocol | IPC | {a} | {b} | difference | 95 % CI | test | resolved |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    marked = False
    for r in table.to_dict("records"):
        ci = "–" if math.isnan(r["ci_low"]) else f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]"
        failed = str(r.get("failed_check") or "").split(",")
        mark = {m: f" {FAILED_PLOT_MARK}" if m in failed else "" for m in (a, b)}
        marked = marked or any(mark.values())
        head.append(
            f"| {r['student']} | {r['protocol']} | {r['ipc']} "
            f"| {100 * r[f'{a}_mean']:.1f} ({r[f'{a}_seeds']}){mark[a]} "
            f"| {100 * r[f'{b}_mean']:.1f} ({r[f'{b}_seeds']}){mark[b]} | {100 * r['difference']:+.2f} | {ci} | "
            f"{r['test']} | {'yes' if r['resolved'] else 'no'} |"
        )
    if marked:
        head += ["", FAILED_PLOT_NOTE + "."]
    return head
