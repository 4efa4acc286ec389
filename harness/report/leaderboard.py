"""Leaderboard: the result store's rows, aggregated over seeds, as Markdown and CSV, with DD-Ranking's
label-robust (LRS) and augmentation-robust (ARS) scores.

Only rows of the configurations the suite defines now are shown (an old config's rows stay in the store
but would mix two experiments). Rows copied from papers carry kind "reported" and are never averaged with
measured ones; the papers' numbers a suite lists (its `reported:` section) are shown in their own section beside
the measured ones and read nowhere else. Protocols are found by what they declare (harness/models/protocols.py), the
random baseline by the method that declares itself one: nothing here names a protocol or a method.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from methods import get_method, list_methods

from harness.report.compare import CELL, LEVEL, by_seed, leaders
from harness.core.identity import FULL_DATA
from harness.models.protocols import get_protocol, list_protocols, score_protocols
from harness.core.sets import Manifest
from harness.config.schema import BEST_OF_PROTOCOLS

GROUP = ["method", "config_hash", "ipc", "student", "protocol"]
BEST = "best of protocols"


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


def aggregate(rows: list[dict], current: set[tuple[str, str]] | None = None) -> pd.DataFrame:
    df = measured_rows(rows, current)
    if df.empty:
        return df
    g = df.groupby(GROUP, sort=False)
    out = g.agg(mean=("accuracy", "mean"), std=("accuracy", lambda a: a.std(ddof=1) if len(a) > 1 else 0.0),
                seeds=("seed", "nunique"), train_seconds=("train_seconds", "mean"),
                seconds_per_image=("distill_seconds_per_image", "first"),
                peak_memory_mb=("peak_memory_bytes", lambda b: b.iloc[0] / 2**20)).reset_index()
    return out


def best_of_protocols(agg: pd.DataFrame) -> pd.DataFrame:
    """Per (method, config, IPC, student), the ranked protocol with the higher mean accuracy — how the papers
    report a setting. A protocol run only for a score (`ranked = False`) never stands for a setting."""
    agg = agg[agg["protocol"].map(_ranked)]
    idx = agg.groupby(["method", "config_hash", "ipc", "student"], sort=False)["mean"].idxmax()
    return agg.loc[idx.values]


def _ranked(protocol: str) -> bool:
    return get_protocol(protocol).ranked if protocol in list_protocols() else True


def _normalised(x: float) -> float:
    """DD-Ranking's map of a weighted accuracy difference onto [0, 1]: (exp(x) − e⁻¹) / (e − e⁻¹)."""
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


def _paired_scores(rows: list[dict], current, name: str, score) -> pd.DataFrame:
    """`score(acc, full, method, ipc, student, seed)` → {name: value, parts…} or None, per seed, for every
    (method, IPC, student) of the measured rows: the means over the seeds that have every accuracy the score
    needs, and the sample std of `name`. `acc` is indexed by (method, IPC, student, protocol, seed); `full`
    is the full-data accuracy by student."""
    df = measured_rows(rows, current)
    if df.empty:
        return df
    full = df[df["method"] == FULL_DATA].groupby("student")["accuracy"].mean()
    df = df[df["method"] != FULL_DATA]
    acc = df.set_index(["method", "ipc", "student", "protocol", "seed"])["accuracy"]
    acc = acc[~acc.index.duplicated(keep="last")]
    out = []
    for (method, ipc, student), _ in df.groupby(["method", "ipc", "student"], sort=False):
        per_seed = [score(acc, full, method, ipc, student, seed) for seed in sorted(df["seed"].unique())]
        per_seed = pd.DataFrame([s for s in per_seed if s is not None])
        if per_seed.empty:
            continue
        entry = {"method": method, "ipc": ipc, "student": student}
        for column in per_seed.columns:
            entry[column] = per_seed[column].mean()
            if column == name:
                entry[f"{name}_std"] = per_seed[name].std(ddof=1) if len(per_seed) > 1 else 0.0
        out.append({**entry, "seeds": len(per_seed)})
    return pd.DataFrame(out)


