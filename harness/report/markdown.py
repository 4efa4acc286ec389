"""The board as Markdown: its notes, an accuracy table per student and protocol (and their best of protocols), the
full-data reference, DD-Ranking's scores, the papers' reported numbers, and the sets' cost and diversity; each
section a function of the tables the other report modules make."""

from __future__ import annotations

import math

import pandas as pd

from harness.config.schema import BEST_OF_PROTOCOLS
from harness.core.identity import FULL_DATA
from harness.report.compare import CELL, LEVEL, by_seed, leaders
from harness.report.manifest_tables import machine_label
from harness.report.rows import (
    EXTERNAL,
    FAILED_CHECK_MARK,
    OVERLAP_MARK,
    OVERLAP_NOTE,
    Board,
    best_of_protocols,
    cell_rows,
    external_label,
    ranked,
)
from harness.report.scores import Scores

BEST = "best of protocols"
MEMORY_KINDS = {
    "shard_peak_rss": "peak resident memory of the actor process during the shard (reset before each shard), "
    "the models and data it holds included",
    "cuda_max_allocated": "peak CUDA memory allocated by torch during the shard",
    "process_max_rss": "the process's lifetime peak resident memory (no per-shard reset was possible: an upper "
    "bound, not comparable between methods)",
}


def format_cell(mean: float, std: float, n: int) -> str:
    if n == 1:  # one seed has no spread: "± 0.0" would claim a measured one
        return f"{100 * mean:.1f} (1)"
    return f"{100 * mean:.1f} ± {100 * std:.1f} ({n})"


def protocols_note(protocols: dict) -> str:
    """The board's line on how students were trained: each protocol's epochs and student options, and the
    settings a student trains with of its own (a recipe a protocol search published for it)."""

    def setting(name, value):
        return f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}"

    return "protocols: " + "; ".join(
        f"{name}: epochs by IPC {p.epochs}"
        + (f", student options {p.student_kwargs}" if p.student_kwargs else "")
        + "".join(
            f", {student} trains with " + " and ".join(setting(*kv) for kv in settings.items())
            for student, settings in getattr(p, "per_student", {}).items()
        )
        for name, p in protocols.items()
    )


