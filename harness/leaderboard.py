"""Leaderboard: the result store's rows, aggregated over seeds, as Markdown and CSV.

Only rows of the configurations the suite defines now are shown (an old config's rows stay in the store
but would mix two experiments). Rows copied from papers carry kind "reported" and are never averaged with
measured ones.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

GROUP = ["method", "config_hash", "ipc", "student", "protocol"]


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
    """Per (method, config, IPC, student), the protocol with the higher mean accuracy — how the papers
    report a setting."""
    idx = agg.groupby(["method", "config_hash", "ipc", "student"], sort=False)["mean"].idxmax()
    return agg.loc[idx.values]


def label_robust_scores(rows: list[dict], current: set[tuple[str, str]] | None = None, lam: float = 0.5,
                        baseline: str = "random-real", full_data: str = "full-data") -> pd.DataFrame:
    """DD-Ranking's label-robust score of every (method, IPC, student), per seed, on accuracies as fractions.

    HLR = acc(full data, hard) − acc(set, hard); IOR = acc(set, soft) − acc(`baseline` at the same IPC, soft);
    LRS = (exp(λ·IOR − (1 − λ)·HLR) − e⁻¹) / (e − e⁻¹), in [0, 1]. Seed i of the method is paired with seed i
    of the baseline. Without a soft-label protocol, IOR compares hard-label accuracies (said in the table).
    """
    df = measured_rows(rows, current)
    if df.empty:
        return df
    full = df[df["method"] == full_data].groupby("student")["accuracy"].mean()
    df = df[df["method"] != full_data]
    soft = "soft-label" if (df["protocol"] == "soft-label").any() else "hard-label"
    acc = df.set_index(["method", "ipc", "student", "protocol", "seed"])["accuracy"]
    acc = acc[~acc.index.duplicated(keep="last")]
    out = []
    for (method, ipc, student), _ in df.groupby(["method", "ipc", "student"], sort=False):
        if student not in full.index:
            continue
        scores = []
        for seed in sorted(df["seed"].unique()):
            keys = [(method, ipc, student, "hard-label", seed), (method, ipc, student, soft, seed),
                    (baseline, ipc, student, soft, seed)]
            if all(k in acc.index for k in keys):
                hard, syn, rand = (float(acc[k]) for k in keys)
                hlr, ior = full[student] - hard, syn - rand
                alpha = lam * ior - (1 - lam) * hlr
                scores.append(((math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)), hlr, ior))
        if scores:
            arr = pd.DataFrame(scores, columns=["lrs", "hlr", "ior"])
            out.append({"method": method, "ipc": ipc, "student": student, "ior_protocol": soft,
                        "lrs": arr["lrs"].mean(), "lrs_std": arr["lrs"].std(ddof=1) if len(arr) > 1 else 0.0,
                        "hlr": arr["hlr"].mean(), "ior": arr["ior"].mean(), "seeds": len(arr)})
    return pd.DataFrame(out)


def _cell(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f} ({n})"


def render(suite, rows: list[dict], current: set[tuple[str, str]], out_dir: Path, method_order: list[str],
           notes: list[str]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(rows, current)
    lrs = label_robust_scores(rows, current)
    full = agg[agg["method"] == "full-data"] if not agg.empty else agg
    agg = agg[agg["method"] != "full-data"] if not agg.empty else agg
    csv_path, md_path = out_dir / f"{suite.name}.csv", out_dir / f"{suite.name}.md"
    agg.to_csv(csv_path, index=False, float_format="%.5f")
    if not lrs.empty:
        lrs.to_csv(out_dir / f"{suite.name}-lrs.csv", index=False, float_format="%.5f")
    lines = [f"# {suite.name}", "",
             "Test accuracy (%) on the real held-out test set, mean ± sample std over student seeds "
             "(number of seeds in brackets); all rows measured by ddbench, none reported from papers.", ""]
    lines += [f"- {n}" for n in notes] + [""]
    if agg.empty:
        lines.append("No results yet.")
    else:
        ipcs = sorted(agg["ipc"].unique())
        order = {m: i for i, m in enumerate(method_order)}
        tables = list(agg.groupby(["student", "protocol"], sort=False))
        best = best_of_protocols(agg)
        if agg["protocol"].nunique() > 1:
            tables += [((student, "best of protocols"), part) for student, part in best.groupby("student", sort=False)]
        for (student, protocol), part in tables:
            lines += [f"## {student}, {protocol}", "", "| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |",
                      "|---|" + "---|" * len(ipcs)]
            for method in sorted(part["method"].unique(), key=lambda m: order.get(m, math.inf)):
                cells = []
                for ipc in ipcs:
                    r = part[(part["method"] == method) & (part["ipc"] == ipc)]
                    cell = _cell(r["mean"].iloc[0], r["std"].iloc[0], r["seeds"].iloc[0]) if len(r) else "–"
                    if len(r) and protocol == "best of protocols":
                        cell += f" {r['protocol'].iloc[0]}"
                    cells.append(cell)
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
        if not full.empty:
            lines += ["## Full-data reference", "",
                      "Each student trained once on the whole training split (validation images held out) with "
                      "the hard-label recipe.", "", "| student | accuracy |", "|---|---|"]
            lines += [f"| {r.student} | {100 * r.mean:.1f} |" for r in full.itertuples()] + [""]
        if not lrs.empty:
            lines += ["## DD-Ranking label-robust score", "",
                      f"LRS × 100 (mean ± std over paired seeds; λ = 0.5, accuracies as fractions): HLR = full data "
                      f"− set (hard-label), IOR = set − random-real at the same IPC ({lrs['ior_protocol'].iloc[0]}). "
                      "A set with IOR = HLR = 0 scores 26.9; higher is better.", ""]
            for student, part in lrs.groupby("student", sort=False):
                lines += [f"### {student}", "", "| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |",
                          "|---|" + "---|" * len(ipcs)]
                for method in sorted(part["method"].unique(), key=lambda m: order.get(m, math.inf)):
                    cells = []
                    for ipc in ipcs:
                        r = part[(part["method"] == method) & (part["ipc"] == ipc)]
                        cells.append(f"{100 * r['lrs'].iloc[0]:.1f} ± {100 * r['lrs_std'].iloc[0]:.1f}" if len(r)
                                     else "–")
                    lines.append(f"| {method} | " + " | ".join(cells) + " |")
                lines.append("")
        lines += ["## Cost of distillation", "",
                  "Seconds per distilled image and peak memory of the process that made it (CPU: process peak "
                  "RSS; GPU: peak allocated CUDA memory).", "",
                  "| method | " + " | ".join(f"IPC {i} s/img" for i in ipcs) + " | peak memory (MB) |",
                  "|---|" + "---|" * (len(ipcs) + 1)]
        cost = agg.drop_duplicates(["method", "ipc"])
        for method in sorted(cost["method"].unique(), key=lambda m: order.get(m, math.inf)):
            part = cost[cost["method"] == method]
            cells = []
            for ipc in ipcs:
                r = part[part["ipc"] == ipc]
                cells.append(f"{r['seconds_per_image'].iloc[0]:.3f}" if len(r) else "–")
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {part['peak_memory_mb'].max():.0f} |")
        lines.append("")
    md_path.write_text("\n".join(lines))
    return md_path, csv_path
