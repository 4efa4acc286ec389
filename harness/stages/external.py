"""Sets made elsewhere: read from an ImageFolder, a Hugging Face `datasets` folder or Parquet file, or a tensor file
(DD-Ranking's `images.pt`/`labels.pt`, a `.pt` or `.npz` of images and labels), checked against the suite before
any training, and copied into the store's set folders with a manifest recording the source and its SHA-256.

The checks, each one line (ExternalSetError): the classes and their mapping onto the suite's (by class key, by
class name, or by index through an explicit class order, never guessed), images per class, image size and mode
against the suite's input, unreadable files, exact duplicates within the set, and test-set leakage (an image
near-identical to one of the suite's test split: a DCT perceptual hash finds the candidates, a thumbnail's mean
absolute difference confirms them; docs/decisions.md gives the thresholds and what they were measured on).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from harness.config.evaluate_args import (
    ExternalSetError,
    check_name_form,
    check_source,
)
from harness.core import atomic, cache
from harness.core.sets import Manifest, manifest_damage, shard_damage, write_shard
from harness.core.store import latest_external_sets
from harness.models.data import FASHION_MNIST_CLASSES, IMAGE_EXTENSIONS
from methods import list_methods

# Leakage: a set image is near-identical to a test image when their 64-bit DCT hashes differ in at most
# HAMMING_THRESHOLD bits AND their 32×32 grey thumbnails, each less its mean brightness, differ by at most
# THUMB_MAD_THRESHOLD grey levels on average (docs/decisions.md, 2026-12-05: the hash alone flags a sixth of
# Fashion-MNIST's training images; the closest of 6,000 random training images lies 4.48 levels from a test image's,
# but 15 of all 60,000 fall within 3.0 of one, the closest at 0.24: the dataset's own cross-split near-duplicates).
HAMMING_THRESHOLD = 4
THUMB_MAD_THRESHOLD = 3.0
THUMB = 32
HASH_VERSION = "dct-phash-8x8-of-32/thumb32-mad/v1"
SHOWN = 5  # files named in one line before "and N more"


@dataclass
class Item:
    """One image of the source as read: its class as the source names it, its name there, and its pixels (a
    file's bytes, or an array already decoded)."""

    raw_class: str
    name: str
    where: str  # how a message names it: a path, a Parquet row, a tensor index
    data: bytes | np.ndarray


@dataclass
class ExternalSet:
    """A checked set: uint8 images (N, C, H, W) in the suite's class order, each class's images in the order of
    their names in the source; `sha256` over the canonical form (`canonical_sha256`)."""

    source: str
    classes: list[str]
    images: torch.Tensor
    labels: torch.Tensor
    where: list[str]
    counts: list[int]
    sha256: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ipc(self) -> int:
        """Images per class; for an uneven set (--allow-uneven) the rounded mean, as the recipes' tables read it."""
        return round(len(self.labels) / len(self.classes))

    @property
    def config_hash(self) -> str:
        return self.sha256[:12]


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def suite_classes(data_cfg) -> tuple[list[str], list[str]]:
    """The suite's class keys and names, in label order, read without loading any image."""
    if data_cfg.format == "idx":
        return list(FASHION_MNIST_CLASSES), list(FASHION_MNIST_CLASSES)
    return data_cfg.class_keys(), data_cfg.class_names()


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


# ---- reading the containers ----


def _folder_items(root: Path) -> list[Item]:
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                items.append(Item(folder.name, f.name, str(f), f.read_bytes()))
    return items


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(path.rglob("*.parquet"))


def _parquet_items(files: list[Path]) -> list[Item]:
    import pyarrow.parquet as pq  # `datasets`' own dependency: needed for Parquet sets alone

    items = []
    for f in files:
        table = pq.read_table(f)
        columns = table.column_names
        if "image" not in columns or "label" not in columns:
            raise ExternalSetError(f"--set: {f} has columns {', '.join(columns)}; expected `image` and `label`")
        names = None
        meta = (table.schema.metadata or {}).get(b"huggingface")
        if meta:
            feature = json.loads(meta).get("info", {}).get("features", {}).get("label", {})
            names = feature.get("names")
        images, labels = table.column("image").to_pylist(), table.column("label").to_pylist()
        files_col = table.column("file").to_pylist() if "file" in columns else [None] * len(labels)
        for row, (image, label, name) in enumerate(zip(images, labels, files_col)):
            data = image.get("bytes") if isinstance(image, dict) else image
            if not isinstance(data, bytes):
                raise ExternalSetError(f"--set: {f} row {row}: the image column holds no bytes")
            raw = names[label] if names is not None and isinstance(label, int) else str(label)
            shown = name or (image.get("path") if isinstance(image, dict) else None) or f"{row:06d}"
            items.append(Item(raw, Path(shown).name, f"{f} row {row} ({shown})", data))
    return items


def _tensor_payload(path: Path) -> tuple[object, object, str]:
    """(images, labels or None, what names it) from a DD-Ranking folder, a .pt or a .npz."""
    if path.is_dir():  # DD-Ranking's layout: images.pt, and labels.pt where the labels are not class-major
        images = torch.load(path / "images.pt", map_location="cpu", weights_only=True)
        labels_file = path / "labels.pt"
        labels = torch.load(labels_file, map_location="cpu", weights_only=True) if labels_file.exists() else None
        return images, labels, str(path / "images.pt")
    if path.suffix == ".npz":
        with np.load(path) as z:
            if "images" not in z:
                raise ExternalSetError(f"--set: {path} holds {', '.join(z.files)}; expected `images` (and `labels`)")
            return z["images"], (z["labels"] if "labels" in z else None), str(path)
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(blob, dict):
        if "images" not in blob:
            raise ExternalSetError(f"--set: {path} holds keys {', '.join(map(str, blob))}; expected `images`")
        return blob["images"], blob.get("labels"), str(path)
    if isinstance(blob, (tuple, list)) and len(blob) == 2:
        return blob[0], blob[1], str(path)
    return blob, None, str(path)


def _pixels_of_tensor(images, channels: int, normalisation: str | None, where: str) -> np.ndarray:
    """A tensor's images as uint8 (N, H, W, C). uint8 is taken as is; floats must be in [0, 1], or carry a stated
    normalisation (DD-Ranking's tensors are normalised by the dataset's mean and std), which is undone."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.ndim != 4:
        raise ExternalSetError(f"--set: {where}: images of shape {tuple(x.shape)}; expected (N, C, H, W)")
    if x.dtype == torch.uint8:
        return x.permute(0, 2, 3, 1).numpy()
    if not x.is_floating_point():
        raise ExternalSetError(f"--set: {where}: images of dtype {x.dtype}; expected uint8 or float")
    x = x.double()
    if normalisation is not None:
        if x.shape[1] != len(normalisation[0]):
            raise ExternalSetError(
                f"--tensor-normalization: {len(normalisation[0])} channel means for images of {x.shape[1]} channels"
            )
        mean = torch.tensor(normalisation[0], dtype=torch.float64).view(1, -1, 1, 1)
        std = torch.tensor(normalisation[1], dtype=torch.float64).view(1, -1, 1, 1)
        x = x * std + mean
    low, high = float(x.min()), float(x.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ExternalSetError(
            f"--set: {where}: float images range over [{low:.3g}, {high:.3g}], not [0, 1]: normalised images need "
            "--tensor-normalization (imagenet, cifar10, or MEANS/STDS such as 0.2861/0.3530)"
        )
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _tensor_items(images, labels, where: str, classes: int, channels: int, normalisation) -> list[Item]:
    pixels = _pixels_of_tensor(images, channels, normalisation, where)
    n = len(pixels)
    if labels is None:  # DD-Ranking's default hard labels: class-major, IPC each (LabelRobustScoreHard)
        if n % classes:
            raise ExternalSetError(
                f"--set: {where}: {n} images and no labels: DD-Ranking's default (class-major, equal blocks) needs "
                f"a multiple of the suite's {classes} classes"
            )
        labels = torch.arange(classes).repeat_interleave(n // classes)
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if labels.ndim == 2:
        raise ExternalSetError(
            f"--set: {where}: soft labels {tuple(labels.shape)}: ddbench trains on hard labels (the recipes that "
            "train on a teacher's outputs relabel with the suite's teacher); give each image's class index"
        )
    if labels.ndim != 1 or len(labels) != n or labels.is_floating_point():
        raise ExternalSetError(
            f"--set: {where}: labels of shape {tuple(labels.shape)} and dtype {labels.dtype} for {n} images; "
            "expected one class index per image"
        )
    width = len(str(n - 1))
    return [Item(str(int(c)), f"{i:0{width}d}", f"{where}[{i}]", pixels[i]) for i, c in enumerate(labels.tolist())]


def items_from_arrays(images, labels, classes: int, channels: int, normalisation=None) -> list[Item]:
    """The Python API's images (uint8, or floats in [0, 1], N×C×H×W) and labels: class indices (mapped through an
    explicit class order) or class keys or names."""
    labels = list(labels)
    if labels and all(isinstance(v, str) for v in labels):
        pixels = _pixels_of_tensor(images, channels, normalisation, "images")
        if len(pixels) != len(labels):
            raise ExternalSetError(f"labels: {len(labels)} for {len(pixels)} images")
        width = len(str(len(labels) - 1))
        return [Item(c, f"{i:0{width}d}", f"images[{i}]", pixels[i]) for i, c in enumerate(labels)]
    return _tensor_items(images, torch.as_tensor(labels), "images", classes, channels, normalisation)


def read_items(source: str, classes: int, channels: int, normalisation=None) -> tuple[str, list[Item]]:
    """The source's images as read, and the container's kind."""
    path = check_source(source)
    if path.suffix in (".pt", ".pth", ".npz") or (path.is_dir() and (path / "images.pt").exists()):
        try:
            images, labels, where = _tensor_payload(path)
        except ExternalSetError:
            raise
        except Exception as e:  # torch and numpy raise many kinds for a damaged or foreign file
            raise ExternalSetError(f"--set: {source}: unreadable tensor file ({type(e).__name__})") from None
        return "tensor", _tensor_items(images, labels, where, classes, channels, normalisation)
    if path.suffix == ".parquet" or (path.is_dir() and _parquet_files(path)):
        return "parquet", _parquet_items(_parquet_files(path))
    if path.is_dir():
        return "imagefolder", _folder_items(path)
    raise ExternalSetError(
        f"--set: {source}: not an image folder, a datasets folder or .parquet file, nor a .pt/.npz tensor file"
    )


# ---- the checks ----


def map_classes(raw: list[str], keys: list[str], names: list[str], order, container: str) -> dict[str, str]:
    """Each class the source names → the suite's class key. Indices map only through an explicit order."""
    by_key = {k: k for k in keys}
    by_name = {_norm(n): k for k, n in zip(keys, names)}

    def resolve(label: str) -> str | None:
        return by_key.get(label) or by_name.get(_norm(label))

    if all(r.isdigit() for r in raw):
        if order is None:
            what = "class folders are named by index" if container == "imagefolder" else "its labels are indices"
            raise ExternalSetError(
                f"--class-order: the set's {what} ({_shown(raw)}): say which class each index is, with a file of "
                "one class key or name per line (line i is index i), or `--class-order suite` for the suite's order"
            )
        listed = keys if order == "suite" else order
        unknown = [c for c in listed if resolve(c) is None]
        if unknown:
            raise ExternalSetError(f"--class-order: {_shown(unknown)} not among the suite's classes")
        beyond = [r for r in raw if int(r) >= len(listed)]
        if beyond:
            raise ExternalSetError(f"--class-order: lists {len(listed)} classes; the set has index {beyond[0]}")
        mapping = {r: resolve(listed[int(r)]) for r in raw}
    else:
        if order is not None:
            raise ExternalSetError("--class-order: the set names its classes; an order is only for index labels")
        mapping = {r: resolve(r) for r in raw}
    unknown = [r for r, k in mapping.items() if k is None]
    covered = set(mapping.values()) - {None}
    missing = [f"{k} ({n})" if n != k else k for k, n in zip(keys, names) if k not in covered]
    if len(raw) != len(keys):
        detail = "; ".join(
            ([f"missing {_shown(missing)}"] if missing else [])
            + ([f"not the suite's: {_shown(unknown)}"] if unknown else [])
        )
        raise ExternalSetError(
            f"--set: the set has {len(raw)} classes, the suite {len(keys)}" + (f" ({detail})" if detail else "")
        )
    if unknown or missing:
        raise ExternalSetError(
            f"--set: classes {_shown(unknown)} are not the suite's (by key or name); missing {_shown(missing)}"
        )
    twice = sorted({k for k in mapping.values() if list(mapping.values()).count(k) > 1})
    if twice:
        raise ExternalSetError(f"--set: several of the set's classes map to {_shown(twice)}")
    return mapping


