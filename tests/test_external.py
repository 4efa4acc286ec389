"""Sets made elsewhere (issue 27): a set exported by ddbench and evaluated back under another name trains to the
same accuracy rows as the original (same images, same seeds); the same images in DD-Ranking's tensor format and
through the Python API hash the same and score the same; a rerun trains nothing; the leakage check's hash and
thresholds hold on real Fashion-MNIST images. The refusals are rows of tests/test_bad_input.py's table."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.cli import main
from harness.core.identity import CLASSES_DIR, read_class_list, row_key
from harness.core.sets import Manifest, load_set
from harness.models.data import load_fashion_mnist
from harness.pipeline import evaluate_set
from harness.stages.external import (
    HAMMING_THRESHOLD,
    THUMB_MAD_THRESHOLD,
    ExternalSet,
    ExternalSetError,
    check_and_build,
    check_leakage,
    fingerprints,
    leaks,
    map_classes,
    store_set,
    suite_classes,
    with_reported,
)
from tests.factories import FASHION_ROOT, tiny_suite_raw, write_suite

# The round trip runs a tiny board, exports it and trains its set three times more: about two minutes on two
# busy cores. The leak check's test is fast and runs by default.
slow = pytest.mark.slow
pytest.importorskip("datasets", reason="the export extra (pip install -e .[export]) is not installed")

# Fashion-MNIST's own mean and std (the DC/DM family's normalisation), as a float tensor of DD-Ranking's carries it.
FASHION_NORM = "0.2861/0.3530"
# What a row keeps that is not the training's outcome: the set's identity and the bookkeeping of the run.
IDENTITY = {"method", "config_hash", "kind", "finished_at", "versions", "set_source", "set_sha256", "overlap"}
IDENTITY |= {"distill_seconds_per_image", "peak_memory_bytes", "reported_accuracy", "seconds", "trial_seconds"}


def _rows(out, method=None):
    rows = [json.loads(line) for line in (out / "results" / "tiny.jsonl").read_text().splitlines()]
    return [r for r in rows if method is None or r["method"] == method]


def _outcome(row):
    """A row less its identity and timings: what training the same images with the same seed must reproduce."""
    return {k: v for k, v in row.items() if k not in IDENTITY and "seconds" not in k and not k.endswith("_at")}


def _cell(row):
    return (row["student"], row["protocol"], row["protocol_hash"], row["seed"], row["ipc"])


@pytest.fixture(scope="module")
def board(tmp_path_factory, ray_cluster):
    """A tiny board of one set (random-real, IPC 2; no full-data row), made by the command line, then exported."""
    root = tmp_path_factory.mktemp("external")
    raw = tiny_suite_raw()
    raw.update(methods={"random-real": {}}, ipcs=[2], full_data={"epochs": 0})
    suite = write_suite(raw, root / "suite.yaml")
    out = root / "out"
    assert main(["run", "--suite", str(suite), "--out", str(out), "--no-check"]) == 0
    assert main(["export", "random-real", "--suite", str(suite), "--out", str(out), "--ipc", "2"]) == 0
    return suite, out, out / "exports" / "tiny-random-real-ipc2"


@slow
def test_an_exported_set_evaluated_back_gives_identical_rows(board, capsys):
    suite, out, export = board
    original = _rows(out, "random-real")
    assert len(original) == 2 * 2  # two protocols × two seeds
    argv = ["evaluate", "--suite", str(suite), "--out", str(out), "--set", str(export), "--name", "rr-roundtrip"]
    assert main([*argv, "--reported", "41.5"]) == 0
    back = _rows(out, "rr-roundtrip")
    assert {_cell(r) for r in back} == {_cell(r) for r in original}
    by_cell = {_cell(r): r for r in original}
    for row in back:
        assert _outcome(row) == _outcome(by_cell[_cell(row)]), _cell(row)
        assert row["kind"] == "external" and row["overlap"] == 0 and row["set_source"] == str(export)
        assert row["reported_accuracy"] == pytest.approx(0.415)
        assert row["config_hash"] == row["set_sha256"][:12] and len(row["set_sha256"]) == 64
    # the copy in the store is the original's pixels, under the manifest that records its source and hash
    (made,) = out.glob("distilled/tiny/rr-roundtrip/*/ipc2")
    manifest = Manifest.read(made)
    assert manifest.external["sha256"] == back[0]["set_sha256"] and manifest.external["source"] == str(export)
    (first,) = out.glob("distilled/tiny/random-real/*/ipc2")
    classes = Manifest.read(first).classes
    assert all(torch.equal(a, b) for a, b in zip(load_set(first, classes, 1), load_set(made, classes, 1)))
    # a rerun trains nothing and adds no row
    capsys.readouterr()
    before = (out / "results" / "tiny.jsonl").read_bytes()
    assert main(argv) == 0
    assert "4 trials, 0 to run" in capsys.readouterr().out
    assert (out / "results" / "tiny.jsonl").read_bytes() == before
    # a corrected reported accuracy on a rerun: kept with the set, shown beside, nothing trained
    assert main([*argv, "--reported", "43"]) == 0
    said = capsys.readouterr().out
    assert "4 trials, 0 to run" in said and "(reported 43.00%: measured − reported" in said
    assert Manifest.read(made).external["reported_accuracy"] == pytest.approx(0.43)
    assert (out / "results" / "tiny.jsonl").read_bytes() == before
    assert list((out / "cache").glob("test-fingerprints-*.npz"))  # the test split's hashes, kept for the next


@slow
def test_a_dd_ranking_tensor_set_and_the_python_api(board, tmp_path):
    """The same images as DD-Ranking holds them (a folder with images.pt: float, normalised by the dataset's mean
    and std, class-major, no labels.pt) hash as the export does and score the same; so do they through
    `evaluate_set` as uint8 with class names."""
    suite, out, export = board
    (first,) = out.glob("distilled/tiny/random-real/*/ipc2")
    classes = Manifest.read(first).classes
    images, labels = load_set(first, classes, 1)
    assert torch.equal(labels, torch.arange(10).repeat_interleave(2))  # class-major, as DD-Ranking's default
    folder = tmp_path / "dm" / "FashionMNIST" / "IPC2"
    folder.mkdir(parents=True)
    torch.save((images.float() / 255 - 0.2861) / 0.3530, folder / "images.pt")
    argv = ["evaluate", "--suite", str(suite), "--out", str(out), "--set", str(folder), "--name", "rr-tensor"]
    assert main([*argv, "--class-order", "suite", "--tensor-normalization", FASHION_NORM]) == 0
    tensor_rows, exported = _rows(out, "rr-tensor"), _rows(out, "rr-roundtrip")
    assert tensor_rows and {r["set_sha256"] for r in tensor_rows} == {r["set_sha256"] for r in exported}
    by_cell = {_cell(r): r for r in _rows(out, "random-real")}
    assert all(_outcome(r) == _outcome(by_cell[_cell(r)]) for r in tensor_rows)

    rows = evaluate_set(
        str(suite),
        images,
        [classes[i] for i in labels],
        name="rr-api",
        out=out,
        protocols=["hard-label"],
    )
    assert [r["protocol"] for r in rows] == ["hard-label"] * 2 and rows[0]["set_source"] == "python"
    assert rows[0]["set_sha256"] == tensor_rows[0]["set_sha256"]
    assert all(_outcome(r) == _outcome(by_cell[_cell(r)]) for r in rows)
    with pytest.raises(ExternalSetError, match="--class-order"):  # indices without an order: never guessed
        evaluate_set(str(suite), images, labels, name="rr-api", out=out)


def test_the_leak_check_finds_copies_and_passes_neighbours():
    """The two-stage test (hash within HAMMING_THRESHOLD bits, then mean-centred thumbnails within THUMB_MAD_THRESHOLD
    grey levels): test images, exact, re-encoded as JPEG at quality 90, brightened by 12 levels or with ±6 levels of
    noise, are found; 200 training images whose hashes lie near a test image's are not."""
    test = load_fashion_mnist(FASHION_ROOT, "test")
    train = load_fashion_mnist(FASHION_ROOT, "train")
    test_hashes, test_thumbs = fingerprints(test.images)
    train_hashes, _ = fingerprints(train.images[:3000])
    near = np.bitwise_count(train_hashes[:, None] ^ test_hashes[None, :]).min(1) <= HAMMING_THRESHOLD
    assert near.sum() > 200  # the hash alone would flag these: the thumbnail check is what passes them

    def jpeg(a):
        buffer = io.BytesIO()
        Image.fromarray(a).save(buffer, format="JPEG", quality=90)
        return np.asarray(Image.open(buffer))

    def brighter(a):
        return np.clip(a.astype(np.int16) + 12, 0, 255).astype(np.uint8)

    def noisy(a, k):
        noise = np.random.default_rng(k).integers(-6, 7, a.shape)
        return np.clip(a.astype(np.int16) + noise, 0, 255).astype(np.uint8)

    copies = [test.images[k, 0].numpy() for k in range(5)] + [jpeg(test.images[k, 0].numpy()) for k in range(5, 10)]
    copies += [brighter(test.images[k, 0].numpy()) for k in range(10, 13)]
    copies += [noisy(test.images[k, 0].numpy(), k) for k in range(13, 16)]
    neighbours = [train.images[i, 0].numpy() for i in np.nonzero(near)[0][:200]]
    stack = torch.from_numpy(np.stack(copies + neighbours)[:, None])
    ext = ExternalSet("test", ["coat"], stack, torch.zeros(len(stack), dtype=torch.long), [], [len(stack)])
    found = leaks(ext, test_hashes, test_thumbs)
    assert sorted({i for i, _ in found}) == list(range(len(copies))), found
    assert THUMB_MAD_THRESHOLD == 3.0 and HAMMING_THRESHOLD == 4  # docs/decisions.md states these


