"""The papers' own numbers a suite lists (its `reported:` section, harness/config/schema.py `ReportedConfig`),
each beside ddbench's measured mean for the same setting where the board has one. Reported numbers are only ever
read here: they never enter the board's cells, best-of, full-data row or scores."""

from __future__ import annotations

import math

import pandas as pd

from harness.config.schema import BEST_OF_PROTOCOLS
from harness.core.identity import FULL_DATA
from harness.report.rows import Board, board_order, ranked


def _measured_for(entry, agg: pd.DataFrame, full: pd.DataFrame, measured_as: dict[str, dict[str, str]]):
    """The measured row a reported entry compares with, or None: the full-data row of its student and recipe,
    the better ranked protocol of its setting (best of protocols), or the row of its setting under its protocol.
    The student is, per protocol, the network the papers' name stands for there (`reported.measured_as`)."""

    def student_under(protocol: str) -> str:
        return measured_as.get(entry.student, {}).get(protocol, entry.student)

    def matches(row) -> bool:
        setting = entry.kind == FULL_DATA or (row["method"] == entry.method and row["ipc"] == entry.ipc)
        protocol = ranked(row["protocol"]) if entry.protocol == BEST_OF_PROTOCOLS else row["protocol"] == entry.protocol
        return setting and protocol and row["student"] == student_under(row["protocol"])

    rows = full if entry.kind == FULL_DATA else agg
    found = [row for _, row in rows.iterrows() if matches(row)]
    return max(found, key=lambda row: row["mean"]) if found else None


def reported_table(reported, agg: pd.DataFrame, full: pd.DataFrame) -> pd.DataFrame:
    """One row per reported entry: the paper's number, as a fraction like the accuracy CSV, beside ddbench's
    measured mean for the same method, IPC, student and protocol where the board has one, and measured − reported."""
    out = []
    for e in reported.entries:
        m = _measured_for(e, agg, full, reported.measured_as)
        reported_mean = e.accuracy / 100
        out.append(
            {
                "kind": e.kind,
                "method": e.method,
                "ipc": e.ipc,
                "student": e.student,
                "protocol": e.protocol,
                "paper": e.paper,
                "table": e.table,
                "reported_mean": reported_mean,
                "reported_std": math.nan if e.std is None else e.std / 100,
                "note": e.note,
                "measured_protocol": None if m is None else m["protocol"],
                "measured_mean": math.nan if m is None else m["mean"],
                "measured_std": math.nan if m is None else m["std"],
                "measured_seeds": 0 if m is None else int(m["seeds"]),
                "measured_minus_reported": math.nan if m is None else m["mean"] - reported_mean,
            }
        )
    return pd.DataFrame(out)


def board_reported_table(suite, board: Board) -> pd.DataFrame:
    """`reported_table` of the suite's entries against the board, in the board's order (student, method, IPC,
    protocol); methods the run left out and those ddbench does not implement after the run's, full data last."""
    reported = suite.reported
    order = (
        board.method_order
        + [m for m in suite.methods if m not in board.method_order]
        + list(reported.not_implemented)
        + [FULL_DATA]
    )
    return board_order(
        reported_table(reported, board.agg, board.full),
        order,
        board.students,
        board.protocols,
        ("student", "method", "ipc", "protocol"),
    )
