"""Real data: the images a method distils from and the held-out images a student is tested on.

Every split is an `ImageSet`: uint8 images (N, C, H, W) loaded on demand, integer labels, and the class
keys (WNIDs for the ImageNet family, names for Fashion-MNIST). The test split is only ever handed to the
evaluation stage; methods see `train`, hyperparameter search sees `val` (carved from the training set).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from harness.core.atomic import write_json

FASHION_MNIST_CLASSES = [
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


class DataError(Exception):
    """Real data is missing or malformed; the message says how to get it."""


class ImageSet:
    """Images of one split. Subclasses decide where pixels come from; `load` always returns uint8 NCHW."""

    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, indices) -> torch.Tensor:
        raise NotImplementedError

    def indices_of(self, label: int) -> torch.Tensor:
        return torch.nonzero(self.labels == label).flatten()

    def class_images(self, label: int) -> torch.Tensor:
        return self.load(self.indices_of(label))

    def subset(self, indices) -> ImageSet:
        return SubsetImageSet(self, torch.as_tensor(indices, dtype=torch.long))

    def fingerprint(self) -> str:
        """A short hash of which images (by label and position) form this split: keys caches."""
        return hashlib.sha256(self.labels.numpy().tobytes()).hexdigest()[:16]


class TensorImageSet(ImageSet):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str], source: str = ""):
        assert images.dtype == torch.uint8 and images.ndim == 4
        self.images, self.labels, self.classes, self.source = images, labels.long(), classes, source

    def load(self, indices) -> torch.Tensor:
        return self.images[torch.as_tensor(indices, dtype=torch.long)]

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.labels.numpy().tobytes())
        h.update(self.images.numpy().tobytes())
        return h.hexdigest()[:16]


class SubsetImageSet(ImageSet):
    def __init__(self, parent: ImageSet, indices: torch.Tensor):
        self.parent, self.parent_indices = parent, indices
        self.labels, self.classes = parent.labels[indices], parent.classes

    def load(self, indices) -> torch.Tensor:
        return self.parent.load(self.parent_indices[torch.as_tensor(indices, dtype=torch.long)])

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.parent.fingerprint().encode())
        h.update(self.parent_indices.numpy().tobytes())
        return h.hexdigest()[:16]


class FolderImageSet(ImageSet):
    """ImageNet-style folder: root/<wnid>/*.JPEG, only the listed classes, resized to `size` on load, as
    `channels` (1: grey, "L"; 3: RGB) channels."""

    def __init__(self, root: Path, classes: list[str], size: int, max_per_class: int | None = None, channels: int = 3):
        self.root, self.classes, self.size, self.channels = Path(root), classes, size, channels
        paths, labels = [], []
        for label, key in enumerate(classes):
            folder = self.root / key
            if not folder.is_dir():
                raise DataError(f"{folder} is missing: expected one folder per class WNID under {self.root}")
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise DataError(f"{folder} holds no images")
            files = files[:max_per_class] if max_per_class else files
            paths += files
            labels += [label] * len(files)
        self.paths, self.labels = paths, torch.tensor(labels, dtype=torch.long)

    def drop(self, unreadable: set[Path]) -> None:
        """Leave out the files `check_readable` found unreadable (data.skip_unreadable)."""
        keep = [i for i, path in enumerate(self.paths) if path not in unreadable]
        self.paths, self.labels = [self.paths[i] for i in keep], self.labels[keep]

    def load(self, indices) -> torch.Tensor:
        from PIL import Image

        out = []
        for i in torch.as_tensor(indices, dtype=torch.long).tolist():
            with Image.open(self.paths[i]) as img:
                img = img.convert("L" if self.channels == 1 else "RGB")
                # The field's resize: shorter side to `size`, then centre crop.
                w, h = img.size
                scale = self.size / min(w, h)
                img = img.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BICUBIC)
                w, h = img.size
                left, top = (w - self.size) // 2, (h - self.size) // 2
                img = img.crop((left, top, left + self.size, top + self.size))
                pixels = np.asarray(img).copy()
                out.append(torch.from_numpy(pixels.reshape(*pixels.shape[:2], -1)).permute(2, 0, 1))
        if not out:
            return torch.empty(0, self.channels, self.size, self.size, dtype=torch.uint8)
        return torch.stack(out)

    def fingerprint(self) -> str:
        h = hashlib.sha256(str(self.root).encode())
        h.update("\n".join(str(p.relative_to(self.root)) for p in self.paths).encode())
        if self.channels != 3:  # only then: the RGB sets' fingerprints (and so their cache keys) stay as they were
            h.update(f"channels={self.channels}".encode())
        return h.hexdigest()[:16]


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def folder_channels(sets: list[FolderImageSet], sample_per_class: int = 4) -> int:
    """`data.channels: auto`: 1 where every image looked at is grey (PIL modes 1/L/LA/I/F), else 3. Only the
    first `sample_per_class` images of each class (by name) of each split are opened: ImageNet's 1.3 M files
    would take minutes, and one RGB file among them is enough to make the set RGB."""
    from PIL import Image

    for s in sets:
        for label in range(len(s.classes)):
            for i in s.indices_of(label)[:sample_per_class].tolist():
                with Image.open(s.paths[i]) as img:
                    if img.mode not in GREY_MODES:
                        return 3
    return 1


# Bump when what the check does changes: its cached verdicts are then asked again.
READABLE_CHECK_VERSION = 1
SHOWN_UNREADABLE = 5  # names in the one line; the rest are counted


def _checks_dir() -> Path:
    """Where the verdicts of `check_readable` are kept: the user's cache folder, not the data's (which may be
    read-only or shared) nor --out (the workers that load the data again find them here on the same machine)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddbench" / "image-checks"


def _why_unreadable(path: Path, size: int) -> str | None:
    """Why PIL cannot decode `path` to its last pixel (a truncated file, a non-image under an image's name), or None.
    A JPEG is decoded at its reduced DCT scale nearest `size` (draft): every byte of its data is still read, at a
    fraction of the full decode's cost, which is what ImageNet's 1.3 M files need."""
    from PIL import Image  # heavy, and only an ImageFolder needs it

    try:
        with Image.open(path) as img:
            img.draft(None, (size, size))
            img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ... by format
        return (str(e).replace(f" {str(path)!r}", "").splitlines() or [type(e).__name__])[0][:80]
    return None


def check_readable(sets: list[FolderImageSet], skip: bool) -> list[str]:
    """Every image of `sets` decodes, checked once before any compute: the verdicts are cached under a key of the
    files' names, sizes and modification times, so a rerun on the same folder pays a stat per file. A bad file
    raised a PIL traceback in a worker after the run had started (issue 30 item 3). Unreadable files are one
    DataError naming them, or, with `skip`, are left out of the sets; returns their paths relative to the data."""
    files = sorted({p for s in sets for p in s.paths})
    if not files:
        return []
    size = max(s.size for s in sets)
    key = hashlib.sha256(f"v{READABLE_CHECK_VERSION} size={size}".encode())
    for path in files:
        stat = path.stat()
        key.update(f"\n{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    verdict = _checks_dir() / f"{key.hexdigest()[:32]}.json"
    try:
        bad = json.loads(verdict.read_text())["unreadable"]
    except (OSError, ValueError, KeyError):
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL's decoders release the GIL
            reasons = list(pool.map(lambda path: _why_unreadable(path, size), files, chunksize=64))
        bad = {str(path): why for path, why in zip(files, reasons) if why is not None}
        print(f"[data] checked {len(files)} images once (cached): {len(bad)} unreadable", flush=True)
        verdict.parent.mkdir(parents=True, exist_ok=True)
        write_json(verdict, {"unreadable": bad, "files": len(files)})
    if not bad:
        return []
    root = Path(os.path.commonpath([s.root.parent for s in sets]))
    shown = [f"{Path(p).relative_to(root) if Path(p).is_relative_to(root) else p} ({why})" for p, why in bad.items()]
    if not skip:
        more = f" and {len(shown) - SHOWN_UNREADABLE} more" if len(shown) > SHOWN_UNREADABLE else ""
        raise DataError(
            f"{len(bad)} of {len(files)} images under {root} cannot be read: {'; '.join(shown[:SHOWN_UNREADABLE])}"
            f"{more}; replace or remove them, or set data.skip_unreadable: true to leave them out"
        )
    for s in sets:
        s.drop({Path(p) for p in bad})
    return [str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else p for p in bad]


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if len(raw) < 4:
        raise DataError(f"{path} is not an idx file: too short")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte idx file (magic {raw[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {data.size} bytes")
    return data.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}: "
        f"install it with `apt-get install -y dataset-fashion-mnist` or set data.root in the suite"
    )


def load_fashion_mnist(root: Path, split: str) -> TensorImageSet:
    root = Path(root)
    images_stem, labels_stem = FASHION_MNIST_FILES[split]
    images = read_idx(_find_idx(root, images_stem))
    labels = read_idx(_find_idx(root, labels_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split} files in {root} disagree: images {images.shape}, labels {labels.shape}")
    if labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"Fashion-MNIST {split} labels in {root} exceed 9")
    return TensorImageSet(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        list(FASHION_MNIST_CLASSES),
        source=str(root),
    )


def carve_validation(train: ImageSet, per_class: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split `per_class` images of every class off the training set, the same ones for the same seed."""
    g = torch.Generator().manual_seed(seed)
    val = []
    for label in range(len(train.classes)):
        idx = train.indices_of(label)
        if len(idx) <= per_class:
            raise DataError(
                f"class {train.classes[label]} has {len(idx)} training images, "
                f"cannot hold out {per_class} for validation"
            )
        val.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    val_idx = torch.sort(torch.cat(val)).values
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[val_idx] = False
    return train.subset(torch.nonzero(keep).flatten()), train.subset(val_idx)


@dataclass
class RealData:
    train: ImageSet  # what methods, teachers and backbones may see
    val: ImageSet  # carved from the training set: for hyperparameter search
    test: ImageSet | None  # held out: final accuracy only; None where a search loaded the data (never read there)
    classes: list[str]
    class_names: list[str]
    channels: int
    image_size: int
    unreadable: list[str] = field(default_factory=list)  # left out (data.skip_unreadable), relative to data.root


def load_real_data(data_cfg, with_test: bool = True) -> RealData:
    """Build the three splits a suite's `data` section describes. `with_test=False` (a hyperparameter search)
    never opens the test split's files: `test` is None."""
    test, unreadable = None, []
    if data_cfg.format == "idx":
        full_train = load_fashion_mnist(data_cfg.root, "train")
        if with_test:
            test = load_fashion_mnist(data_cfg.root, "test")
        names = list(FASHION_MNIST_CLASSES)
        if data_cfg.max_train_per_class:
            full_train = full_train.subset(
                torch.cat([full_train.indices_of(c)[: data_cfg.max_train_per_class] for c in range(len(names))])
                .sort()
                .values
            )
    elif data_cfg.format == "imagefolder":
        classes = data_cfg.class_keys()
        full_train = FolderImageSet(
            Path(data_cfg.root) / data_cfg.train_dir, classes, data_cfg.image_size, data_cfg.max_train_per_class
        )
        if with_test:
            test = FolderImageSet(Path(data_cfg.root) / data_cfg.test_dir, classes, data_cfg.image_size)
        splits = [s for s in (full_train, test) if s is not None]
        unreadable = check_readable(splits, data_cfg.skip_unreadable)
        channels = data_cfg.channels if data_cfg.channels != "auto" else folder_channels(splits)
        for split in splits:
            split.channels = channels
        names = data_cfg.class_names()
    else:  # the suite loader rejects other formats before we get here
        raise DataError(f"unknown data format {data_cfg.format!r}")
    train, val = carve_validation(full_train, data_cfg.val_per_class, data_cfg.val_seed)
    if data_cfg.format == "idx":
        channels = 1
    size = int((test if test is not None else full_train).load([0]).shape[-1])
    if size != data_cfg.image_size:
        raise DataError(
            f"images in {data_cfg.root} are {size}px but the suite's data.image_size is {data_cfg.image_size}"
        )
    return RealData(train, val, test, list(full_train.classes), names, channels, size, unreadable)