@slow
def test_row_keys_of_an_external_set_differ_from_the_originals(board):
    _, out, _ = board
    keys = [row_key(r) for r in _rows(out)]
    assert len(keys) == len(set(keys))


def _png_folder(root, images_by_class):
    for key, images in images_by_class.items():
        (root / key).mkdir(parents=True)
        for i, a in enumerate(images):
            Image.fromarray(a).save(root / key / f"{i:04d}.png")
    return root


def test_classes_map_by_wnid_by_name_and_by_an_explicit_order():
    keys = read_class_list(CLASSES_DIR / "imagewoof.txt")
    names = read_class_list(CLASSES_DIR / "imagewoof.names.txt")
    by_name = map_classes(sorted(names), keys, names, None, "imagefolder")
    assert by_name["Shih-Tzu"] == "n02086240" and len(set(by_name.values())) == 10
    assert map_classes([n.lower().replace(" ", "_") for n in names], keys, names, None, "imagefolder")
    order = list(reversed(keys))  # index i is the i-th line of the order, whatever the suite's order
    by_index = map_classes([str(i) for i in range(10)], keys, names, order, "imagefolder")
    assert by_index["0"] == keys[-1] and by_index["9"] == keys[0]
    with pytest.raises(ExternalSetError, match="missing n02086240 \\(Shih-Tzu\\)"):
        map_classes(sorted(k for k in keys if k != "n02086240") + ["n01440764"], keys, names, None, "imagefolder")