def _ipc_table(
    part: pd.DataFrame, ipcs: list[int], order: dict[str, int], cell, leader: dict[int, str] | None = None
) -> list[str]:
    """A method × IPC table of `part`'s rows, methods in the suite's order, `cell(row)` in each; the cell of
    `leader[ipc]`, the method whose lead at that IPC is resolved (harness/report/compare.py), in bold. Rows of
    external sets (`part`'s `kind`, where it has one) come after the measured ones, under their own heading row,
    labelled by `external_label`."""
    leader = leader or {}
    lines = ["| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |", "|---|" + "---|" * len(ipcs)]
    external = part["kind"] == EXTERNAL if "kind" in part else pd.Series(False, index=part.index)
    for elsewhere, group in ((False, part[~external]), (True, part[external])):
        if elsewhere and len(group):
            lines.append("| *made elsewhere, evaluated by ddbench* |" + " |" * len(ipcs))
        for method in sorted(group["method"].unique(), key=lambda m: order.get(m, math.inf)):
            rows = group[group["method"] == method]
            first = rows.iloc[0]
            label = (
                external_label(method, first["config_hash"], int(first.get("overlap", 0) or 0))
                if first.get("kind") == EXTERNAL
                else method
            )
            cells = []
            for ipc in ipcs:
                r = rows[rows["ipc"] == ipc]
                text = cell(r.iloc[0]) if len(r) else "–"
                if len(r) and leader.get(ipc) == method:
                    text = f"**{text}**"
                cells.append(text + (FAILED_CHECK_MARK if len(r) and r.iloc[0].get("backbone_check_failed") else ""))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def board_lines(suite, board: Board, scores: Scores, notes: list[str]) -> list[str]:
    """The board's title, notes and accuracy sections: a table per student and protocol, the full-data reference
    and DD-Ranking's scores."""
    provenance = (
        "all rows measured by ddbench except those under 'Reported by the papers', copied from papers"
        if getattr(suite, "reported", None)
        else "all rows measured by ddbench, none reported from papers"
    )
    if len(board.external):
        provenance += (
            "; rows under 'made elsewhere' are sets distilled by others (their sources under 'External sets'), "
            "evaluated by ddbench under the same students, protocols and seeds"
        )
    lines = [
        f"# {suite.name}",
        "",
        "Test accuracy (%) on the real held-out test set, mean ± sample std over student seeds "
        f"(number of seeds in brackets); {provenance}.",
        "",
    ]
    if len(board.external) and (board.external["overlap"] > 0).any():
        notes = [*notes, OVERLAP_NOTE]
    lines += [f"- {n}" for n in notes] + [""]
    cells = board.cells()
    if cells.empty:
        return lines + ["No results yet."]
    ipcs = sorted(cells["ipc"].unique())
    order = {m: i for i, m in enumerate(board.method_order)}
    lines += _accuracy_lines(board, ipcs, order) + _full_data_lines(board, scores.recipes["hard"])
    lines += external_lines(board)
    baseline, hard, no_aug = scores.baseline, scores.recipes["hard"], scores.recipes["no_aug"]
    if not scores.lrs.empty:
        lines += _score_lines(
            "## DD-Ranking label-robust score",
            "LRS × 100 (mean ± std over paired seeds, their number in brackets; λ = 0.5, accuracies as fractions): "
            f"HLR = full data − set ({hard}), IOR = set − {baseline} at the same IPC "
            f"({scores.lrs['ior_protocol'].iloc[0]}). A set with IOR = HLR = 0 scores 26.9; higher is better.",
            scores.lrs,
            "lrs",
            ipcs,
            order,
        )
    if not scores.ars.empty:
        lines += _score_lines(
            "## DD-Ranking augmentation-robust score",
            "ARS × 100 (mean ± std over paired seeds, their number in brackets; γ = 0.5, accuracies as fractions): "
            f"the set's lead over {baseline} at the same IPC with augmentation ({hard}) and without it ({no_aug}), "
            f"weighted equally. Equal to {baseline} on both: 26.9; higher is better.",
            scores.ars,
            "ars",
            ipcs,
            order,
        )
    return lines


def _accuracy_lines(board: Board, ipcs: list[int], order: dict[str, int]) -> list[str]:
    """A table per (student, protocol) and, where more than one protocol is ranked, one per student of the best
    of protocols (each cell naming the protocol it took); a column's resolved leader in bold."""
    agg = board.cells()
    tables = list(
        board.ordered(agg, ("student", "protocol", "method", "ipc")).groupby(["student", "protocol"], sort=False)
    )
    best = board.ordered(best_of_protocols(agg), ("student", "method", "ipc"))
    if agg.loc[agg["protocol"].map(ranked), "protocol"].nunique() > 1:
        tables += [((student, BEST), part) for student, part in best.groupby("student", sort=False)]
    seeds = by_seed(cell_rows(board.rows, board.current))
    led = leaders(agg, seeds, CELL)
    led.update({(s, BEST, i): m for (s, i), m in leaders(best, seeds, ["student", "ipc"]).items()})
    lines = [
        f"A bold cell leads its column by a resolved margin: the {LEVEL:.0%} confidence interval of its "
        "difference from the runner-up excludes zero (paired t over seeds trained alike, Welch t across "
        "recipes; harness/report/compare.py). Elsewhere the column's best is within noise of the next.",
        "",
    ]
    for (student, protocol), part in tables:
        suffix = (lambda r: f" {r['protocol']}") if protocol == BEST else (lambda r: "")
        lines += [f"## {student}, {protocol}", ""]
        lines += _ipc_table(
            part,
            ipcs,
            order,
            lambda r: format_cell(r["mean"], r["std"], r["seeds"]) + suffix(r),  # noqa: B023 (called here)
            {i: m for (s, p, i), m in led.items() if (s, p) == (student, protocol)},
        )
        lines.append("")
    return lines


