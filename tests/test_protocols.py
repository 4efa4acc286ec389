"""Protocols as objects: the registry, what each declares, the recipe each supplies, and DD-Ranking's ARS over
the no-augmentation protocol."""

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from harness.core.identity import config_hash
from harness.models import protocols as P
from harness.models.training import train_student
from harness.pipeline import current_recipes
from harness.report.rows import aggregate, best_of_protocols
from harness.report.scores import augmentation_robust_scores


def test_the_registry_and_what_each_protocol_declares():
    assert P.list_protocols() == ["hard-label", "hard-label-no-aug", "soft-label"]
    hard, soft, plain = (
        P.get_protocol("hard-label")(),
        P.get_protocol("soft-label")(),
        P.get_protocol("hard-label-no-aug")(),
    )
    assert (hard.labels, hard.augmented, hard.reference, hard.ranked, hard.needs_teacher) == (
        "hard",
        True,
        True,
        True,
        False,
    )
    assert (soft.labels, soft.needs_teacher, soft.ranked) == ("soft", True, True)
    assert (plain.labels, plain.augmented, plain.reference, plain.ranked) == ("hard", False, False, False)
    with pytest.raises(KeyError, match="unknown protocol 'x'"):
        P.get_protocol("x")


def test_identity_is_the_hash_of_the_recipe_fields_only():
    # The defaults' hashes as the harness computed them before protocols were objects (HardLabelConfig and
    # SoftLabelConfig of evaluate.py): a recipe's identity is its fields, not its class.
    assert (P.HardLabel().identity(), P.SoftLabel().identity()) == ("1a1e49560f70", "b6c62117d705")
    # Fields added later (WHEN_SET, at their default) and those that change how, not what (NEVER) are left out.
    later = {f.name for f in dataclasses.fields(P.HardLabel()) if f.metadata in (P.WHEN_SET, P.NEVER)}
    earlier = {k: v for k, v in dataclasses.asdict(P.HardLabel()).items() if k not in later}
    assert P.HardLabel().identity() == config_hash(earlier)
    assert P.HardLabel().identity() != P.HardLabel(lr=0.02).identity()
    # The plain run is the augmented recipe less the augmentation fields: a different row.
    assert P.HardLabelNoAugmentation().identity() != P.HardLabel().identity()


@pytest.mark.parametrize("cls", [P.HardLabel, P.HardLabelNoAugmentation, P.SoftLabel])
def test_fields_added_later_enter_the_identity_only_when_set(cls):
    """A field added after results were stored (metadata WHEN_SET) leaves the identity of a recipe at its default
    as it was, so adding a setting retires no row; set away from its default it makes another row."""
    later = [f for f in dataclasses.fields(cls) if f.metadata == P.WHEN_SET]
    assert {"input_size", "test_resize"} <= {f.name for f in later}
    base = cls().identity()
    for f in later:
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        assert cls(**{f.name: default}).identity() == base, f.name  # spelt out at its default: the same row
        other = {
            bool: lambda v: not v,
            int: lambda v: v + 1,
            float: lambda v: v * 2 + 1,
            str: lambda v: "random",
            dict: lambda v: {"convnet3": {"lr": 0.5}},
        }.get(type(default), lambda v: 300)(default)
        other = "bf16" if f.name == "precision" else other  # its one value that is not the default's
        # A test view's resize comes with the crop it is resized for.
        changed = cls(**{f.name: other, **({"input_size": 224} if f.name == "test_resize" else {})})
        assert changed.identity() != base and f.name in changed.identity_fields(), f.name
    # The fields that were there from the start are in the identity even at their default.
    assert "lr" in cls().identity_fields() and not any(f.name in cls().identity_fields() for f in later)


@pytest.mark.parametrize("cls", [P.HardLabel, P.SoftLabel])
def test_a_recipe_searched_for_one_student_changes_only_that_students_identity(cls):
    """Rows are keyed by the recipe each student trains under: publishing ResNet-18's searched lr must not
    retire the ConvNet-3 rows of the same protocol."""
    searched = cls(per_student={"resnet18": {"lr": 0.5}})
    assert searched.for_student("convnet3").identity() == cls().identity()
    assert searched.for_student("resnet18").identity() != cls().identity()
    assert searched.for_student("resnet18").lr == 0.5
    # The board shows each student's rows under that student's own recipe only.
    suite = SimpleNamespace(students=["convnet3"], protocols={"p": searched}, full_data=SimpleNamespace(epochs=0))
    recipes = current_recipes(suite, SimpleNamespace(protocol_hash=lambda p: p.identity()), [{"student": "resnet18"}])
    assert recipes == {("convnet3", cls().identity()), ("resnet18", searched.for_student("resnet18").identity())}