def test_one_hash_for_the_same_pixels_in_any_container_and_overlap_allowed(tmp_path, tiny_suite, tiny_real):
    """A PNG folder and a uint8 .npz of the same pixels hash the same; an uneven set passes with --allow-uneven at
    its rounded mean IPC; a set holding test images passes with --allow-overlap, counted."""
    keys, names = suite_classes(tiny_suite.data)
    test = tiny_real.test
    by_class = {k: [test.images[i, 0].numpy() for i in test.indices_of(c)[:2]] for c, k in enumerate(keys)}
    folder = check_and_build(str(_png_folder(tmp_path / "pngs", by_class)), keys, names, 1, 28)
    stacked = np.stack([a for k in keys for a in by_class[k]])[:, None]
    np.savez(tmp_path / "set.npz", images=stacked, labels=np.repeat(np.arange(10), 2))
    tensor = check_and_build(str(tmp_path / "set.npz"), keys, names, 1, 28, order="suite")
    assert folder.sha256 == tensor.sha256 and torch.equal(folder.images, tensor.images)
    overlap, _ = check_leakage(folder, test, None, allow_overlap=True)
    assert overlap == 20
    by_class["coat"] = by_class["coat"][:1]
    uneven = check_and_build(str(_png_folder(tmp_path / "uneven", by_class)), keys, names, 1, 28, allow_uneven=True)
    assert uneven.ipc == 2 and uneven.counts[keys.index("coat")] == 1 and "uneven" in uneven.notes[0]


def test_a_reported_accuracy_given_after_the_rows_is_kept_with_the_set(tmp_path, tiny_suite, tiny_real):
    """`--reported` on a rerun that trains nothing: the set's manifest keeps it (the store is append-only), and the
    board's rows of that set carry it; another set's rows and the method rows do not."""
    keys, names = suite_classes(tiny_suite.data)
    test = tiny_real.test
    by_class = {k: [test.images[i, 0].numpy() for i in test.indices_of(c)[2:4]] for c, k in enumerate(keys)}
    ext = check_and_build(str(_png_folder(tmp_path / "pngs", by_class)), keys, names, 1, 28)
    first = store_set(ext, tmp_path / "out", "tiny", "mine", overlap=0)
    assert "reported_accuracy" not in first.external
    again = store_set(ext, tmp_path / "out", "tiny", "mine", overlap=0, reported=0.412)
    assert Manifest.read(again.path).external["reported_accuracy"] == 0.412
    assert Manifest.read(again.path).checksums == first.checksums  # the copy kept, only the label rewritten
    shutil.rmtree(Path(again.path) / keys[0])  # a damaged copy, repaired by a rerun that gives no --reported
    repaired = store_set(ext, tmp_path / "out", "tiny", "mine", overlap=0)
    assert repaired.external["reported_accuracy"] == 0.412 and repaired.checksums == first.checksums
    row = {"kind": "external", "method": "mine", "config_hash": ext.config_hash, "ipc": 2, "accuracy": 0.4}
    other = {**row, "config_hash": "0" * 12}
    method = {"kind": "method", "method": "herding", "config_hash": ext.config_hash, "ipc": 2, "accuracy": 0.5}
    shown = with_reported([row, other, method], [Manifest.read(again.path)])
    assert shown[0]["reported_accuracy"] == 0.412
    assert "reported_accuracy" not in shown[1] and "reported_accuracy" not in shown[2]