def external_lines(board: Board) -> list[str]:
    """The external sets' section: each set's name, source, SHA-256 and test-split overlaps, then each of its cells
    beside the accuracy its paper reports for it, where its row says one, and measured − reported in points."""
    ext = board.external
    if ext.empty:
        return []
    lines = [
        "## External sets",
        "",
        "Sets distilled elsewhere (a paper's released set, anyone's), copied into ddbench's store and evaluated "
        "under this board's students, protocols and seeds (`ddbench evaluate`): their cells above, under 'made "
        "elsewhere', with the same statistics and intervals as the measured ones. A name stands for its latest "
        "set; its config hash is the first 12 hex digits of the set's SHA-256. The reported number is the one "
        "the set's paper prints, under the paper's own student and recipe, which may not be this board's: the "
        "difference says how far ddbench's protocol moves the set, not that one of the two is wrong.",
        "",
        "| set | source | SHA-256 | test-split overlaps |",
        "|---|---|---|---|",
    ]
    for (method, _), part in ext.groupby(["method", "config_hash"], sort=False):
        first = part.iloc[0]
        overlap = int(part["overlap"].max())
        lines.append(
            f"| {method} | {first['set_source']} | `{first['set_sha256']}` | "
            f"{f'{overlap}{OVERLAP_MARK}' if overlap else 0} |"
        )
    lines += [
        "",
        "| set | IPC | student | protocol | measured | reported | measured − reported |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in board.ordered(ext, ("method", "ipc", "student", "protocol")).to_dict("records"):
        reported, diff = r["reported_accuracy"], r["measured_minus_reported"]
        known = not (reported is None or math.isnan(reported))
        lines.append(
            f"| {r['method']} | {r['ipc']} | {r['student']} | {r['protocol']} "
            f"| {format_cell(r['mean'], r['std'], r['seeds'])} | {_fmt(100 * reported if known else None, '.1f')} "
            f"| {_fmt(100 * diff if known else None, '+.1f')} |"
        )
    return lines + [""]


def _full_data_lines(board: Board, hard: str) -> list[str]:
    """The full-data reference: each student's accuracy trained on the whole training split, and which of those
    rows this run adopted from the committed store rather than trained."""
    if board.full.empty:
        return []
    lines = [
        "## Full-data reference",
        "",
        f"Each student trained once on the whole training split (validation images held out) with the {hard} recipe.",
        "",
        "| student | accuracy |",
        "|---|---|",
    ]
    lines += [f"| {r.student} | {100 * r.mean:.1f} |" for r in board.full.itertuples()] + [""]
    adopted = sorted({r["student"] for r in board.rows if r.get("method") == FULL_DATA and r.get("adopted_from")})
    if adopted:  # measured by an earlier run of the same data and recipe (harness/stages/evaluate.py)
        lines += [
            f"Taken by this run from the project's committed result store, not trained again: "
            f"{', '.join(adopted)} (same data, recipe and seed).",
            "",
        ]
    return lines


def _score_lines(
    heading: str, explanation: str, scores: pd.DataFrame, column: str, ipcs: list[int], order: dict[str, int]
) -> list[str]:
    """A score's section: what it measures, then a method × IPC table of `column` per student."""
    lines = [heading, "", explanation, ""]
    for student, part in scores.groupby("student", sort=False):
        lines += [f"### {student}", ""]
        lines += _ipc_table(part, ipcs, order, lambda r: format_cell(r[column], r[f"{column}_std"], r["seeds"]))
        lines.append("")
    return lines


def _stages_cell(row) -> str:
    shares = [
        (c[len("stage_") : -len("_share")], row[c])
        for c in row.index
        if c.startswith("stage_") and c.endswith("_share") and pd.notna(row[c])
    ]
    return ", ".join(f"{name} {100 * share:.0f} %" for name, share in shares) or "–"


def cost_lines(cost: pd.DataFrame) -> list[str]:
    """The cost section of a `cost_table` (harness/report/manifest_tables.py)."""
    machines = cost.apply(machine_label, axis=1)
    kinds = cost["peak_memory_kind"].fillna("unrecorded")
    lines = [
        "## Cost of distillation",
        "",
        "Per set (the shape of Table 5 of the adaptive-sampling paper): seconds of distillation per image "
        "(all classes' shards summed, over the images made), peak memory of one shard (the largest over the "
        "set's classes), and the share of the distillation time a method spent in its named stages.",
        "",
    ]
    if machines.nunique() == 1:
        lines.append(f"- machine: {machines.iloc[0]}; costs compare only between sets made on like machines")
    for kind in sorted(kinds.unique()):
        lines.append(f"- memory `{kind}`: {MEMORY_KINDS.get(kind, 'as recorded by the harness that made the set')}")
    extra = [("memory kind", kinds)] if kinds.nunique() > 1 else []
    extra += [("machine", machines)] if machines.nunique() > 1 else []
    if "fine_tune_seconds" in cost:
        lines.append(
            "- fine-tune: the seconds and peak memory of training the method's fine-tuned backbone, paid "
            "once and shared by every IPC sampled from it (harness/stages/fine_tune.py)"
        )
        extra.append(
            (
                "fine-tune s / peak MiB",
                cost.apply(
                    lambda r: (
                        "–"
                        if pd.isna(r.get("fine_tune_seconds"))
                        else f"{r['fine_tune_seconds']:.0f} / {r['fine_tune_peak_memory_mib']:.0f}"
                    ),
                    axis=1,
                ),
            )
        )
    lines += [
        "",
        "| method | IPC | images | s / image | peak memory (MiB) | named stages |"
        + "".join(f" {name} |" for name, _ in extra),
        "|---|---|---|---|---|---|" + "---|" * len(extra),
    ]
    for i, r in cost.iterrows():
        cells = [
            r["method"],
            str(r["ipc"]),
            str(r["images"]),
            f"{r['seconds_per_image']:.3f}",
            f"{r['peak_memory_mib']:.0f}",
            _stages_cell(r),
        ] + [str(values.iloc[i]) for _, values in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _fmt(value, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def diversity_lines(div: pd.DataFrame) -> list[str]:
    """The diversity and fidelity section of a `diversity_table` (harness/report/manifest_tables.py)."""
    first = div.iloc[0]
    extractor = ", ".join(sorted(div["extractor"].unique()))
    source = (
        "the suite's frozen teacher's penultimate features"
        if extractor == "teacher"
        else "the FID Inception-v3 (pool3)"
        if extractor == "inception"
        else extractor
    )
    lines = [
        "## Diversity and fidelity",
        "",
        f"Each whole set against the real training images, on {source} ({int(first['feature_dim'])}-d; the "
        "measures of Table 4 of the adaptive-sampling paper). FID and KID (lower is better) against a "
        f"class-balanced sample of {int(first['real_images'])} real images; precision (fidelity), recall, "
        f"density and coverage (diversity; higher is better, k = {int(first['nearest_k'])}) against real "
        "samples of the set's own size and class balance, mean over "
        f"{int(first['real_draws']) if pd.notna(first.get('real_draws')) else 0} draws (standard deviations "
        "in the CSV). Compare within an IPC: every measure depends on the set's size.",
        "",
    ]
    if extractor != "inception":
        lines.append(
            "- Not Inception features: the FIDs here are not comparable with the Inception FIDs papers "
            "report, only with each other."
        )
    if div["fid"].isna().any():
        lines.append(
            f"- FID –: the set has fewer than {int(div['fid_min_images'].max())} images, the feature "
            "dimension + 1; with fewer its feature covariance is singular and FID is mostly sample-size "
            "bias. KID, unbiased at any size, stands in."
        )
    if div["precision"].isna().any():
        lines.append(f"- precision … coverage –: fewer than k + 2 = {int(div['prdc_min_images'].max())} images.")
    lines += [
        "",
        "| method | IPC | images | FID | KID | precision | recall | density | coverage |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in div.iterrows():
        cells = [r["method"], str(r["ipc"]), str(r["images"]), _fmt(r["fid"], ".2f"), _fmt(r["kid"], ".3g")]
        cells += [_fmt(r[name], ".2f") for name in ("precision", "recall", "density", "coverage")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _as_printed(percent: float) -> str:
    """A paper's number with the decimals it was printed with: one, unless it has more (69.758)."""
    one = f"{percent:.1f}"
    return one if math.isclose(float(one), percent, abs_tol=1e-9) else f"{percent:.6g}"


def reported_lines(reported, table: pd.DataFrame, csv_name: str) -> list[str]:
    """The papers' section of a `board_reported_table` (harness/report/reported.py), written to `csv_name`: what
    the numbers are, the papers, names and notes they use, and a table per student."""
    notes = list(dict.fromkeys(n for n in table["note"] if n))
    lines = [
        "## Reported by the papers",
        "",
        "The papers' own numbers (%, mean ± std as their tables print them), copied, not measured by ddbench. "
        "Beside each, ddbench's measured mean for the same method, IPC, student and protocol where this board "
        "has one, and measured − reported in points. They never enter the tables, best-of, full-data row, LRS "
        f"or ARS above; `{csv_name}` has them apart from the measured CSV. {BEST_OF_PROTOCOLS} is the higher of "
        "a paper's evaluations with hard and with soft labels, compared with this board's best-of-protocols "
        "table.",
        "",
    ]
    lines += [f"- {name}: {ref}" for name, ref in reported.papers.items()]
    lines += [f"- {name} (not implemented in ddbench): {what}" for name, what in reported.not_implemented.items()]
    lines += [f"- {name} (protocol): {what}" for name, what in reported.protocols.items()]
    lines += [f"- {name} (student): {what}" for name, what in reported.students.items()]
    if (table["kind"] == FULL_DATA).any():
        lines.append(
            f"- Reported {FULL_DATA} rows are shown for reference only: the label-robust score's HLR reads "
            f"ddbench's measured {FULL_DATA} row alone, never a paper's."
        )
    lines += [f"- [{i}] {note}" for i, note in enumerate(notes, 1)] + [""]
    for student, part in table.groupby("student", sort=False):
        lines += [
            f"### {student}",
            "",
            "| method | IPC | protocol | reported (paper, table) | measured | measured − reported |",
            "|---|---|---|---|---|---|",
        ]
        lines += [_reported_row(r, notes) for r in part.itertuples()]
        lines.append("")
    return lines


def _reported_row(r, notes: list[str]) -> str:
    """One reported entry: the paper's number as printed, with its note's mark, beside the measured cell."""
    spread = "" if math.isnan(r.reported_std) else f" ± {_as_printed(100 * r.reported_std)}"
    mark = f" [{notes.index(r.note) + 1}]" if r.note else ""
    cited = f"{_as_printed(100 * r.reported_mean)}{spread} ({r.paper}, {r.table}){mark}"
    if r.measured_seeds:
        picked = f" {r.measured_protocol}" if r.protocol == BEST_OF_PROTOCOLS else ""
        measured = format_cell(r.measured_mean, r.measured_std, r.measured_seeds) + picked
        diff = f"{100 * r.measured_minus_reported:+.1f}"
    else:
        measured = diff = "–"
    ipc = "full" if r.kind == FULL_DATA else str(r.ipc)
    return f"| {r.method} | {ipc} | {r.protocol} | {cited} | {measured} | {diff} |"