def test_roles_found_by_declaration_not_name():
    suite = {"a": P.HardLabel(), "b": P.SoftLabel(), "c": P.HardLabelNoAugmentation()}
    assert P.score_protocols(suite) == {"hard": "a", "soft": "b", "no_aug": "c"}
    assert P.score_protocols({"a": P.HardLabel()}) == {"hard": "a", "soft": "a", "no_aug": None}
    # Without a reference protocol the full-data row and HLR still train on the reference recipe's defaults.
    assert P.score_protocols({"b": P.SoftLabel()})["hard"] == "hard-label"
    assert not isinstance(P.HardLabel(), P.HardLabelNoAugmentation)  # siblings: one cannot pass for the other
    with pytest.raises(NotImplementedError):
        P.SoftLabel().full_data(3, 128)
    assert P.reference_protocol({}) == P.HardLabel() and P.teacher_protocol({}) == P.SoftLabel()
    full = P.reference_protocol(suite).full_data(3, 128)
    assert (full.epochs_for(1), full.epochs_for(10_000), full.batch_size) == (3, 3, 128)


def test_the_plain_run_trains_on_the_images_as_they_are(monkeypatch):
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    gen = torch.Generator().manual_seed(0)
    images, targets = P.HardLabelNoAugmentation().batch(x, y, gen, 3)
    assert torch.equal(images, x) and torch.equal(targets, torch.nn.functional.one_hot(y, 3).float())
    augmented, _ = P.HardLabel().batch(x, y, torch.Generator().manual_seed(0), 3)
    assert not torch.equal(augmented, x)

    def no_augmentation(*args, **kwargs):
        raise AssertionError("the plain protocol augmented a batch")

    monkeypatch.setattr(P, "augment", no_augmentation)
    monkeypatch.setattr(P, "cutmix", no_augmentation)
    images = torch.randint(0, 256, (20, 1, 12, 12), dtype=torch.uint8)
    labels = torch.arange(20) % 4
    plain = P.HardLabelNoAugmentation(epochs={5: 2}, batch_size=8, student_kwargs={"convnet3": {"width": 8}})
    result = train_student("convnet3", images, labels, images, labels, 4, 5, plain, 0)
    assert result["epochs"] == 2 and 0 <= result["accuracy"] <= 1


def _row(method, protocol, seed, accuracy):
    return {
        "kind": "measured",
        "method": method,
        "config_hash": "h",
        "ipc": 10,
        "student": "s",
        "protocol": protocol,
        "seed": seed,
        "accuracy": accuracy,
        "train_seconds": 1.0,
        "distill_seconds_per_image": 0.1,
        "peak_memory_bytes": 1,
    }


def test_augmentation_robust_score_as_dd_ranking_computes_it():
    rows = []
    accs = {
        ("m", "hard-label"): [0.70, 0.72],
        ("m", "hard-label-no-aug"): [0.60, 0.64],
        ("base", "hard-label"): [0.65, 0.66],
        ("base", "hard-label-no-aug"): [0.50, 0.52],
    }
    for (method, protocol), values in accs.items():
        rows += [_row(method, protocol, seed, a) for seed, a in enumerate(values)]
    ars = augmentation_robust_scores(rows, None, "base", "hard-label", "hard-label-no-aug").set_index("method")

    def expected(seed):
        beta = 0.5 * (accs["m", "hard-label"][seed] - accs["base", "hard-label"][seed]) + 0.5 * (
            accs["m", "hard-label-no-aug"][seed] - accs["base", "hard-label-no-aug"][seed]
        )
        return (math.exp(beta) - math.exp(-1)) / (math.e - math.exp(-1))

    assert ars.loc["m", "ars"] == pytest.approx((expected(0) + expected(1)) / 2)
    assert ars.loc["m", "ars_std"] == pytest.approx(abs(expected(0) - expected(1)) / math.sqrt(2))
    assert ars.loc["m", "seeds"] == 2
    # The baseline against itself: both differences 0, the score of "no better than random".
    assert ars.loc["base", "ars"] == pytest.approx((1 - math.exp(-1)) / (math.e - math.exp(-1)))
    # The plain run never stands for a setting in "best of protocols", however it scores.
    rows.append(_row("m", "hard-label-no-aug", 2, 0.99))
    best = best_of_protocols(aggregate(rows))
    assert set(best["protocol"]) == {"hard-label"}
