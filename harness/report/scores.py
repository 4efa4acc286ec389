"""DD-Ranking's scores of a distilled set: the label-robust score (LRS) and the augmentation-robust score (ARS),
per (method, IPC, student), from the measured rows, each seed of a set paired with the same seed of the random
baseline. The random baseline is the method that declares itself one, the recipes those the protocols declare
(harness/models/protocols.py `score_protocols`): nothing here names a protocol or a method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.core.identity import FULL_DATA
from harness.models.protocols import score_protocols
from harness.report.rows import EXTERNAL, Board, cell_rows
from methods import get_method, list_methods


def _normalised(x: float) -> float:
    """DD-Ranking's map of a weighted accuracy difference onto [0, 1]: (exp(x) − e⁻¹) / (e − e⁻¹)."""
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


def _paired_scores(rows: list[dict], current, name: str, score) -> pd.DataFrame:
    """`score(acc, full, method, ipc, student, seed)` → {name: value, parts…} or None, per seed, for every
    (method, IPC, student) of the measured rows and the external sets' (`kind` says which): the means over the seeds
    that have every accuracy the score needs, and the sample std of `name`. `acc` is indexed by (method, IPC,
    student, protocol, seed); `full` is the full-data accuracy by student (measured: never an external set's)."""
    df = cell_rows(rows, current)
    if df.empty:
        return df
    full = df[df["method"] == FULL_DATA].groupby("student")["accuracy"].mean()
    df = df[df["method"] != FULL_DATA]
    acc = df.set_index(["method", "ipc", "student", "protocol", "seed"])["accuracy"]
    acc = acc[~acc.index.duplicated(keep="last")]
    # An external set's scores are a group of their own, as its cells are; a board without one keeps its columns.
    mine = df[df["kind"] == EXTERNAL] if "kind" in df else df.iloc[:0]
    external = dict(zip(mine["method"], mine["config_hash"]))
    out = []
    for (method, ipc, student), _ in df.groupby(["method", "ipc", "student"], sort=False):
        per_seed = [score(acc, full, method, ipc, student, seed) for seed in sorted(df["seed"].unique())]
        per_seed = pd.DataFrame([s for s in per_seed if s is not None])
        if per_seed.empty:
            continue
        entry = {"method": method, "ipc": ipc, "student": student}
        if method in external:  # its label on the board (harness/report/markdown.py `_ipc_table`)
            entry.update(kind=EXTERNAL, config_hash=external[method])
        for column in per_seed.columns:
            entry[column] = per_seed[column].mean()
            if column == name:
                entry[f"{name}_std"] = per_seed[name].std(ddof=1) if len(per_seed) > 1 else 0.0
        out.append({**entry, "seeds": len(per_seed)})
    return pd.DataFrame(out)


def label_robust_scores(
    rows: list[dict], current: set[tuple[str, str]] | None, baseline: str, hard: str, soft: str, lam: float = 0.5
) -> pd.DataFrame:
    """DD-Ranking's label-robust score of every (method, IPC, student), per seed, on accuracies as fractions.

    HLR = acc(full data, `hard`) − acc(set, `hard`); IOR = acc(set, `soft`) − acc(`baseline` at the same IPC,
    `soft`); LRS = (exp(λ·IOR − (1 − λ)·HLR) − e⁻¹) / (e − e⁻¹), in [0, 1]. Seed i of the method is paired with
    seed i of the baseline. A suite without a teacher-labelled protocol passes `soft` = `hard` (said in the table).
    """

    def score(acc, full, method, ipc, student, seed):
        keys = [
            (method, ipc, student, hard, seed),
            (method, ipc, student, soft, seed),
            (baseline, ipc, student, soft, seed),
        ]
        if student not in full.index or not all(k in acc.index for k in keys):
            return None
        hard_acc, syn, rand = (float(acc[k]) for k in keys)
        hlr, ior = full[student] - hard_acc, syn - rand
        return {"lrs": _normalised(lam * ior - (1 - lam) * hlr), "hlr": hlr, "ior": ior}

    out = _paired_scores(rows, current, "lrs", score)
    if not out.empty:
        out.insert(3, "ior_protocol", soft)
    return out


def augmentation_robust_scores(
    rows: list[dict],
    current: set[tuple[str, str]] | None,
    baseline: str,
    augmented: str,
    plain: str,
    gamma: float = 0.5,
) -> pd.DataFrame:
    """DD-Ranking's augmentation-robust score of every (method, IPC, student), per seed, on fractions.

    β = γ·(acc(set, `augmented`) − acc(`baseline`, `augmented`)) + (1 − γ)·(acc(set, `plain`) − acc(`baseline`,
    `plain`)), `plain` being the same recipe without augmentation; ARS = (exp(β) − e⁻¹) / (e − e⁻¹), as
    DD-Ranking's `AugmentationRobustScore` computes it. Seeds paired as in the LRS.
    """

    def score(acc, full, method, ipc, student, seed):
        keys = [(m, ipc, student, p, seed) for p in (augmented, plain) for m in (method, baseline)]
        if not all(k in acc.index for k in keys):
            return None
        syn_aug, rand_aug, syn_plain, rand_plain = (float(acc[k]) for k in keys)
        with_aug, without_aug = syn_aug - rand_aug, syn_plain - rand_plain
        return {
            "ars": _normalised(gamma * with_aug + (1 - gamma) * without_aug),
            "with_aug": with_aug,
            "without_aug": without_aug,
        }

    return _paired_scores(rows, current, "ars", score)


def random_baseline(methods) -> str | None:
    """The suite's method that declares itself DD-Ranking's random real subset."""
    return next((m for m in methods if m in list_methods() and get_method(m).random_baseline), None)


@dataclass(frozen=True)
class Scores:
    """A board's DD-Ranking scores and what they were computed against."""

    baseline: str | None  # the random baseline; None where the suite runs none (then no scores)
    recipes: dict[str, str | None]  # `score_protocols`: the hard, soft and no-augmentation protocol names
    lrs: pd.DataFrame  # empty where the suite cannot score
    ars: pd.DataFrame


def board_scores(suite, board: Board) -> Scores:
    """The LRS and ARS of the board's rows, in its order (student, method, IPC); a score the suite lacks the
    baseline or recipes for is empty."""
    recipes = score_protocols(suite.protocols)
    baseline = random_baseline(suite.methods)
    hard, soft, no_aug = recipes["hard"], recipes["soft"], recipes["no_aug"]
    lrs = label_robust_scores(board.rows, board.current, baseline, hard, soft) if baseline and hard else pd.DataFrame()
    ars = (
        augmentation_robust_scores(board.rows, board.current, baseline, hard, no_aug)
        if baseline and hard and no_aug
        else pd.DataFrame()
    )
    by = ("student", "method", "ipc")
    return Scores(baseline, recipes, board.ordered(lrs, by), board.ordered(ars, by))
