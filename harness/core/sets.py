"""Distilled sets on disk: an ImageFolder of PNGs (one folder per class key) and a `manifest.json` that says
what made the set, at what cost, on what machine. Reading and writing live here so every stage — distill,
evaluate, diversity, the leaderboard — sees a set the same way."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from harness.core import atomic
from harness.core.identity import MANIFEST

SHARD = "shard.json"


def save_images(images: torch.Tensor, folder: Path) -> dict[str, str]:
    """Float images in [0, 1] (N, C, H, W) as 0000.png, 0001.png, … (grey for one channel); returns each
    file's SHA-256."""
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    sums = {}
    for i, a in enumerate(arr):
        buffer = io.BytesIO()
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buffer, format="PNG", optimize=False)
        name = f"{i:04d}.png"
        (folder / name).write_bytes(buffer.getvalue())
        sums[name] = hashlib.sha256(buffer.getvalue()).hexdigest()
    return sums


def load_set(path: Path, classes: list[str], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A set's images as uint8 (N, C, H, W) and labels in the suite's class order."""
    images, labels = [], []
    for label, key in enumerate(classes):
        for f in sorted((Path(path) / key).glob("*.png")):
            with Image.open(f) as img:
                a = np.asarray(img.convert("L" if channels == 1 else "RGB"))
            images.append(torch.from_numpy(a.copy()).reshape(a.shape[0], a.shape[1], -1).permute(2, 0, 1))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def _one(values):
    """The one value all shards share, or every distinct value joined with " + " where a set was made on
    unlike machines (a resumed run on another node): it stays visible rather than silently picking one."""
    distinct = sorted({v for v in values if v is not None}, key=str)
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else " + ".join(map(str, distinct))


@dataclass
class Manifest:
    """What `manifest.json` holds. Fields a set made by an older harness lacks read as None / empty."""

    suite: str
    method: str
    config: dict
    config_hash: str
    ipc: int
    classes: list[str]
    seeds: dict[str, int]
    images: int
    distill_seconds: float
    seconds_per_image: float
    peak_memory_bytes: int
    peak_memory_kind: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # Costs compare only between like machines: what ran the shards, and with how many threads.
    device: str | None = None
    cpu: str | None = None
    torch_threads: Any = None
    backbone: str | None = None
    teacher: str | None = None
    backbone_check: dict | None = None
    versions: dict = field(default_factory=dict)
    # Each class's PNGs and their SHA-256 (a record to verify the set by, in no identity); None for sets made
    # before checksums were recorded.
    checksums: dict[str, dict[str, str]] | None = None
    # The fine-tuned backbone the set was sampled from: its hash and what training it took (seconds, peak
    # memory, machine), once for every set sampled from it; None for a set from the suite's backbone.
    fine_tune: dict | None = None
    # A set made elsewhere (`ddbench evaluate`): its source as given, its canonical SHA-256, how many of its images
    # are near-identical to test images, and its images per class; None for the sets ddbench makes.
    external: dict | None = None
    # Not stored: where this run keeps the set (so a set can be moved), and its diversity measures.
    path: str = field(default="", metadata={"stored": False})
    diversity: dict | None = field(default=None, metadata={"stored": False})

    @classmethod
    def from_shards(cls, shards: list[dict], **identity) -> Manifest:
        images = sum(s["images"] for s in shards)
        seconds = sum(s["seconds"] for s in shards)
        stages: dict[str, float] = {}
        for s in shards:  # shards made before stages were recorded have none
            for stage, t in s.get("stage_seconds", {}).items():
                stages[stage] = stages.get(stage, 0.0) + t
        return cls(
            seeds={s["class"]: s["seed"] for s in shards},
            images=images,
            distill_seconds=seconds,
            seconds_per_image=seconds / max(images, 1),
            peak_memory_bytes=max(s["peak_memory_bytes"] for s in shards),
            peak_memory_kind=_one(s["peak_memory_kind"] for s in shards),
            stage_seconds=stages,
            device=_one(s.get("device") for s in shards),
            cpu=_one(s.get("cpu") for s in shards),
            torch_threads=_one(s.get("torch_threads") for s in shards),
            checksums={s["class"]: s["sha256"] for s in shards} if all("sha256" in s for s in shards) else None,
            **identity,
        )

    @property
    def on_disk(self) -> bool:
        """Whether the set's images are where `path` says (a manifest rebuilt from a board's record has no path)."""
        return bool(self.path) and Path(self.path).is_dir()

    def stored(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("stored", True)}

    def write(self, folder: Path) -> None:
        atomic.sweep_temps(folder)
        atomic.write_json(Path(folder) / MANIFEST, self.stored(), indent=1)

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        raw = json.loads((Path(folder) / MANIFEST).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known}, path=str(folder))


def read_shard(folder: Path) -> dict:
    return json.loads((Path(folder) / SHARD).read_text())


def write_shard(final: Path, images: torch.Tensor, record: dict) -> None:
    """One class's images and its record, published whole into `final` (or left to an attempt that won)."""
    tmp = atomic.temp_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sums = save_images(images, tmp)
    (tmp / SHARD).write_text(json.dumps({**record, "sha256": sums}))
    atomic.publish_dir(tmp, final)


def shard_damage(folder: Path) -> str | None:
    """What is wrong with one class's shard on disk, or None if it is whole: its record must read, its PNGs
    must be exactly the ones it recorded, each with its recorded SHA-256. A shard recorded before checksums
    existed is checked by its image count and by decoding every PNG."""
    folder = Path(folder)
    try:
        record = read_shard(folder)
        expected = record["images"]
    except FileNotFoundError:
        return f"no {SHARD}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"unreadable {SHARD}"
    on_disk = sorted(p.name for p in folder.glob("*.png"))
    names = sorted(record["sha256"]) if "sha256" in record else [f"{i:04d}.png" for i in range(expected)]
    if on_disk != names:
        missing, extra = sorted(set(names) - set(on_disk)), sorted(set(on_disk) - set(names))
        return ", ".join(
            ([f"missing {', '.join(missing)}"] if missing else [])
            + ([f"unrecorded {', '.join(extra)}"] if extra else [])
        )
    for name in names:
        if "sha256" in record:
            if hashlib.sha256((folder / name).read_bytes()).hexdigest() != record["sha256"][name]:
                return f"{name} does not match its checksum"
            continue
        try:
            with Image.open(folder / name) as img:
                img.verify()  # every chunk's CRC, and the end chunk: a cut file fails even if its pixels decode
            with Image.open(folder / name) as img:
                img.load()
        except Exception:  # PIL raises many kinds for a damaged file
            return f"{name} does not decode"
    return None


def manifest_damage(folder: Path) -> str | None:
    """Why `folder`'s manifest cannot be used (absent, torn), or None."""
    try:
        Manifest.read(folder)
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (OSError, ValueError, TypeError):
        return f"unreadable {MANIFEST}"
    return None
