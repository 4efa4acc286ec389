"""The static site: one page per suite and an index, drawn from the result store and the sets on disk, opening
from disk with no network. Pages are Jinja2 templates (harness/report/templates/), plots matplotlib figures, image
grids torchvision's `make_grid`; the page's filter and sort script is inlined from templates/site.js.

Layout under the site folder: index.html, <suite>.html, and <suite>/ with plots/*.png, grids/*.png (the first
images of each class of every set, small enough to commit) and summary.json (what the index lists).
"""

from __future__ import annotations

import json
import math
import platform
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jinja2 import Environment, PackageLoader, select_autoescape
from matplotlib.figure import Figure
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torchvision.utils import make_grid

from harness.config.schema import BEST_OF_PROTOCOLS
from harness.core import atomic
from harness.core.identity import FULL_DATA
from harness.core.sets import Manifest
from harness.report.compare import CELL, LEVEL, Difference, by_seed, contests, difference
from harness.report.manifest_tables import cost_table, diversity_table, machine_label
from harness.report.markdown import BEST, format_cell
from harness.report.reported import reported_table
from harness.report.rows import (
    EXTERNAL,
    FAILED_PLOT_LEGEND,
    FAILED_PLOT_MARK,
    FAILED_PLOT_NOTE,
    MEASURED,
    OVERLAP_MARK,
    OVERLAP_NOTE,
    Board,
    best_of_protocols,
    board_order,
    board_rows,
    cell_rows,
    external_label,
    ranked,
)
from methods import get_method, list_methods

GRID_IMAGES = 10  # images per class row of a set's grid: enough to see a set's variety, few enough to commit
GRID_ZOOM = 2  # grids are shown at twice their pixels (drawn pixelated): 28-px images are small
MARKERS = "o^sDvP*Xhp<>"
# The PNG text chunk a grid carries its set's config hash in, so a redraw without the set keeps a grid that is still its
# set's (`_draw_grids`) rather than losing it.
GRID_STAMP = "ddbench:config_hash"


def family(method: str) -> str:
    """The registered method a suite entry runs (its ablation variants share it); the name itself otherwise."""
    return (get_method(method).family or method) if method in list_methods() else method


def _slug(*parts) -> str:
    # Labels such as "d4m, searched on val (20 trials)" become file names and URL fragments: keep them plain.
    return "-".join(re.sub(r"[^A-Za-z0-9._-]+", "_", str(p)).strip("_") for p in parts)


def grid_name(method: str, ipc: int) -> str:
    """The file name of a set's grid (a searched config's by its label: plain, as a URL fragment too)."""
    return f"{_slug(method, 'ipc', ipc)}.png"


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path.name


def _styles(methods: list[str]) -> dict[str, dict]:
    colours = [f"C{i % 10}" for i in range(len(methods))]
    return {m: {"color": c, "marker": MARKERS[i % len(MARKERS)]} for i, (m, c) in enumerate(zip(methods, colours))}


def _failed(df: pd.DataFrame) -> pd.Series:
    """Which rows of a board frame were sampled from a backbone that failed its check (rows.py `mark_failed_checks`)."""
    if "backbone_check_failed" not in df:
        return pd.Series(False, index=df.index)
    return df["backbone_check_failed"].fillna(False).astype(bool)


def _marked(method: str, failed: bool) -> str:
    return f"{method} {FAILED_PLOT_MARK}" if failed else method


def _open_if(failed: bool) -> dict:
    return {"markerfacecolor": "none"} if failed else {}


def _failed_legend(ax):
    """The legend entry that says what an open marker and † mean."""
    return ax.plot(
        [], [], color="grey", marker="o", markerfacecolor="none", linestyle="none", label=FAILED_PLOT_LEGEND
    )[0]


def plot_accuracy_vs_ipc(agg: pd.DataFrame, students: list[str], methods: list[str], path: Path) -> str:
    """A panel per student; a line per method and protocol (line style per protocol), mean ± std over seeds."""
    fig = accuracy_vs_ipc_figure(agg, students, methods)
    fig.savefig(path, dpi=90)
    return path.name


