"""Redraw the published fashion-mnist board (leaderboard/: the board's tables and its site) without the sets it shows.

    python scripts/redraw_board.py [--sets RUN_DIR ...] [--store STORE] [--board DIR] [--stamp-existing-grids]

The board is the pipeline's own (harness/pipeline.py `Run.board`, `make` False: nothing is distilled, measured
again or trained) for the `leaderboard` profile on ConvNet-3's students list, as the published board was drawn
(`--profile leaderboard --students convnet3 --site`), over the result store `--store` (default: the committed
leaderboard/results/fashion-mnist.jsonl). Its current sets, searched labels, notes and recipes are the Run's. Each
current set is shown

- from a `RUN_DIR`'s set on disk (`RUN_DIR/distilled/<suite>/<method>/<hash>/ipc<k>/manifest.json`), copied into a
  scratch folder first (the run folder is only read; its measures are cached there as in any run), else
- from what the board in `--board` records about it: a manifest rebuilt from its rows of the committed cost and
  diversity tables (same method or searched label, config hash and IPC), so a set no longer on disk keeps its cost,
  diversity and grid (its grid is kept when stamped with the set's config hash: harness/report/site.py), else
- not at all (a current set never made: its cells are those the store has, without cost or grid).

The Run's caches (the backbone checks, the fine-tuned backbones, the teacher's validation accuracy, the diversity
reference) are copied from the RUN_DIRs, so the notes are the ones a run there would write; the backbone and teacher
are the committed weights (weights/fashion-mnist/).

`--stamp-existing-grids` (a one-time migration, before the redraw): stamps each grid PNG under `--board`'s site
whose set's config hash is current (known from the board's cost table), so the redraw keeps it; a grid of a set
whose hash changed stays unstamped and is removed unless that set is on disk.
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.config.loader import load_suite  # noqa: E402
from harness.core.sets import MANIFEST, Manifest  # noqa: E402
from harness.models.data import load_real_data  # noqa: E402
from harness.pipeline import Run  # noqa: E402
from harness.report.markdown import _fmt  # noqa: E402
from harness.report.site import grid_name, grid_stamp, stamp_grid  # noqa: E402

SUITE, PROFILE, STUDENTS = "fashion-mnist", "leaderboard", ["convnet3"]
# Columns of the cost table that are no stage's (harness/report/manifest_tables.py `cost_table`).
TEXT = {c: str for c in ("method", "config_hash", "peak_memory_kind", "device", "cpu", "torch_threads")}


def _value(v):
    """A CSV cell as the manifest held it: an empty cell is None."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def recorded_manifests(board: Path, run: Run, classes: list[str]) -> list[Manifest]:
    """The manifests the board's cost and diversity tables record, for the Run's current sets (searched labels
    mapped back to their method), as `cost_table` and `diversity_table` would write them again: the inverse of
    both. Seeds, config and checksums are in neither table: they stay empty (no table shows them)."""
    cost_csv, div_csv = board / f"{SUITE}-cost.csv", board / f"{SUITE}-diversity.csv"
    if not cost_csv.exists():
        return []
    cost = pd.read_csv(cost_csv, dtype=TEXT)
    div = pd.read_csv(div_csv, dtype={"method": str, "config_hash": str}) if div_csv.exists() else pd.DataFrame()
    measures = {
        (r["method"], r["config_hash"], int(r["ipc"])): {
            k: _value(v) for k, v in r.items() if k not in ("method", "config_hash", "ipc")
        }
        for r in div.to_dict("records")
    }
    unlabel = {(label, h): method for (method, h), label in run.labels.items()}
    current = {(j.method, j.config_hash) for j in run.jobs}
    stages = [
        c[len("stage_") : -len("_seconds")] for c in cost.columns if c.startswith("stage_") and c.endswith("_seconds")
    ]
    out = []
    for r in cost.to_dict("records"):
        method = unlabel.get((r["method"], r["config_hash"]), r["method"])
        if (method, r["config_hash"]) not in current:
            continue
        ft = _value(r.get("fine_tune_seconds"))
        out.append(
            Manifest(
                suite=SUITE,
                method=method,
                config={},
                config_hash=r["config_hash"],
                ipc=int(r["ipc"]),
                classes=list(classes),
                seeds={},
                images=int(r["images"]),
                distill_seconds=float(r["distill_seconds"]),
                seconds_per_image=float(r["seconds_per_image"]),
                peak_memory_bytes=round(float(r["peak_memory_mib"]) * 2**20),
                peak_memory_kind=_value(r["peak_memory_kind"]),
                stage_seconds={
                    s: float(r[f"stage_{s}_seconds"]) for s in stages if _value(r[f"stage_{s}_seconds"]) is not None
                },
                device=None if r["device"] == "unrecorded" else r["device"],
                cpu=None if r["cpu"] == "unrecorded" else r["cpu"],
                torch_threads=None if r["torch_threads"] == "unrecorded" else r["torch_threads"],
                fine_tune=None
                if ft is None
                else {"seconds": float(ft), "peak_memory_bytes": float(r["fine_tune_peak_memory_mib"]) * 2**20},
                diversity=measures.get((r["method"], r["config_hash"], int(r["ipc"]))),
            )
        )
    agree_with_shown(out, board / f"{SUITE}.md", run.labels)
    return out