def label_robust_scores(rows: list[dict], current: set[tuple[str, str]] | None, baseline: str,
                        hard: str, soft: str, lam: float = 0.5) -> pd.DataFrame:
    """DD-Ranking's label-robust score of every (method, IPC, student), per seed, on accuracies as fractions.

    HLR = acc(full data, `hard`) − acc(set, `hard`); IOR = acc(set, `soft`) − acc(`baseline` at the same IPC,
    `soft`); LRS = (exp(λ·IOR − (1 − λ)·HLR) − e⁻¹) / (e − e⁻¹), in [0, 1]. Seed i of the method is paired with
    seed i of the baseline. A suite without a teacher-labelled protocol passes `soft` = `hard` (said in the table).
    """
    def score(acc, full, method, ipc, student, seed):
        keys = [(method, ipc, student, hard, seed), (method, ipc, student, soft, seed),
                (baseline, ipc, student, soft, seed)]
        if student not in full.index or not all(k in acc.index for k in keys):
            return None
        hard_acc, syn, rand = (float(acc[k]) for k in keys)
        hlr, ior = full[student] - hard_acc, syn - rand
        return {"lrs": _normalised(lam * ior - (1 - lam) * hlr), "hlr": hlr, "ior": ior}

    out = _paired_scores(rows, current, "lrs", score)
    if not out.empty:
        out.insert(3, "ior_protocol", soft)
    return out


def augmentation_robust_scores(rows: list[dict], current: set[tuple[str, str]] | None, baseline: str,
                               augmented: str, plain: str, gamma: float = 0.5) -> pd.DataFrame:
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
        return {"ars": _normalised(gamma * with_aug + (1 - gamma) * without_aug), "with_aug": with_aug,
                "without_aug": without_aug}

    return _paired_scores(rows, current, "ars", score)


def format_cell(mean: float, std: float, n: int) -> str:
    if n == 1:  # one seed has no spread: "± 0.0" would claim a measured one
        return f"{100 * mean:.1f} (1)"
    return f"{100 * mean:.1f} ± {100 * std:.1f} ({n})"


