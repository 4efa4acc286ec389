"""The students' GPU fast paths (issue 29, item 3): bf16 autocast keyed in the protocol's identity (and fp32 keyed
as every row before it), the device's precision, and bf16's accuracy against fp32 on a real set."""

import dataclasses
import statistics

import pytest
import torch

from harness.config.loader import load_suite
from harness.models.protocols import HardLabel, SoftLabel
from harness.models.students import create_student
from harness.models.training import train_student


def test_fp32_hashes_as_before_and_bf16_is_a_recipe_of_its_own():
    suite = load_suite("fashion-mnist")
    for protocol in suite.protocols.values():
        fp32 = dataclasses.replace(protocol, precision="fp32")
        assert fp32.identity() == protocol.identity() == protocol.on_device("cpu").identity()
        bf16 = protocol.on_device("cuda")
        assert bf16.precision == "bf16" and bf16.identity() != protocol.identity()
        # Neither channels-last nor compile changes the recipe's key; a precision set by the suite stays on CUDA.
        tuned = dataclasses.replace(protocol, channels_last=True, compile=True)
        assert tuned.identity() == protocol.identity()
        assert fp32.on_device("cuda").identity() == protocol.identity()
    # The committed store's recipes (tests/test_committed_store.py pins the rows): these hashes are theirs.
    assert suite.protocols["hard-label"].identity() == "a5400fb894a8"
    assert suite.protocols["soft-label"].identity() == "f3b821ef047f"


def test_a_precision_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="precision"):
        HardLabel(precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        SoftLabel(precision="half")


def test_bf16_trains_and_relabels_in_bf16(tiny_real):
    """A soft-label run under bf16 autocast: the row says so, the master weights stay fp32."""
    train, test = tiny_real.train, tiny_real.test
    idx = torch.cat([train.indices_of(c)[:2] for c in range(10)])
    teacher = create_student("convnet3", 10, 1, 28, width=8).eval()
    recipe = SoftLabel(epochs={10: 2}, student_kwargs={"convnet3": {"width": 8}}, precision="bf16")
    result = train_student(
        "convnet3",
        train.load(idx),
        train.labels[idx],
        test.load(torch.arange(200)),
        test.labels[:200],
        10,
        2,
        recipe,
        seed=0,
        teacher=teacher,
    )
    assert result["precision"] == "bf16" and not result["channels_last"] and 0 <= result["accuracy"] <= 1


@pytest.mark.slow
def test_bf16_accuracy_within_the_seeds_spread_of_fp32(tiny_real):
    """ConvNet-3 (width 64) on a Fashion-MNIST IPC 10 set of real images, the suite's hard-label recipe (100
    epochs), 3 seeds: bf16 autocast's mean test accuracy is within the seeds' standard deviation of fp32's."""
    torch.set_num_threads(1)
    suite = load_suite("fashion-mnist")
    train, test = tiny_real.train, tiny_real.test
    g = torch.Generator().manual_seed(0)
    idx = torch.cat(
        [train.indices_of(c)[torch.randperm(len(train.indices_of(c)), generator=g)[:10]] for c in range(10)]
    )
    images, labels = train.load(idx), train.labels[idx]
    test_images, test_labels = test.load(torch.arange(len(test))), test.labels
    accuracy = {}
    for precision in ("fp32", "bf16"):
        recipe = dataclasses.replace(suite.protocols["hard-label"], precision=precision)
        rows = train_student("convnet3", images, labels, test_images, test_labels, 10, 10, recipe, [0, 1, 2])
        accuracy[precision] = [r["accuracy"] for r in rows]
    spread = max(statistics.stdev(accuracy["fp32"]), statistics.stdev(accuracy["bf16"]))
    gap = abs(statistics.mean(accuracy["bf16"]) - statistics.mean(accuracy["fp32"]))
    print(f"fp32 {accuracy['fp32']}, bf16 {accuracy['bf16']}: |Δ mean| {gap:.4f}, seeds' std {spread:.4f}")
    assert gap <= spread