# The diversity section's measures and their formats (harness/report/markdown.py `diversity_lines`).
SHOWN = [("fid", ".2f"), ("kid", ".3g")] + [(m, ".2f") for m in ("precision", "recall", "density", "coverage")]
DIVERSITY_HEADER = "| method | IPC | images | FID | KID | precision | recall | density | coverage |"


def agree_with_shown(manifests: list[Manifest], md: Path, labels: dict[tuple[str, str], str]) -> None:
    """The diversity CSV keeps 6 significant digits; a measure that sits on a rounding edge of the Markdown's 2
    decimals (0.815: the mean of 10 draws of k/100) can print either way from it. The board's Markdown shows how the
    measured value printed: each such measure is moved by a part in 10⁹ (within the CSV's last digit, so the CSV
    is written the same) to the side that prints as the board did."""
    if not md.exists():
        return
    lines = md.read_text().splitlines()
    if DIVERSITY_HEADER not in lines:
        return
    shown = {}
    for line in lines[lines.index(DIVERSITY_HEADER) + 2 :]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        shown[(cells[0], cells[1])] = cells[3:]
    for m in manifests:
        cells = shown.get((labels.get((m.method, m.config_hash), m.method), str(m.ipc)))
        if not m.diversity or cells is None:
            continue
        for (name, fmt), cell in zip(SHOWN, cells):
            v = m.diversity.get(name)
            if v is None or _fmt(v, fmt) == cell:
                continue
            m.diversity[name] = next((w for w in (v * (1 + 1e-9), v * (1 - 1e-9)) if _fmt(w, fmt) == cell), v)


def stamp_existing_grids(board: Path, run: Run) -> list[str]:
    """Stamp the board's grid of every set the cost table records whose config is current; returns their names."""
    cost = pd.read_csv(board / f"{SUITE}-cost.csv", dtype=TEXT)
    unlabel = {(label, h): method for (method, h), label in run.labels.items()}
    current = {(j.method, j.config_hash) for j in run.jobs}
    stamped = []
    for r in cost.to_dict("records"):
        if (unlabel.get((r["method"], r["config_hash"]), r["method"]), r["config_hash"]) not in current:
            continue
        path = board / "site" / SUITE / "grids" / grid_name(r["method"], int(r["ipc"]))
        if path.exists() and grid_stamp(path) != r["config_hash"]:
            stamp_grid(path, r["config_hash"])
            stamped.append(path.name)
    return stamped


def _copy_sets(run_dir: Path, scratch: Path) -> int:
    """Copy each set of `run_dir` (a folder holding its manifest) into the same place under `scratch`."""
    n = 0
    for manifest in sorted((run_dir / "distilled").glob(f"{SUITE}/*/*/*/{MANIFEST}")):
        dest = scratch / manifest.parent.relative_to(run_dir)
        if not (dest / MANIFEST).exists():
            shutil.copytree(manifest.parent, dest)
            n += 1
    return n