def _decode(item: Item, channels: int, size: int) -> tuple[np.ndarray | None, str | None]:
    """(pixels H×W×C, None), or (None, why: unreadable) — a wrong size or mode is raised at once."""
    if isinstance(item.data, np.ndarray):
        return item.data, None
    try:
        with Image.open(io.BytesIO(item.data)) as img:
            img.verify()  # every chunk's CRC: a cut file fails even where its first pixels decode
        with Image.open(io.BytesIO(item.data)) as img:
            img.load()
            mode, shape = img.mode, img.size
            array = np.asarray(img)
    except Exception:  # PIL raises many kinds for a damaged file
        return None, "unreadable"
    expected = "L" if channels == 1 else "RGB"
    if mode != expected or shape != (size, size):
        return None, f"{shape[0]}×{shape[1]} {mode}"
    return array.reshape(size, size, channels), None


def check_and_build(
    source: str,
    suite_keys: list[str],
    suite_names: list[str],
    channels: int,
    size: int,
    order=None,
    normalisation=None,
    allow_uneven: bool = False,
    allow_duplicates: bool = False,
    items: list[Item] | None = None,
    container: str | None = None,
) -> ExternalSet:
    """Read `source` (or take `items`), check it against the suite, and return it in the suite's class order."""
    if items is None:
        container, items = read_items(source, len(suite_keys), channels, normalisation)
    if not items:
        raise ExternalSetError(
            f"--set: {source} holds no images ({', '.join(IMAGE_EXTENSIONS)} files, one folder per class)"
        )
    raw = sorted({i.raw_class for i in items}, key=lambda r: (not r.isdigit(), int(r) if r.isdigit() else 0, r))
    mapping = map_classes(raw, suite_keys, suite_names, order, container)
    per_class: dict[str, list[Item]] = {k: [] for k in suite_keys}
    for item in items:
        per_class[mapping[item.raw_class]].append(item)
    counts = [len(per_class[k]) for k in suite_keys]
    notes = []
    if len(set(counts)) > 1:
        said = f"images per class range from {min(counts)} to {max(counts)}"
        if not allow_uneven:
            low = [k for k, c in zip(suite_keys, counts) if c == min(counts)]
            raise ExternalSetError(
                f"--set: uneven classes: {said} ({_shown(low)}: {min(counts)}); --allow-uneven evaluates it at "
                f"IPC {round(sum(counts) / len(counts))} (the mean)"
            )
        notes.append(f"uneven classes allowed: {said}; recorded at IPC {round(sum(counts) / len(counts))} (the mean)")
    for k in suite_keys:  # the order the set's own names give; a name repeated within a class is a container's
        per_class[k].sort(key=lambda i: i.name)
    ordered = [i for k in suite_keys for i in per_class[k]]
    labels = [label for label, k in enumerate(suite_keys) for _ in per_class[k]]
    pixels, bad, wrong = [], [], []
    for item in ordered:
        array, why = _decode(item, channels, size)
        if why == "unreadable":
            bad.append(item.where)
        elif why is not None:
            wrong.append(f"{item.where} ({why})")
        else:
            if array.shape != (size, size, channels):
                wrong.append(f"{item.where} ({array.shape[1]}×{array.shape[0]}, {array.shape[2]} channels)")
            pixels.append(array)
    if bad:
        raise ExternalSetError(f"--set: unreadable images: {_shown(bad)}")
    if wrong:
        mode = "grey (L)" if channels == 1 else "RGB"
        raise ExternalSetError(
            f"--set: the suite's students take {size}×{size} {mode} images (data.image_size, its channels); "
            f"{len(wrong)} are not: {_shown(wrong)}"
        )
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
    seen: dict[str, str] = {}
    duplicates = []
    for item, array in zip(ordered, pixels):
        digest = hashlib.sha256(array.tobytes()).hexdigest()
        if digest in seen:
            duplicates.append(f"{item.where} = {seen[digest]}")
        else:
            seen[digest] = item.where
    if duplicates and not allow_duplicates:
        raise ExternalSetError(
            f"--set: {len(duplicates)} images repeat another of the set exactly: {_shown(duplicates)} "
            "(--allow-duplicates evaluates it as it is)"
        )
    if duplicates:
        notes.append(f"{len(duplicates)} exact duplicates allowed")
    ext = ExternalSet(
        source, list(suite_keys), images, torch.tensor(labels, dtype=torch.long), [i.where for i in ordered], counts
    )
    ext.notes = notes
    ext.sha256 = canonical_sha256(ext)
    return ext