def accuracy_vs_ipc_figure(agg: pd.DataFrame, students: list[str], methods: list[str]) -> Figure:
    """`plot_accuracy_vs_ipc`'s figure. A point sampled from a backbone that failed its check is an open marker, its
    method's legend label carries †, and a legend entry says what they mean (issue 31, item 5)."""
    protocols = list(dict.fromkeys(agg["protocol"]))
    failed = _failed(agg)
    failed_methods = set(agg.loc[failed, "method"])
    dashes = dict(zip(protocols, ["-", "--", ":", "-."] * 3))
    style = _styles(methods)
    fig = Figure(figsize=(4.2 * len(students) + 2.2, 3.8))
    axes = fig.subplots(1, len(students), squeeze=False)[0]
    for ax, student in zip(axes, students):
        part = agg[agg["student"] == student]
        for (method, protocol), line in part.groupby(["method", "protocol"], sort=False):
            line = line.sort_values("ipc")
            ax.errorbar(
                line["ipc"],
                100 * line["mean"],
                yerr=100 * line["std"],
                linestyle=dashes[protocol],
                capsize=2,
                linewidth=1,
                markersize=3,
                **style[method],
            )
            if (bad := _failed(line)).any():  # open markers over the failed points
                ax.plot(
                    line.loc[bad, "ipc"],
                    100 * line.loc[bad, "mean"],
                    linestyle="none",
                    markersize=6,
                    markerfacecolor="white",
                    markeredgecolor=style[method]["color"],
                    marker=style[method]["marker"],
                    zorder=3,
                )
        ax.set_xscale("log")
        ipcs = sorted(agg["ipc"].unique())
        ax.set_xticks(ipcs, [str(i) for i in ipcs])
        ax.set_xlabel("images per class")
        ax.set_title(student, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    handles = [
        axes[0].plot(
            [],
            [],
            label=_marked(m, m in failed_methods),
            **style[m],
            **({"markerfacecolor": "none"} if m in failed_methods else {}),
        )[0]
        for m in methods
        if m in set(agg["method"])
    ]
    handles += [axes[0].plot([], [], color="grey", linestyle=dashes[p], label=p)[0] for p in protocols]
    if failed_methods:
        handles.append(_failed_legend(axes[0]))
    fig.legend(handles=handles, loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
    return fig


def pareto_front(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both cost (lower) and accuracy (higher), cheapest first."""
    front, best = [], -math.inf
    for i in np.lexsort((-accuracy, cost)):
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return np.array(front, dtype=int)


def _per_ipc_panels(points: pd.DataFrame, x: str, xlabel: str, student: str, path: Path, log: bool, front: bool) -> str:
    return _save(per_ipc_figure(points, x, xlabel, student, log, front), path)


def per_ipc_figure(points: pd.DataFrame, x: str, xlabel: str, student: str, log: bool, front: bool) -> Figure:
    """A panel per IPC of `points` (x against best-of-protocols accuracy), each labelled by method, with the Pareto
    front where `front`. A set sampled from a backbone that failed its check is an open marker labelled with †, and
    stays off the front: it is not a result of the method (issue 31, item 5)."""
    ipcs = sorted(points["ipc"].unique())
    fig = Figure(figsize=(4.0 * len(ipcs), 3.6))
    axes = fig.subplots(1, len(ipcs), squeeze=False)[0]
    style = _styles(list(dict.fromkeys(points["method"])))
    for ax, ipc in zip(axes, ipcs):
        part = points[points["ipc"] == ipc]
        bad = _failed(part)
        for r, failed in zip(part.itertuples(), bad):
            colour, marker = style[r.method]["color"], style[r.method]["marker"]
            ax.scatter(
                getattr(r, x),
                100 * r.mean,
                s=18,
                marker=marker,
                **({"facecolors": "none", "edgecolors": colour} if failed else {"color": colour}),
            )
            ax.annotate(
                _marked(r.method, failed),
                (getattr(r, x), 100 * r.mean),
                fontsize=6,
                xytext=(3, 2),
                textcoords="offset points",
            )
        if bad.any():
            _failed_legend(ax)
        ok = part[~bad]
        if front and len(ok):
            idx = pareto_front(ok[x].to_numpy(float), ok["mean"].to_numpy(float))
            ax.step(
                ok[x].to_numpy()[idx],
                100 * ok["mean"].to_numpy()[idx],
                where="post",
                color="black",
                linewidth=0.8,
                alpha=0.6,
                label="Pareto front",
            )
        if (front and len(ok)) or bad.any():
            ax.legend(fontsize=7, loc="best")
        if log:
            ax.set_xscale("log")
        ax.set_title(f"IPC {ipc}", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{student}: best-of-protocols accuracy (%)")
    return fig


def plot_heatmap(table: pd.DataFrame, path: Path) -> str:
    """The cross-architecture study's teacher × student mean accuracy (its CSV, harness/stages/cross_arch.py)."""
    mean = table.pivot(index="teacher", columns="student", values="mean")
    fig = Figure(figsize=(1.8 + 1.3 * mean.shape[1], 1.4 + 0.55 * mean.shape[0]))
    ax = fig.subplots()
    image = ax.imshow(100 * mean.to_numpy(float), cmap="viridis")
    ax.set_xticks(range(mean.shape[1]), mean.columns, rotation=30, ha="right")
    ax.set_yticks(range(mean.shape[0]), mean.index)
    for (i, j), v in np.ndenumerate(100 * mean.to_numpy(float)):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="white", fontsize=8)
    ax.set_xlabel("student")
    ax.set_ylabel("teacher (soft labels)")
    fig.colorbar(image, ax=ax, fraction=0.046, label="test accuracy (%)")
    return _save(fig, path)


def draw_grid(manifest: Manifest, path: Path, per_class: int = GRID_IMAGES) -> None:
    """A row per class (the suite's order), its first `per_class` images (fewer at a smaller IPC), as one PNG."""
    per_class = min(per_class, manifest.ipc)
    rows = []
    for key in manifest.classes:
        files = sorted((Path(manifest.path) / key).glob("*.png"))[:per_class]
        images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        row = torch.zeros(per_class, *images[0].shape, dtype=torch.uint8) + 255 if images else None
        for i, a in enumerate(images):
            row[i] = torch.from_numpy(a.copy())
        if row is not None:
            rows.append(row)
    tensor = torch.cat(rows).permute(0, 3, 1, 2).float() / 255
    grid = make_grid(tensor, nrow=per_class, padding=1, pad_value=1.0)
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    grey = bool((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all())
    _save_stamped(Image.fromarray(array[..., 0] if grey else array), path, manifest.config_hash)


def _save_stamped(image: Image.Image, path: Path, config_hash: str) -> None:
    info = PngInfo()
    info.add_text(GRID_STAMP, config_hash)
    image.save(path, optimize=True, pnginfo=info)


def grid_stamp(path: Path) -> str | None:
    """The config hash a grid PNG was stamped with (`draw_grid`), or None (unstamped, unreadable, absent)."""
    try:
        with Image.open(path) as img:
            return getattr(img, "text", {}).get(GRID_STAMP)
    except (OSError, ValueError):
        return None


def stamp_grid(path: Path, config_hash: str) -> None:
    """Stamp an existing grid PNG with its set's config hash, its pixels unchanged (the migration of grids drawn
    before grids were stamped: scripts/redraw_board.py --stamp-existing-grids)."""
    with Image.open(path) as img:
        img.load()
        image = img.copy()
    _save_stamped(image, path, config_hash)


def _env() -> Environment:
    return Environment(
        loader=PackageLoader("harness.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _label(r: dict) -> str:
    """A cell's row label: the method, or an external set's name, source hash and overlap mark."""
    return (
        external_label(r["method"], r["config_hash"], int(r.get("overlap") or 0))
        if r["kind"] == EXTERNAL
        else r["method"]
    )


def _cells(
    cells: pd.DataFrame,
    seeds: dict,
    order: list[str],
    students: list[str],
    protocols: list[str],
    grids: dict,
) -> list[dict]:
    """The flat table's rows: one per (student, protocol, IPC, method or external set) cell, its resolved leader
    marked."""
    led = {key: first["method"] for key, (first, _, d) in contests(cells, seeds, CELL).items() if d.resolved}
    out = []
    for r in board_order(cells, order, students, protocols, ("student", "protocol", "ipc", "method")).to_dict(
        "records"
    ):
        out.append(
            {
                "method": _label(r),
                "family": EXTERNAL if r["kind"] == EXTERNAL else family(r["method"]),
                "student": r["student"],
                "protocol": r["protocol"],
                "ipc": int(r["ipc"]),
                "mean": 100 * r["mean"],
                "seeds": int(r["seeds"]),
                "cell": format_cell(r["mean"], r["std"], r["seeds"]),
                "seconds_per_image": r.get("seconds_per_image", math.nan),
                "leader": led.get((r["student"], r["protocol"], r["ipc"])) == r["method"],
                "failed_check": bool(r.get("backbone_check_failed")),
                "grid": grids[(r["method"], r["ipc"])]["anchor"] if (r["method"], r["ipc"]) in grids else None,
            }
        )
    return out


def _interval(d: Difference, other: str) -> str:
    """A difference in points with its interval, against `other`, as a cell says it."""
    if math.isnan(d.low):
        return f"{100 * d.mean:+.1f} vs {other} ({d.test})"
    return f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] vs {other} ({d.test})"


def _reported_in(reported, student: str, protocol: str, protocols: list[str]) -> list:
    """The papers' entries (not full data) a matrix of `student` under `protocol` shows: those of its protocol (the
    best-of matrix: those a paper took the better of its evaluations for), whose student is `student` under it (a
    paper's name stands for the network `reported.measured_as` says)."""
    if reported is None:
        return []
    under = [p for p in protocols if ranked(p)] if protocol == BEST else [protocol]
    wanted = BEST_OF_PROTOCOLS if protocol == BEST else protocol
    return [
        e
        for e in reported.entries
        if e.kind != FULL_DATA
        and e.protocol == wanted
        and any(reported.measured_as.get(e.student, {}).get(p, e.student) == student for p in under)
    ]


def _matrices(board: Board, seeds: dict, grids: dict, reported, students: list[str]) -> list[dict]:
    """The site's first view, as papers print it: per student and protocol (and, where more than one protocol is
    ranked, per student the best of protocols), a methods × IPC matrix in three groups: measured by ddbench, made
    elsewhere and evaluated by ddbench, reported by the papers. A column's resolved leader is starred (the one
    rule of harness/report/compare.py); its top cell shows its interval against the runner-up, every other cell
    (on hover) its interval against the top; a cell opens its set's grid."""
    cells = board.cells()
    if cells.empty:
        return []
    cells = cells[cells["student"].isin(students)]
    views = list(
        board.ordered(cells, ("student", "protocol", "method", "ipc")).groupby(["student", "protocol"], sort=False)
    )
    contest = dict(contests(cells, seeds, CELL))
    best = board.ordered(best_of_protocols(cells), ("student", "method", "ipc"))
    if cells.loc[cells["protocol"].map(ranked), "protocol"].nunique() > 1:
        views += [((student, BEST), part) for student, part in best.groupby("student", sort=False)]
        contest.update({(s, BEST, i): c for (s, i), c in contests(best, seeds, ["student", "ipc"]).items()})
    out = []
    for (student, protocol), part in views:
        papers = _reported_in(reported, student, protocol, board.protocols)
        ipcs = sorted({int(i) for i in part["ipc"]} | {e.ipc for e in papers})
        groups = []
        for kind, title in ((MEASURED, "measured by ddbench"), (EXTERNAL, "made elsewhere, evaluated by ddbench")):
            group = part[part["kind"] == kind]
            rows = []
            for method in dict.fromkeys(group["method"]):
                mine = {int(r["ipc"]): r for r in group[group["method"] == method].to_dict("records")}
                row = {"label": _label(next(iter(mine.values()))), "cells": []}
                for ipc in ipcs:
                    r = mine.get(ipc)
                    row["cells"].append(None if r is None else _matrix_cell(r, protocol, contest, seeds, grids))
                rows.append(row)
            if rows:
                groups.append({"kind": kind, "title": title, "rows": rows})
        if papers:
            rows = {}
            for e in papers:
                row = rows.setdefault(e.method, {"label": e.method, "cells": {}})
                spread = "" if e.std is None else f" ± {e.std:.1f}"
                row["cells"][e.ipc] = {
                    "text": f"{e.accuracy:.1f}{spread}",
                    "title": f"{e.paper}, {e.table}; {e.student}",
                }
            groups.append(
                {
                    "kind": "reported",
                    "title": "reported by the papers (copied, not measured; never starred)",
                    "rows": [{**r, "cells": [r["cells"].get(i) for i in ipcs]} for r in rows.values()],
                }
            )
        full = board.full[board.full["student"] == student] if len(board.full) else board.full
        out.append(
            {
                "student": student,
                "protocol": protocol,
                "ipcs": ipcs,
                "groups": groups,
                "id": _slug("matrix", student, protocol),
                # the papers' "whole dataset" column: the student trained on the full training split
                "full": None
                if full.empty
                else format_cell(full.iloc[0]["mean"], full.iloc[0]["std"], full.iloc[0]["seeds"]),
            }
        )
    return out


def _matrix_cell(r: dict, protocol: str, contest: dict, seeds: dict, grids: dict) -> dict:
    """One matrix cell: mean ± std (seeds), the protocol it took in a best-of matrix, its star where it leads by a
    resolved margin, its interval against the runner-up (the top cell) or against the top (every other), the
    measured − reported of an external set whose paper prints a number, and its set's grid."""
    text = format_cell(r["mean"], r["std"], r["seeds"]) + (f" {r['protocol']}" if protocol == BEST else "")
    first, second, d = contest.get((r["student"], protocol, r["ipc"]), (None, None, None))
    top = first is not None and first["method"] == r["method"]
    if first is None:
        vs = "alone in its column"
    elif top:
        vs = _interval(d, second["method"])
    else:

        def accuracies(x):
            return seeds.get((x["method"], x["student"], x["protocol"], x["ipc"]), {})

        vs = _interval(
            difference(accuracies(r), accuracies(first), paired=r["protocol"] == first["protocol"]), first["method"]
        )
    reported = r.get("reported_accuracy")
    paper = (
        f"reported {100 * reported:.1f}, measured − reported {100 * (r['mean'] - reported):+.1f}"
        if r["kind"] == EXTERNAL and reported is not None and not math.isnan(reported)
        else ""
    )
    return {
        "text": text,
        "leader": top and d.resolved,
        "top": top,
        "vs": vs,
        "paper": paper,
        "overlap": int(r.get("overlap") or 0) if r["kind"] == EXTERNAL else 0,
        "failed_check": bool(r.get("backbone_check_failed")),
        "grid": grids[(r["method"], r["ipc"])]["anchor"] if (r["method"], r["ipc"]) in grids else None,
    }


def _plots(
    agg: pd.DataFrame,
    students: list[str],
    methods: list[str],
    manifests: list[Manifest],
    order: list[str],
    cross: Path,
    folder: Path,
) -> list[tuple[str, str, str]]:
    """(title, caption, file name) of every plot the data allows, drawn into `folder`."""
    plots = []
    if not agg.empty:
        # Sets sampled from a backbone that failed its check: open markers with †, said in every caption.
        failed = f" Open markers, † after the method: {FAILED_PLOT_NOTE[3:]}." if _failed(agg).any() else ""
        plots.append(
            (
                "Accuracy against images per class",
                "One panel per student; a line per method and protocol, mean ± std over seeds." + failed,
                plot_accuracy_vs_ipc(agg, students, methods, folder / "accuracy-vs-ipc.png"),
            )
        )
        best = best_of_protocols(agg)
        main = max(students, key=lambda s: (best["student"] == s).sum())  # the student most cells were trained on
        best = best[best["student"] == main]
        cost = cost_table(manifests, order)[["method", "ipc", "seconds_per_image"]] if manifests else pd.DataFrame()
        points = best.drop(columns="seconds_per_image").merge(cost, on=["method", "ipc"]) if manifests else cost
        if not points.empty and (points["seconds_per_image"] > 0).any():
            plots.append(
                (
                    "Accuracy against cost",
                    "Seconds of distillation per image (log scale) against "
                    f"{main}'s best-of-protocols accuracy; the line is the Pareto front (no other set is both "
                    "cheaper and more accurate). Costs compare only between like machines."
                    + (failed and failed[:-1] + ", kept off the Pareto front."),
                    _per_ipc_panels(
                        points[points["seconds_per_image"] > 0],
                        "seconds_per_image",
                        "seconds per distilled image",
                        main,
                        folder / "cost.png",
                        log=True,
                        front=True,
                    ),
                )
            )
        div = diversity_table(manifests, order) if manifests else pd.DataFrame()
        points = (
            best.merge(div[["method", "ipc", "coverage"]], on=["method", "ipc"]).dropna(subset=["coverage"])
            if not div.empty
            else div
        )
        if not points.empty:
            plots.append(
                (
                    "Diversity against accuracy",
                    "Each set's coverage of the real data (its diversity, "
                    "harness/stages/diversity.py; higher is more diverse) against "
                    f"{main}'s best-of-protocols accuracy." + failed,
                    _per_ipc_panels(
                        points, "coverage", "coverage", main, folder / "diversity.png", log=False, front=False
                    ),
                )
            )
    if cross.exists():
        plots.append(
            (
                "Cross-architecture study",
                "Students (columns) trained on one set with each teacher (rows) as "
                "the source of soft labels, mean test accuracy (%) over seeds (`--cross-arch`).",
                plot_heatmap(pd.read_csv(cross), folder / "cross-arch.png"),
            )
        )
    return plots


def _draw_grids(manifests: list[Manifest], folder: Path, suite_name: str) -> dict[tuple[str, int], dict]:
    """(method, IPC) → the page's entry for the grid of each set: drawn into `folder` from a set still on disk, or,
    for a set not on disk, the grid already there when it is stamped with the set's config hash (a board redrawn
    from the sets' recorded manifests keeps their grids). Any other PNG in `folder` is removed: a set no longer on
    the board, or a grid of another config of it, leaves no stale file."""
    grids = {}
    for m in manifests:
        path = folder / grid_name(m.method, m.ipc)
        if m.on_disk:
            draw_grid(m, path)
        elif grid_stamp(path) != m.config_hash:
            continue
        with Image.open(path) as img:
            size = (GRID_ZOOM * img.width, GRID_ZOOM * img.height)
        grids[(m.method, m.ipc)] = {
            "anchor": f"set-{path.stem}",
            "size": size,
            "src": f"{suite_name}/grids/{path.name}",
            "method": m.method,
            "ipc": m.ipc,
            "images": m.images,
            "classes": m.classes,
            "config_hash": m.config_hash,
            "shown": min(m.ipc, GRID_IMAGES),
        }
    shown = {Path(g["src"]).name for g in grids.values()}
    for old in folder.glob("*.png"):
        if old.name not in shown:
            old.unlink()
    return grids


def recorded_versions(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """The distinct library versions the rows were made with, and apart from them the ddbench commits (one per
    commit would otherwise repeat the same libraries on a line each)."""
    libraries = {
        json.dumps({k: v for k, v in r["versions"].items() if k != "ddbench"}, sort_keys=True)
        for r in rows
        if r.get("versions")
    }
    commits = {r["versions"]["ddbench"] for r in rows if (r.get("versions") or {}).get("ddbench")}
    return [json.loads(v) for v in sorted(libraries)], sorted(commits)


def build_site(
    suite,
    rows: list[dict],
    current,
    site_dir: Path,
    method_order: list[str],
    notes: list[str],
    manifests: list[Manifest] | None,
    board_dir: Path,
    command: str,
    recipes: set[tuple[str, str]] | None = None,
    external_sets: list[Manifest] | None = None,
) -> Path:
    """Write <site_dir>/<suite>.html (with its plots and grids) and redraw the index; returns the page.
    The rows shown are the board's (harness/report/rows.py `board_rows`): current configurations, current recipes.
    `external_sets` are the manifests of the external sets in the store's set folders (`ddbench evaluate`): their
    grids are drawn and their cells open them; they have no cost or diversity of ours."""
    site_dir, manifests = Path(site_dir), manifests or []
    assets = site_dir / suite.name
    for sub in ("plots", "grids"):
        (assets / sub).mkdir(parents=True, exist_ok=True)
    for old in (assets / "plots").glob("*.png"):  # a plot no longer drawn leaves no stale file (grids: _draw_grids)
        old.unlink()
    board = board_rows(suite, rows, current, method_order, manifests, recipes)
    rows, agg, full, protocol_names = board.rows, board.agg, board.full, board.protocols
    cells = board.cells()
    seeds = by_seed(cell_rows(rows, current))
    present = set(cells["student"]) if not cells.empty else set()
    # the site's filters and panels list only the students that have cells
    students = [s for s in board.students if s in present] + sorted(present - set(board.students))
    methods = [m for m in method_order if not agg.empty and m in set(agg["method"])]

    grids = _draw_grids(manifests + list(external_sets or []), assets / "grids", suite.name)
    table = _cells(cells, seeds, method_order, students, protocol_names, grids) if not cells.empty else []
    reported = getattr(suite, "reported", None)
    matrices = _matrices(board, seeds, grids, reported, students)
    plots = [
        (title, text, f"{suite.name}/plots/{name}")
        for title, text, name in _plots(
            agg,
            students,
            methods,
            manifests,
            method_order,
            Path(board_dir) / f"{suite.name}-cross-arch.csv",
            assets / "plots",
        )
    ]
    reported_rows = reported_table(reported, agg, full).to_dict("records") if reported and not agg.empty else []
    external = board.external.to_dict("records")
    if any(r["overlap"] for r in external):
        notes = [*notes, OVERLAP_NOTE]
    versions, commits = recorded_versions(rows)
    machines = sorted(set(cost_table(manifests, method_order).apply(machine_label, axis=1))) if manifests else []
    filters = {
        "student": students,
        "protocol": list(dict.fromkeys(r["protocol"] for r in table)),
        "ipc": sorted({r["ipc"] for r in table}),
        "family": list(dict.fromkeys(r["family"] for r in table)),
    }
    env = _env()
    style, script = (env.loader.get_source(env, name)[0] for name in ("site.css", "site.js"))
    page = site_dir / f"{suite.name}.html"
    atomic.write_text(
        page,
        env.get_template("suite.html.j2").render(
            suite=suite.name,
            table=table,
            matrices=matrices,
            external=external,
            overlap_mark=OVERLAP_MARK.strip(),
            filters=filters,
            plots=plots,
            sets=list(grids.values()),
            notes=notes + board.failed_note,
            full=full.to_dict("records"),
            reported=reported_rows,
            versions=versions,
            commits=commits,
            machines=machines,
            command=command,
            level=f"{LEVEL:.0%}",
            drawn_on=f"Python {platform.python_version()} on {platform.platform()}",
            script=script,
            style=style,
        ),
    )
    summary = {
        "suite": suite.name,
        "page": page.name,
        "methods": len(methods),
        "students": students,
        "cells": len(table),
        "sets": len(grids),
        "drawn": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    atomic.write_json(assets / "summary.json", summary, indent=1)
    suites = [json.loads(p.read_text()) for p in sorted(site_dir.glob("*/summary.json"))]
    atomic.write_text(site_dir / "index.html", env.get_template("index.html.j2").render(suites=suites, style=style))
    return page
