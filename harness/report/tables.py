"""The board's CSV files: the accuracy cells, DD-Ranking's scores, and the board in the columns of DD-Ranking's own
leaderboard, so that its numbers can be read by a program or submitted there."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.report.rows import Board
from harness.report.scores import Scores, label_robust_scores

DD_RANKING_LABELS = {"hard": "Hard Label", "soft": "Soft Label"}


def dd_ranking_table(rows: list[dict], current, suite, baseline: str, hard: str, soft: str) -> pd.DataFrame:
    """The board in the columns of DD-Ranking's leaderboard (its Hugging Face space reads `data.csv` with
    method, method_reference, date, verified, dataset, ipc, label_type, recovery, improvement, score: app.py of
    spaces/Soptq/DD-Ranking, 4614de72): one row per set, student and label type, the label type's LRS with its
    HLR ("recovery") and IOR ("improvement"), all × 100 and averaged over paired seeds as on the board. Hard
    Label: IOR under the `hard` recipe; Soft Label: under `soft` (the board's LRS). `verified`: measured by
    ddbench. DD-Ranking stores dataset, IPC and label type as indices into its own lists; we write the names."""
    parts = []
    for kind, ior_protocol in (("hard", hard), ("soft", soft)):
        if kind == "soft" and soft == hard:
            continue
        lrs = label_robust_scores(rows, current, baseline, hard, ior_protocol)
        if lrs.empty:
            continue
        parts.append(
            pd.DataFrame(
                {
                    "method": lrs["method"],
                    "method_reference": "",
                    "verified": True,
                    "dataset": suite.name,
                    "ipc": lrs["ipc"],
                    "label_type": DD_RANKING_LABELS[kind],
                    "recovery": 100 * lrs["hlr"],
                    "improvement": 100 * lrs["ior"],
                    "score": 100 * lrs["lrs"],
                    "student": lrs["student"],
                    "seeds": lrs["seeds"],
                }
            )
        )
    if not parts:
        return pd.DataFrame()
    df = pd.concat(parts, ignore_index=True)
    df = df[df["method"] != baseline]  # the baseline scores against itself: DD-Ranking lists methods only
    finished = [r["finished_at"] for r in rows if "finished_at" in r]
    date = pd.Timestamp(max(finished), unit="s").strftime("%Y-%m-%d") if finished else ""
    df.insert(2, "date", date)
    return df.reset_index(drop=True)


def write_board_csvs(suite, board: Board, scores: Scores, out_dir: Path) -> Path:
    """Write <suite>.csv (the accuracy cells, full data apart), <suite>-external.csv (the external sets' cells with
    their source, SHA-256, overlaps and reported accuracy) where the store holds any, and, where the suite can score,
    <suite>-lrs.csv, <suite>-ars.csv and <suite>-dd-ranking.csv into `out_dir`; returns the accuracy CSV."""
    csv_path = out_dir / f"{suite.name}.csv"
    board.agg.to_csv(csv_path, index=False, float_format="%.5f")
    external = out_dir / f"{suite.name}-external.csv"
    if len(board.external):  # apart from the measured CSV, as the papers' numbers are: a reader never mixes them
        board.external.to_csv(external, index=False, float_format="%.5f")
    elif external.exists():  # the store no longer holds an external set under the current recipes
        external.unlink()
    if not scores.lrs.empty:
        scores.lrs.to_csv(out_dir / f"{suite.name}-lrs.csv", index=False, float_format="%.5f")
    if not scores.ars.empty:
        scores.ars.to_csv(out_dir / f"{suite.name}-ars.csv", index=False, float_format="%.5f")
    if not scores.lrs.empty:
        dd_ranking = dd_ranking_table(
            board.rows, board.current, suite, scores.baseline, scores.recipes["hard"], scores.recipes["soft"]
        )
        board.ordered(dd_ranking, ("label_type", "student", "method", "ipc")).to_csv(
            out_dir / f"{suite.name}-dd-ranking.csv", index=False, float_format="%.3f"
        )
    return csv_path
