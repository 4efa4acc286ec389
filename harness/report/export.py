"""Exports: a distilled set as a Hugging Face `datasets` folder, loadable with `datasets.load_dataset(folder)`.

The folder holds `data/train-00000-of-00001.parquet` (the set's PNGs, byte for byte, as an `Image` column
beside a `ClassLabel` column in the suite's class order, written by `datasets` itself so the class names
travel in the Parquet schema), a dataset card (`README.md`, whose `configs` point the loader at the Parquet
file), `manifest.json` (the set's manifest: what made it, at what cost) and `checksums.sha256` (every other
file, `sha256sum -c` format). `datasets` is imported only here: it is needed for exports alone (the `export`
extra in pyproject.toml).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from harness.core import atomic
from harness.core.sets import MANIFEST, Manifest

PARQUET = "data/train-00000-of-00001.parquet"
CHECKSUMS = "checksums.sha256"


class ExportError(Exception):
    """What stops an export, as one line."""


def _card(manifest: Manifest, suite_name: str) -> str:
    return "\n".join(
        [
            "---",
            "configs:",
            "- config_name: default",
            "  data_files:",
            "  - split: train",
            f"    path: {PARQUET}",
            "---",
            f"# {suite_name}: {manifest.method}, {manifest.ipc} images per class",
            "",
            f"A distilled set made by ddbench ({manifest.images} images, {len(manifest.classes)} classes; "
            "method config "
            f"hash {manifest.config_hash}). `label` is the class index in the order of `label`'s names; `file` the "
            "image's path in the set. `manifest.json` says what made it; `checksums.sha256` covers every other file.",
            "",
            "```python",
            "from datasets import load_dataset",
            'ds = load_dataset("path/to/this/folder", split="train")',
            "```",
            "",
        ]
    )


def export_set(manifest: Manifest, dest: Path, suite_name: str) -> Path:
    """Write `manifest`'s set to `dest` as described above; an existing export there is replaced whole."""
    try:
        from datasets import ClassLabel, Dataset, Features, Image, Value, disable_progress_bars
    except ImportError:
        raise ExportError("export: needs the `datasets` package (pip install -e .[export])") from None
    src = Path(manifest.path)
    records = {"image": [], "label": [], "file": []}
    for label, key in enumerate(manifest.classes):
        for f in sorted((src / key).glob("*.png")):
            data = f.read_bytes()
            recorded = (manifest.checksums or {}).get(key, {}).get(f.name)
            if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
                raise ExportError(
                    f"export: {f} does not match its recorded checksum: the set is damaged "
                    "(a run on its --out repairs it)"
                )
            records["image"].append({"bytes": data, "path": f"{key}/{f.name}"})
            records["label"].append(label)
            records["file"].append(f"{key}/{f.name}")
    if len(records["label"]) != manifest.images:
        raise ExportError(f"export: {src} holds {len(records['label'])} images, its manifest {manifest.images}")
    disable_progress_bars()  # one Parquet file of a few hundred images: a bar would only clutter the run's log
    features = Features({"image": Image(), "label": ClassLabel(names=list(manifest.classes)), "file": Value("string")})
    dest = Path(dest)
    tmp = atomic.temp_path(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    Dataset.from_dict(records, features=features).to_parquet(str(tmp / PARQUET))
    (tmp / "README.md").write_text(_card(manifest, suite_name))
    (tmp / MANIFEST).write_text(json.dumps(manifest.stored(), indent=1))
    sums = [
        f"{hashlib.sha256((tmp / name).read_bytes()).hexdigest()}  {name}" for name in (PARQUET, "README.md", MANIFEST)
    ]
    (tmp / CHECKSUMS).write_text("\n".join(sums) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    atomic.publish_dir(tmp, dest)
    return dest