def _copy_caches(run_dir: Path, scratch: Path) -> None:
    """The caches a board asks for (checks, fine-tuned backbones, teacher accuracy, diversity reference)."""
    cache = run_dir / "cache"
    (scratch / "cache").mkdir(parents=True, exist_ok=True)
    for src in sorted(cache.glob("*")) if cache.is_dir() else []:
        dest = scratch / "cache" / src.name
        if dest.exists() or src.name.endswith("-work"):  # a fine-tune's checkpoints are not needed
            continue
        if src.is_dir():
            shutil.copytree(src, dest)
        elif src.suffix in (".json", ".pt"):
            shutil.copy2(src, dest)


def _sync(src: Path, dest: Path) -> None:
    """`dest` made to hold what `src` holds (files no longer in `src` removed)."""
    for f in sorted(dest.rglob("*"), reverse=True):
        if f.is_file() and not (src / f.relative_to(dest)).exists():
            f.unlink()
    shutil.copytree(src, dest, dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="*", type=Path, default=[], metavar="RUN_DIR", help="run folders holding sets")
    p.add_argument(
        "--board", type=Path, default=ROOT / "leaderboard", help="the board to redraw (default: %(default)s)"
    )
    p.add_argument(
        "--store", type=Path, default=None, help="the result store (default: the board's results/fashion-mnist.jsonl)"
    )
    p.add_argument("--stamp-existing-grids", action="store_true", help="stamp the current sets' grids first")
    p.add_argument("--keep-scratch", action="store_true", help="leave the scratch folder (its path is printed)")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    board = args.board.absolute()
    store = (args.store or board / "results" / f"{SUITE}.jsonl").absolute()
    suite = load_suite(SUITE, PROFILE, {"students": STUDENTS})
    real = load_real_data(suite.data)
    scratch = Path(tempfile.mkdtemp(prefix="redraw-board-"))
    try:
        (scratch / "results").mkdir()
        shutil.copy2(store, scratch / "results" / f"{SUITE}.jsonl")
        for run_dir in args.sets:
            _copy_caches(run_dir.absolute(), scratch)
            print(f"[redraw] {_copy_sets(run_dir.absolute(), scratch)} sets from {run_dir}", flush=True)
        run = Run(
            suite,
            list(suite.methods),
            scratch,
            real,
            make=False,
            command=shlex.join(["python", "scripts/redraw_board.py", *map(str, argv)]),
        )
        run.recorded = recorded_manifests(board, run, list(real.classes))
        if args.stamp_existing_grids:
            print(f"[redraw] stamped {len(stamp_existing_grids(board, run))} grids of current sets", flush=True)
        # the Run draws into <scratch>/leaderboard and <scratch>/site: start them as the board's (its cross-arch
        # table, its grids)
        shutil.copytree(board, scratch / "leaderboard", ignore=shutil.ignore_patterns("results", "site"))
        if (board / "site").is_dir():
            shutil.copytree(board / "site", scratch / "site")
        held = {(m.method, m.config_hash, m.ipc) for m in run.recorded}
        on_disk = sum(j.done() for j in run.jobs)
        recorded = sum(not j.done() and (j.method, j.config_hash, j.ipc) in held for j in run.jobs)
        print(
            f"[redraw] {len(run.jobs)} current sets: {on_disk} on disk, {recorded} recorded by {board}'s tables, "
            f"{len(run.jobs) - on_disk - recorded} neither",
            flush=True,
        )
        run.board()
        for f in sorted((scratch / "leaderboard").iterdir()):
            if f.is_file():
                shutil.copy2(f, board / f.name)
        _sync(scratch / "site", board / "site")
        print(f"[redraw] {board} redrawn", flush=True)
    finally:
        if args.keep_scratch:
            print(f"[redraw] scratch: {scratch}", flush=True)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