def _ipc_table(part: pd.DataFrame, ipcs: list[int], order: dict[str, int], cell,
               leader: dict[int, str] | None = None) -> list[str]:
    """A method × IPC table of `part`'s rows, methods in the suite's order, `cell(row)` in each; the cell of
    `leader[ipc]`, the method whose lead at that IPC is resolved (harness/report/compare.py), in bold."""
    leader = leader or {}
    lines = ["| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |", "|---|" + "---|" * len(ipcs)]
    for method in sorted(part["method"].unique(), key=lambda m: order.get(m, math.inf)):
        cells = []
        for ipc in ipcs:
            r = part[(part["method"] == method) & (part["ipc"] == ipc)]
            text = cell(r.iloc[0]) if len(r) else "–"
            if len(r) and leader.get(ipc) == method:
                text = f"**{text}**"
            cells.append(text + (FAILED_CHECK_MARK if len(r) and r.iloc[0].get("backbone_check_failed") else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


MEMORY_KINDS = {
    "shard_peak_rss": "peak resident memory of the actor process during the shard (reset before each shard), "
                      "the models and data it holds included",
    "cuda_max_allocated": "peak CUDA memory allocated by torch during the shard",
    "process_max_rss": "the process's lifetime peak resident memory (no per-shard reset was possible: an upper "
                       "bound, not comparable between methods)",
}


def _sorted_by_method(df: pd.DataFrame, method_order: list[str]) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(method_order)}
    key = df["method"].map(lambda m: order.get(m, math.inf))
    return df.assign(_order=key).sort_values(["_order", "ipc"], kind="stable").drop(columns="_order")


def cost_table(manifests: list[Manifest], method_order: list[str]) -> pd.DataFrame:
    """One row per set: seconds per distilled image, peak memory and the seconds and share of each named
    stage (stage_<name>_seconds, stage_<name>_share), as the manifests record them."""
    out = []
    for m in manifests:
        row = {"method": m.method, "config_hash": m.config_hash, "ipc": m.ipc, "images": m.images,
               "distill_seconds": m.distill_seconds, "seconds_per_image": m.seconds_per_image,
               "peak_memory_mib": m.peak_memory_bytes / 2**20, "peak_memory_kind": m.peak_memory_kind,
               # sets made before the machine was recorded say so rather than borrow this run's machine
               "device": m.device or "unrecorded", "cpu": m.cpu or "unrecorded",
               "torch_threads": "unrecorded" if m.torch_threads is None else str(m.torch_threads)}
        if m.fine_tune:  # a cost paid once per fine-tuned backbone, beside the per-set costs
            row["fine_tune_seconds"] = m.fine_tune["seconds"]
            row["fine_tune_peak_memory_mib"] = m.fine_tune["peak_memory_bytes"] / 2**20
        for stage, seconds in (m.stage_seconds or {}).items():
            row[f"stage_{stage}_seconds"] = seconds
            row[f"stage_{stage}_share"] = seconds / m.distill_seconds if m.distill_seconds > 0 else math.nan
        out.append(row)
    return _sorted_by_method(pd.DataFrame(out), method_order).reset_index(drop=True)


def _stages_cell(row) -> str:
    shares = [(c[len("stage_"):-len("_share")], row[c]) for c in row.index
              if c.startswith("stage_") and c.endswith("_share") and pd.notna(row[c])]
    return ", ".join(f"{name} {100 * share:.0f} %" for name, share in shares) or "–"


def machine_label(row) -> str:
    threads = "" if row["torch_threads"] == "unrecorded" else f", {row['torch_threads']} torch thread(s)"
    return f"{row['device']} (host {row['cpu']}{threads})" if row["device"] != "cpu" else f"cpu ({row['cpu']}{threads})"


def _cost_lines(cost: pd.DataFrame) -> list[str]:
    machines = cost.apply(machine_label, axis=1)
    kinds = cost["peak_memory_kind"].fillna("unrecorded")
    lines = ["## Cost of distillation", "",
             "Per set (the shape of Table 5 of the adaptive-sampling paper): seconds of distillation per image "
             "(all classes' shards summed, over the images made), peak memory of one shard (the largest over the "
             "set's classes), and the share of the distillation time a method spent in its named stages.", ""]
    if machines.nunique() == 1:
        lines.append(f"- machine: {machines.iloc[0]}; costs compare only between sets made on like machines")
    for kind in sorted(kinds.unique()):
        lines.append(f"- memory `{kind}`: {MEMORY_KINDS.get(kind, 'as recorded by the harness that made the set')}")
    extra = [("memory kind", kinds)] if kinds.nunique() > 1 else []
    extra += [("machine", machines)] if machines.nunique() > 1 else []
    if "fine_tune_seconds" in cost:
        lines.append("- fine-tune: the seconds and peak memory of training the method's fine-tuned backbone, paid "
                     "once and shared by every IPC sampled from it (harness/stages/fine_tune.py)")
        extra.append(("fine-tune s / peak MiB", cost.apply(lambda r: "–" if pd.isna(r.get("fine_tune_seconds"))
                      else f"{r['fine_tune_seconds']:.0f} / {r['fine_tune_peak_memory_mib']:.0f}", axis=1)))
    lines += ["", "| method | IPC | images | s / image | peak memory (MiB) | named stages |"
              + "".join(f" {name} |" for name, _ in extra), "|---|---|---|---|---|---|" + "---|" * len(extra)]
    for i, r in cost.iterrows():
        cells = [r["method"], str(r["ipc"]), str(r["images"]), f"{r['seconds_per_image']:.3f}",
                 f"{r['peak_memory_mib']:.0f}", _stages_cell(r)] + [str(values.iloc[i]) for _, values in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


DIVERSITY_MEASURES = ["fid", "kid", "precision", "recall", "density", "coverage"]


def diversity_table(manifests: list[Manifest], method_order: list[str]) -> pd.DataFrame:
    """One row per measured set: its diversity entry (see harness/stages/diversity.py) beside its identity."""
    out = [{"method": m.method, "config_hash": m.config_hash, "ipc": m.ipc, **m.diversity}
           for m in manifests if m.diversity]
    if not out:
        return pd.DataFrame()
    return _sorted_by_method(pd.DataFrame(out), method_order).reset_index(drop=True)


def _fmt(value, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _diversity_lines(div: pd.DataFrame) -> list[str]:
    first = div.iloc[0]
    extractor = ", ".join(sorted(div["extractor"].unique()))
    source = ("the suite's frozen teacher's penultimate features" if extractor == "teacher"
              else "the FID Inception-v3 (pool3)" if extractor == "inception" else extractor)
    lines = ["## Diversity and fidelity", "",
             f"Each whole set against the real training images, on {source} ({int(first['feature_dim'])}-d; the "
             "measures of Table 4 of the adaptive-sampling paper). FID and KID (lower is better) against a "
             f"class-balanced sample of {int(first['real_images'])} real images; precision (fidelity), recall, "
             f"density and coverage (diversity; higher is better, k = {int(first['nearest_k'])}) against real "
             "samples of the set's own size and class balance, mean over "
             f"{int(first['real_draws']) if pd.notna(first.get('real_draws')) else 0} draws (standard deviations "
             "in the CSV). Compare within an IPC: every measure depends on the set's size.", ""]
    if extractor != "inception":
        lines.append("- Not Inception features: the FIDs here are not comparable with the Inception FIDs papers "
                     "report, only with each other.")
    if div["fid"].isna().any():
        lines.append(f"- FID –: the set has fewer than {int(div['fid_min_images'].max())} images, the feature "
                     "dimension + 1; with fewer its feature covariance is singular and FID is mostly sample-size "
                     "bias. KID, unbiased at any size, stands in.")
    if div["precision"].isna().any():
        lines.append(f"- precision … coverage –: fewer than k + 2 = {int(div['prdc_min_images'].max())} images.")
    lines += ["", "| method | IPC | images | FID | KID | precision | recall | density | coverage |",
              "|---|---|---|---|---|---|---|---|---|"]
    for _, r in div.iterrows():
        cells = [r["method"], str(r["ipc"]), str(r["images"]), _fmt(r["fid"], ".2f"), _fmt(r["kid"], ".3g")]
        cells += [_fmt(r[name], ".2f") for name in ("precision", "recall", "density", "coverage")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _measured_for(entry, agg: pd.DataFrame, full: pd.DataFrame, measured_as: dict[str, dict[str, str]]):
    """The measured row a reported entry compares with, or None: the full-data row of its student and recipe,
    the better ranked protocol of its setting (best of protocols), or the row of its setting under its protocol.
    The student is, per protocol, the network the papers' name stands for there (`reported.measured_as`)."""
    def student_under(protocol: str) -> str:
        return measured_as.get(entry.student, {}).get(protocol, entry.student)

    def matches(row) -> bool:
        setting = entry.kind == FULL_DATA or (row["method"] == entry.method and row["ipc"] == entry.ipc)
        protocol = _ranked(row["protocol"]) if entry.protocol == BEST_OF_PROTOCOLS else row["protocol"] == entry.protocol
        return setting and protocol and row["student"] == student_under(row["protocol"])

    rows = full if entry.kind == FULL_DATA else agg
    found = [row for _, row in rows.iterrows() if matches(row)]
    return max(found, key=lambda row: row["mean"]) if found else None


def reported_table(reported, agg: pd.DataFrame, full: pd.DataFrame) -> pd.DataFrame:
    """One row per reported entry (harness/config/schema.py `ReportedConfig`): the paper's number, as a fraction like the
    accuracy CSV, beside ddbench's measured mean for the same method, IPC, student and protocol where the board
    has one, and measured − reported. Reported numbers are only ever read here."""
    out = []
    for e in reported.entries:
        m = _measured_for(e, agg, full, reported.measured_as)
        reported_mean = e.accuracy / 100
        out.append({"kind": e.kind, "method": e.method, "ipc": e.ipc, "student": e.student, "protocol": e.protocol,
                    "paper": e.paper, "table": e.table, "reported_mean": reported_mean,
                    "reported_std": math.nan if e.std is None else e.std / 100, "note": e.note,
                    "measured_protocol": None if m is None else m["protocol"],
                    "measured_mean": math.nan if m is None else m["mean"],
                    "measured_std": math.nan if m is None else m["std"],
                    "measured_seeds": 0 if m is None else int(m["seeds"]),
                    "measured_minus_reported": math.nan if m is None else m["mean"] - reported_mean})
    return pd.DataFrame(out)


def _as_printed(percent: float) -> str:
    """A paper's number with the decimals it was printed with: one, unless it has more (69.758)."""
    one = f"{percent:.1f}"
    return one if math.isclose(float(one), percent, abs_tol=1e-9) else f"{percent:.6g}"


def _reported_lines(reported, table: pd.DataFrame, csv_name: str) -> list[str]:
    notes = list(dict.fromkeys(n for n in table["note"] if n))
    lines = ["## Reported by the papers", "",
             "The papers' own numbers (%, mean ± std as their tables print them), copied, not measured by ddbench. "
             "Beside each, ddbench's measured mean for the same method, IPC, student and protocol where this board "
             "has one, and measured − reported in points. They never enter the tables, best-of, full-data row, LRS "
             f"or ARS above; `{csv_name}` has them apart from the measured CSV. {BEST_OF_PROTOCOLS} is the higher of "
             "a paper's evaluations with hard and with soft labels, compared with this board's best-of-protocols "
             "table.", ""]
    lines += [f"- {name}: {ref}" for name, ref in reported.papers.items()]
    lines += [f"- {name} (not implemented in ddbench): {what}" for name, what in reported.not_implemented.items()]
    lines += [f"- {name} (protocol): {what}" for name, what in reported.protocols.items()]
    lines += [f"- {name} (student): {what}" for name, what in reported.students.items()]
    if (table["kind"] == FULL_DATA).any():
        lines.append(f"- Reported {FULL_DATA} rows are shown for reference only: the label-robust score's HLR reads "
                     f"ddbench's measured {FULL_DATA} row alone, never a paper's.")
    lines += [f"- [{i}] {note}" for i, note in enumerate(notes, 1)] + [""]
    for student, part in table.groupby("student", sort=False):
        lines += [f"### {student}", "", "| method | IPC | protocol | reported (paper, table) | measured | "
                  "measured − reported |", "|---|---|---|---|---|---|"]
        for r in part.itertuples():
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
            lines.append(f"| {r.method} | {ipc} | {r.protocol} | {cited} | {measured} | {diff} |")
        lines.append("")
    return lines


def board_order(df: pd.DataFrame, method_order: list[str], students: list[str], protocols: list[str],
                by: tuple[str, ...] = ("method", "student", "protocol", "ipc")) -> pd.DataFrame:
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


FAILED_CHECK_MARK = " ✗"


def mark_failed_checks(agg: pd.DataFrame, manifests: list[Manifest] | None) -> tuple[pd.DataFrame, list[str]]:
    """`agg` with a `backbone_check_failed` column: the rows of sets sampled from a backbone whose check failed
    (run with --accept-failed-check), and the note that explains the mark, if any row has it."""
    failed = {(m.method, m.config_hash, m.ipc) for m in manifests or []
              if m.backbone and m.backbone_check and not m.backbone_check.get("passed", True)}
    if agg.empty or not failed:
        return agg, []
    agg = agg.assign(backbone_check_failed=[k in failed for k in zip(agg["method"], agg["config_hash"], agg["ipc"])])
    checks = {f"{m.backbone_check['agreement']:.1%}" for m in manifests if (m.method, m.config_hash, m.ipc) in failed}
    return agg, [f"{FAILED_CHECK_MARK.strip()}: sampled from a backbone that FAILED its check (teacher agreement "
                 f"{', '.join(sorted(checks))}, below the suite's minimum; run with --accept-failed-check): not a "
                 f"result of the method"]


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
        parts.append(pd.DataFrame({
            "method": lrs["method"], "method_reference": "", "verified": True, "dataset": suite.name,
            "ipc": lrs["ipc"], "label_type": DD_RANKING_LABELS[kind], "recovery": 100 * lrs["hlr"],
            "improvement": 100 * lrs["ior"], "score": 100 * lrs["lrs"], "student": lrs["student"],
            "seeds": lrs["seeds"]}))
    if not parts:
        return pd.DataFrame()
    df = pd.concat(parts, ignore_index=True)
    df = df[df["method"] != baseline]  # the baseline scores against itself: DD-Ranking lists methods only
    finished = [r["finished_at"] for r in rows if "finished_at" in r]
    date = pd.Timestamp(max(finished), unit="s").strftime("%Y-%m-%d") if finished else ""
    df.insert(2, "date", date)
    return df.reset_index(drop=True)


def protocols_note(protocols: dict) -> str:
    """The board's line on how students were trained: each protocol's epochs and student options, and the
    settings a student trains with of its own (a recipe a protocol search published for it)."""
    def setting(name, value):
        return f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}"
    return "protocols: " + "; ".join(
        f"{name}: epochs by IPC {p.epochs}" + (f", student options {p.student_kwargs}" if p.student_kwargs else "")
        + "".join(f", {student} trains with " + " and ".join(setting(*kv) for kv in settings.items())
                  for student, settings in getattr(p, "per_student", {}).items())
        for name, p in protocols.items())


def searched_label(method: str, trials: int) -> str:
    return f"{method}, searched on val ({trials} trials)"


def with_searched_labels(rows: list[dict], current: set[tuple[str, str]], manifests: list[Manifest],
                         method_order: list[str], labels: dict[tuple[str, str], str]):
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


def random_baseline(methods) -> str | None:
    """The suite's method that declares itself DD-Ranking's random real subset."""
    return next((m for m in methods if m in list_methods() and get_method(m).random_baseline), None)


def render(suite, rows: list[dict], current: set[tuple[str, str]], out_dir: Path, method_order: list[str],
           notes: list[str], manifests: list[Manifest] | None = None,
           recipes: set[tuple[str, str]] | None = None) -> tuple[Path, Path]:
    """Write leaderboard/<suite>.md and .csv (accuracy), and, from the `manifests` of the sets on the board,
    the cost table (<suite>-cost.csv) and, where the sets were measured, the diversity table
    (<suite>-diversity.csv). Without manifests the board has the accuracy tables only.

    Only rows of the sets in `current` (method, config hash) and, where given, trained under the `recipes`
    (student, protocol hash) are shown: a store that holds a quick profile's 30-epoch students beside the full
    suite's, or a student's rows from before its recipe was searched, never averages the two into one cell."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = trained_under(rows, recipes)
    students, protocol_names = list(getattr(suite, "students", [])), list(suite.protocols)
    agg, failed_note = mark_failed_checks(board_order(aggregate(rows, current), method_order, students,
                                                      protocol_names), manifests)
    notes = notes + failed_note
    protocols = score_protocols(suite.protocols)
    baseline = random_baseline(suite.methods)
    no_scores = pd.DataFrame()
    lrs = label_robust_scores(rows, current, baseline, protocols["hard"], protocols["soft"]) \
        if baseline and protocols["hard"] else no_scores
    ars = augmentation_robust_scores(rows, current, baseline, protocols["hard"], protocols["no_aug"]) \
        if baseline and protocols["hard"] and protocols["no_aug"] else no_scores
    lrs, ars = (board_order(scores, method_order, students, protocol_names, ("student", "method", "ipc"))
                for scores in (lrs, ars))
    full = agg[agg["method"] == FULL_DATA] if not agg.empty else agg
    agg = agg[agg["method"] != FULL_DATA] if not agg.empty else agg
    csv_path, md_path = out_dir / f"{suite.name}.csv", out_dir / f"{suite.name}.md"
    agg.to_csv(csv_path, index=False, float_format="%.5f")
    if not lrs.empty:
        lrs.to_csv(out_dir / f"{suite.name}-lrs.csv", index=False, float_format="%.5f")
    if not ars.empty:
        ars.to_csv(out_dir / f"{suite.name}-ars.csv", index=False, float_format="%.5f")
    if not lrs.empty:
        board_order(dd_ranking_table(rows, current, suite, baseline, protocols["hard"], protocols["soft"]),
                    method_order, students, protocol_names, ("label_type", "student", "method", "ipc")).to_csv(
            out_dir / f"{suite.name}-dd-ranking.csv", index=False, float_format="%.3f")
    reported = getattr(suite, "reported", None)
    provenance = ("all rows measured by ddbench except those under 'Reported by the papers', copied from papers"
                  if reported else "all rows measured by ddbench, none reported from papers")
    lines = [f"# {suite.name}", "",
             "Test accuracy (%) on the real held-out test set, mean ± sample std over student seeds "
             f"(number of seeds in brackets); {provenance}.", ""]
    lines += [f"- {n}" for n in notes] + [""]
    if agg.empty:
        lines.append("No results yet.")
    else:
        ipcs = sorted(agg["ipc"].unique())
        order = {m: i for i, m in enumerate(method_order)}
        sections = board_order(agg, method_order, students, protocol_names, ("student", "protocol", "method", "ipc"))
        tables = list(sections.groupby(["student", "protocol"], sort=False))
        best = board_order(best_of_protocols(agg), method_order, students, protocol_names, ("student", "method", "ipc"))
        if agg.loc[agg["protocol"].map(_ranked), "protocol"].nunique() > 1:
            tables += [((student, BEST), part) for student, part in best.groupby("student", sort=False)]
        seeds = by_seed(measured_rows(rows, current))
        led = leaders(agg, seeds, CELL)
        led.update({(s, BEST, i): m for (s, i), m in leaders(best, seeds, ["student", "ipc"]).items()})
        lines += [f"A bold cell leads its column by a resolved margin: the {LEVEL:.0%} confidence interval of its "
                  "difference from the runner-up excludes zero (paired t over seeds trained alike, Welch t across "
                  "recipes; harness/report/compare.py). Elsewhere the column's best is within noise of the next.", ""]
        for (student, protocol), part in tables:
            suffix = (lambda r: f" {r['protocol']}") if protocol == BEST else (lambda r: "")
            lines += [f"## {student}, {protocol}", ""]
            lines += _ipc_table(part, ipcs, order, lambda r: format_cell(r["mean"], r["std"], r["seeds"]) + suffix(r),
                                {i: m for (s, p, i), m in led.items() if (s, p) == (student, protocol)})
            lines.append("")
        if not full.empty:
            lines += ["## Full-data reference", "",
                      "Each student trained once on the whole training split (validation images held out) with "
                      f"the {protocols['hard']} recipe.", "", "| student | accuracy |", "|---|---|"]
            lines += [f"| {r.student} | {100 * r.mean:.1f} |" for r in full.itertuples()] + [""]
            adopted = sorted({r["student"] for r in rows if r.get("method") == FULL_DATA and r.get("adopted_from")})
            if adopted:  # measured by an earlier run of the same data and recipe (harness/stages/evaluate.py)
                lines += [f"Taken by this run from the project's committed result store, not trained again: "
                          f"{', '.join(adopted)} (same data, recipe and seed).", ""]
        if not lrs.empty:
            lines += ["## DD-Ranking label-robust score", "",
                      "LRS × 100 (mean ± std over paired seeds, their number in brackets; λ = 0.5, accuracies as "
                      f"fractions): HLR = full data − set ({protocols['hard']}), IOR = set − {baseline} at the same IPC "
                      f"({lrs['ior_protocol'].iloc[0]}). A set with IOR = HLR = 0 scores 26.9; higher is better.", ""]
            for student, part in lrs.groupby("student", sort=False):
                lines += [f"### {student}", ""]
                lines += _ipc_table(part, ipcs, order, lambda r: format_cell(r["lrs"], r["lrs_std"], r["seeds"]))
                lines.append("")
        if not ars.empty:
            lines += ["## DD-Ranking augmentation-robust score", "",
                      "ARS × 100 (mean ± std over paired seeds, their number in brackets; γ = 0.5, accuracies as "
                      f"fractions): the set's lead over {baseline} at the same IPC with augmentation "
                      f"({protocols['hard']}) and without it ({protocols['no_aug']}), weighted equally. Equal to "
                      f"{baseline} on both: 26.9; higher is better.", ""]
            for student, part in ars.groupby("student", sort=False):
                lines += [f"### {student}", ""]
                lines += _ipc_table(part, ipcs, order, lambda r: format_cell(r["ars"], r["ars_std"], r["seeds"]))
                lines.append("")
    if reported:
        table = reported_table(reported, agg, full)
        order = method_order + [m for m in suite.methods if m not in method_order] + list(reported.not_implemented)
        table = board_order(table, order + [FULL_DATA], students, protocol_names,
                            ("student", "method", "ipc", "protocol"))
        csv_name = f"{suite.name}-reported.csv"
        table.to_csv(out_dir / csv_name, index=False, float_format="%.5f")
        lines += _reported_lines(reported, table, csv_name)
    if manifests:
        cost = cost_table(manifests, method_order)
        cost.to_csv(out_dir / f"{suite.name}-cost.csv", index=False, float_format="%.5f")
        lines += _cost_lines(cost)
        div = diversity_table(manifests, method_order)
        if not div.empty:
            div.to_csv(out_dir / f"{suite.name}-diversity.csv", index=False, float_format="%.6g")
            lines += _diversity_lines(div)
    md_path.write_text("\n".join(lines))
    return md_path, csv_path
