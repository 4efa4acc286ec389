"""Leaderboard: draws a suite's board into its folder — the Markdown board, its CSVs (accuracy, DD-Ranking's LRS and
ARS, DD-Ranking's own columns), the papers' reported numbers, and the sets' cost and diversity.

Which rows the board shows and in what order is harness/report/rows.py; the scores harness/report/scores.py; the
per-set tables harness/report/manifest_tables.py; the papers' numbers harness/report/reported.py; the Markdown
harness/report/markdown.py; the board's CSVs harness/report/tables.py. This module only puts them in their files.
"""

from __future__ import annotations

from pathlib import Path

from harness.core.sets import Manifest
from harness.report.manifest_tables import cost_table, diversity_table
from harness.report.markdown import board_lines, cost_lines, diversity_lines, reported_lines
from harness.report.reported import board_reported_table
from harness.report.rows import Board, board_rows
from harness.report.scores import board_scores
from harness.report.tables import write_board_csvs


def render(
    suite,
    rows: list[dict],
    current: set[tuple[str, str]],
    out_dir: Path,
    method_order: list[str],
    notes: list[str],
    manifests: list[Manifest] | None = None,
    recipes: set[tuple[str, str]] | None = None,
) -> tuple[Path, Path]:
    """Write leaderboard/<suite>.md and .csv (accuracy), and, from the `manifests` of the sets on the board,
    the cost table (<suite>-cost.csv) and, where the sets were measured, the diversity table
    (<suite>-diversity.csv). Without manifests the board has the accuracy tables only.

    Only rows of the sets in `current` (method, config hash) and, where given, trained under the `recipes`
    (student, protocol hash) are shown (harness/report/rows.py `board_rows`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    board = board_rows(suite, rows, current, method_order, manifests, recipes)
    scores = board_scores(suite, board)
    csv_path = write_board_csvs(suite, board, scores, out_dir)
    lines = board_lines(suite, board, scores, notes + board.failed_note)
    if getattr(suite, "reported", None):
        lines += _reported_section(suite, board, out_dir)
    if manifests:
        lines += _manifest_sections(suite.name, manifests, method_order, out_dir)
    md_path = out_dir / f"{suite.name}.md"
    md_path.write_text("\n".join(lines))
    return md_path, csv_path


def _reported_section(suite, board: Board, out_dir: Path) -> list[str]:
    """Write <suite>-reported.csv; returns its Markdown section."""
    table = board_reported_table(suite, board)
    csv_name = f"{suite.name}-reported.csv"
    table.to_csv(out_dir / csv_name, index=False, float_format="%.5f")
    return reported_lines(suite.reported, table, csv_name)


def _manifest_sections(name: str, manifests: list[Manifest], method_order: list[str], out_dir: Path) -> list[str]:
    """Write <name>-cost.csv and, where the sets were measured, <name>-diversity.csv; returns their sections."""
    cost = cost_table(manifests, method_order)
    cost.to_csv(out_dir / f"{name}-cost.csv", index=False, float_format="%.5f")
    lines = cost_lines(cost)
    div = diversity_table(manifests, method_order)
    if not div.empty:
        div.to_csv(out_dir / f"{name}-diversity.csv", index=False, float_format="%.6g")
        lines += diversity_lines(div)
    return lines
