"""The per-set tables the sets' manifests give: what each set cost to distil (time, memory, the share of each named
stage, the machine) and, where the sets were measured, their diversity and fidelity (harness/stages/diversity.py).
One row per set, methods in the run's order."""

from __future__ import annotations

import math

import pandas as pd

from harness.core.sets import Manifest

DIVERSITY_MEASURES = ["fid", "kid", "precision", "recall", "density", "coverage"]


def _sorted_by_method(df: pd.DataFrame, method_order: list[str]) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(method_order)}
    key = df["method"].map(lambda m: order.get(m, math.inf))
    return df.assign(_order=key).sort_values(["_order", "ipc"], kind="stable").drop(columns="_order")


def cost_table(manifests: list[Manifest], method_order: list[str]) -> pd.DataFrame:
    """One row per set: seconds per distilled image, peak memory and the seconds and share of each named
    stage (stage_<name>_seconds, stage_<name>_share), as the manifests record them."""
    out = []
    for m in manifests:
        row = {
            "method": m.method,
            "config_hash": m.config_hash,
            "ipc": m.ipc,
            "images": m.images,
            "distill_seconds": m.distill_seconds,
            "seconds_per_image": m.seconds_per_image,
            "peak_memory_mib": m.peak_memory_bytes / 2**20,
            "peak_memory_kind": m.peak_memory_kind,
            # sets made before the machine was recorded say so rather than borrow this run's machine
            "device": m.device or "unrecorded",
            "cpu": m.cpu or "unrecorded",
            "torch_threads": "unrecorded" if m.torch_threads is None else str(m.torch_threads),
        }
        if m.fine_tune:  # a cost paid once per fine-tuned backbone, beside the per-set costs
            row["fine_tune_seconds"] = m.fine_tune["seconds"]
            row["fine_tune_peak_memory_mib"] = m.fine_tune["peak_memory_bytes"] / 2**20
        for stage, seconds in (m.stage_seconds or {}).items():
            row[f"stage_{stage}_seconds"] = seconds
            row[f"stage_{stage}_share"] = seconds / m.distill_seconds if m.distill_seconds > 0 else math.nan
        out.append(row)
    return _sorted_by_method(pd.DataFrame(out), method_order).reset_index(drop=True)


def machine_label(row) -> str:
    """The machine a `cost_table` row's set was made on, as one label."""
    threads = "" if row["torch_threads"] == "unrecorded" else f", {row['torch_threads']} torch thread(s)"
    return f"{row['device']} (host {row['cpu']}{threads})" if row["device"] != "cpu" else f"cpu ({row['cpu']}{threads})"


def diversity_table(manifests: list[Manifest], method_order: list[str]) -> pd.DataFrame:
    """One row per measured set: its diversity entry (see harness/stages/diversity.py) beside its identity."""
    out = [
        {"method": m.method, "config_hash": m.config_hash, "ipc": m.ipc, **m.diversity}
        for m in manifests
        if m.diversity
    ]
    if not out:
        return pd.DataFrame()
    return _sorted_by_method(pd.DataFrame(out), method_order).reset_index(drop=True)
