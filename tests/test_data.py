"""Real data: the idx reader, the Fashion-MNIST loader and the validation split."""

import gzip
import struct

import numpy as np
import pytest
import torch

from harness.models.data import DataError, carve_validation, load_fashion_mnist, read_idx
from tests.factories import FASHION_ROOT


def _idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    (gzip.open if gz else open)(path, "wb").write(_idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(path), arr)


def test_read_idx_rejects_truncated_and_wrong_magic(tmp_path):
    arr = np.zeros((4, 5), dtype=np.uint8)
    (tmp_path / "short").write_bytes(_idx_bytes(arr)[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "float").write_bytes(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"\0" * 4)
    with pytest.raises(DataError, match="unsigned-byte"):
        read_idx(tmp_path / "float")


def test_fashion_mnist_from_debian_package():
    train, test = load_fashion_mnist(FASHION_ROOT, "train"), load_fashion_mnist(FASHION_ROOT, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.images.dtype == torch.uint8 and train.images.max() == 255


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, "train")


def test_validation_split_is_deterministic_and_disjoint():
    full = load_fashion_mnist(FASHION_ROOT, "train")
    train, val = carve_validation(full, 500, seed=0)
    train2, val2 = carve_validation(full, 500, seed=0)
    assert torch.equal(val.parent_indices, val2.parent_indices)
    assert len(train) == 55000 and len(val) == 5000
    assert torch.bincount(val.labels).tolist() == [500] * 10
    assert not set(train.parent_indices.tolist()) & set(val.parent_indices.tolist())
    _, other = carve_validation(full, 500, seed=1)
    assert not torch.equal(other.parent_indices, val.parent_indices)


def test_imagefolder_by_wnid(tmp_path):
    from PIL import Image

    from harness.models.data import FolderImageSet

    rng = np.random.default_rng(0)
    for wnid, n in (("n01440764", 3), ("n02102040", 2), ("n99999999", 1)):
        (tmp_path / wnid).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / wnid / f"{i}.JPEG")
    # Only the listed classes, in the list's order (not the folders' sorted order).
    ds = FolderImageSet(tmp_path, ["n02102040", "n01440764"], size=16)
    assert ds.labels.tolist() == [0, 0, 1, 1, 1]
    imgs = ds.load([0, 4])
    assert imgs.shape == (2, 3, 16, 16) and imgs.dtype == torch.uint8
    with pytest.raises(DataError, match="n03000684 is missing"):
        FolderImageSet(tmp_path, ["n03000684"], size=16)