def canonical_sha256(ext: ExternalSet) -> str:
    """The set's SHA-256 over a form no container changes: for each class key in sorted order, for each image in
    its class's name order, the key, the image's position and its decoded pixels (H, W, C uint8) with their shape.
    The same images under the same classes hash the same from a folder of PNGs, a Parquet file or a tensor."""
    h = hashlib.sha256()
    for key in sorted(ext.classes):
        label = ext.classes.index(key)
        for position, index in enumerate(torch.nonzero(ext.labels == label).flatten().tolist()):
            array = ext.images[index].permute(1, 2, 0).contiguous().numpy()
            h.update(f"{key}\0{position}\0{array.shape}\0".encode())
            h.update(array.tobytes())
    return h.hexdigest()


# ---- test-set leakage ----


def _dct_matrix(n: int) -> torch.Tensor:
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return torch.tensor(m, dtype=torch.float64)


_DCT = _dct_matrix(THUMB)


def fingerprints(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per image (uint8 N, C, H, W): its 64-bit DCT perceptual hash (the 8×8 lowest frequencies of its 32×32 grey
    thumbnail, each bit above their median) and the thumbnail itself, rounded to uint8."""
    x = images.double()
    if x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)).sum(1, keepdim=True)
    thumbs = F.interpolate(x, size=(THUMB, THUMB), mode="bilinear", antialias=True, align_corners=False)[:, 0]
    low = (_DCT @ thumbs @ _DCT.T)[:, :8, :8].reshape(len(x), 64)
    bits = (low > low.median(dim=1, keepdim=True).values).numpy()
    hashes = np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)
    return hashes, thumbs.round().clamp(0, 255).to(torch.uint8).reshape(len(x), -1).numpy()


def split_fingerprints(test, out: Path | None, chunk: int = 2000) -> tuple[np.ndarray, np.ndarray, bool]:
    """The test split's fingerprints, from `<out>/cache/` where a run made them, else computed in chunks:
    (hashes, thumbnails, whether they came from the cache). Saving them is `save_test_fingerprints`, once the
    set has passed (a refused set leaves --out as it was)."""
    path = _fingerprint_path(test, out)
    if path is not None and path.exists() and not cache.damage(np.load, path):
        with np.load(path) as z:
            return z["hashes"], z["thumbs"], True
    hashes, thumbs = [], []
    for start in range(0, len(test), chunk):
        h, t = fingerprints(test.load(torch.arange(start, min(start + chunk, len(test)))))
        hashes.append(h)
        thumbs.append(t)
    return np.concatenate(hashes), np.concatenate(thumbs), False


def _fingerprint_path(test, out: Path | None) -> Path | None:
    if out is None:
        return None
    key = hashlib.sha256(f"{HASH_VERSION}/{test.fingerprint()}".encode()).hexdigest()[:12]
    return Path(out) / "cache" / f"test-fingerprints-{key}.npz"


def save_test_fingerprints(test, out: Path, hashes: np.ndarray, thumbs: np.ndarray) -> None:
    path = _fingerprint_path(test, out)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temp_path(path).with_suffix(".npz")
    np.savez(tmp, hashes=hashes, thumbs=thumbs)
    tmp.replace(path)


def _centred(thumb: np.ndarray) -> np.ndarray:
    """A thumbnail less its mean: a copy brightened or darkened as a whole is still the same image."""
    x = thumb.astype(np.float32)
    return x - x.mean()


def leaks(
    ext: ExternalSet, test_hashes: np.ndarray, test_thumbs: np.ndarray, chunk: int = 1024
) -> list[tuple[int, int]]:
    """(set index, test index) of every set image near-identical to a test image (the module's thresholds)."""
    hashes, thumbs = fingerprints(ext.images)
    found = []
    for start in range(0, len(hashes), chunk):
        distance = np.bitwise_count(hashes[start : start + chunk, None] ^ test_hashes[None, :])
        for i, j in zip(*np.nonzero(distance <= HAMMING_THRESHOLD)):
            mad = np.abs(_centred(thumbs[start + i]) - _centred(test_thumbs[j])).mean()
            if mad <= THUMB_MAD_THRESHOLD:
                found.append((int(start + i), int(j)))
    return sorted(set(found))


def check_leakage(ext: ExternalSet, test, out: Path | None, allow_overlap: bool) -> tuple[int, object]:
    """The number of the set's images that leak test images, refused unless `allow_overlap`; and what saves the
    test split's fingerprints to the cache when the set goes on (None where they came from it)."""
    hashes, thumbs, cached = split_fingerprints(test, out)
    found = leaks(ext, hashes, thumbs)
    leaking = sorted({i for i, _ in found})
    if leaking and not allow_overlap:
        shown = [f"{ext.where[i]} (test image {next(j for k, j in found if k == i)})" for i in leaking]
        raise ExternalSetError(
            f"--set: {len(leaking)} images are (near-)identical to the suite's test split: {_shown(shown)} "
            "(--allow-overlap evaluates it, its rows marked)"
        )
    save = None if cached or out is None else (lambda: save_test_fingerprints(test, out, hashes, thumbs))
    return len(leaking), save


# ---- into the store ----


def set_folder(out: Path, suite_name: str, name: str, ext: ExternalSet) -> Path:
    return Path(out) / "distilled" / suite_name / name / ext.config_hash / f"ipc{ext.ipc}"


def store_set(
    ext: ExternalSet, out: Path, suite_name: str, name: str, overlap: int, reported: float | None = None
) -> Manifest:
    """Copy the set into the store's set folders (one PNG folder per class key, each with its checksums) with a
    manifest recording its source, SHA-256 and, when given, the accuracy its paper reports (a fraction); a whole copy
    already there is kept (a rerun resumes), its reported accuracy replaced by one a rerun gives."""
    folder = set_folder(out, suite_name, name, ext)
    external = {"source": ext.source, "sha256": ext.sha256, "overlap": overlap, "counts": ext.counts}
    if reported is not None:
        external["reported_accuracy"] = reported
    if not manifest_damage(folder):
        manifest = Manifest.read(folder)
        if (manifest.external or {}).get("sha256") != ext.sha256:  # another set under the same 12 hex digits
            shutil.rmtree(folder)
        elif reported is None and manifest.external.get("reported_accuracy") is not None:
            external["reported_accuracy"] = manifest.external["reported_accuracy"]  # a repair keeps it
        elif all(not shard_damage(folder / k) for k in ext.classes):
            if reported is not None and manifest.external.get("reported_accuracy") != reported:
                manifest.external = {**manifest.external, "reported_accuracy": reported}
                manifest.write(folder)
            return manifest
    for label, key in enumerate(ext.classes):
        images = ext.images[ext.labels == label]
        record = {"class": key, "images": len(images), "seed": 0, "seconds": 0.0, "peak_memory_bytes": 0}
        if shard_damage(folder / key):
            shutil.rmtree(folder / key, ignore_errors=True)
            write_shard(folder / key, images.float().div(255), {**record, "peak_memory_kind": None})
    manifest = Manifest(
        suite=suite_name,
        method=name,
        config={"source": ext.source, "sha256": ext.sha256},
        config_hash=ext.config_hash,
        ipc=ext.ipc,
        classes=list(ext.classes),
        seeds={},
        images=len(ext.labels),
        distill_seconds=0.0,
        seconds_per_image=0.0,
        peak_memory_bytes=0,
        checksums={k: json.loads((folder / k / "shard.json").read_text())["sha256"] for k in ext.classes},
        external=external,
        path=str(folder),
    )
    manifest.write(folder)
    return manifest


def stored_external_sets(out: Path, suite_name: str, rows: list[dict]) -> list[Manifest]:
    """The manifests of the external sets whose rows the store holds (by name and hash), where their copies
    in `out`'s set folders are whole: the site draws their grids and opens them from their cells. Each name's latest
    set only, as the board shows it (harness/report/rows.py `external_rows`): an earlier set under the name would
    draw its grid over the latest's (one grid file per name and IPC)."""
    found = []
    for (name, ipc), config_hash in sorted(latest_external_sets(rows).items()):
        folder = Path(out) / "distilled" / suite_name / name / config_hash / f"ipc{ipc}"
        if folder.is_dir() and not manifest_damage(folder) and Manifest.read(folder).external:
            found.append(Manifest.read(folder))
    return found


def with_reported(rows: list[dict], sets: list[Manifest]) -> list[dict]:
    """The rows, each external set's carrying the reported accuracy its manifest holds: given to a rerun that
    trained nothing (`--reported` after the rows exist), it is kept there, not in the append-only store."""
    reported = {
        (m.method, m.config_hash, m.ipc): m.external["reported_accuracy"]
        for m in sets
        if m.external.get("reported_accuracy") is not None
    }
    return [
        {**r, "reported_accuracy": reported[key]}
        if r.get("kind") == "external" and (key := (r["method"], r["config_hash"], r["ipc"])) in reported
        else r
        for r in rows
    ]


def check_name(name: str | None) -> str:
    """--name: a folder-safe name that is neither a registered method's nor the full-data reference's."""
    return check_name_form(name, list_methods())
