"""The full-data reference row trains until its validation accuracy stops improving (harness/models/training.py
`Plateau`), on the validation split carved from the training set, and keeps the best epoch's weights; a run
takes the committed row for the same key instead of training it again."""

from dataclasses import asdict

import pytest
import torch

from harness.core.identity import FULL_DATA
from harness.core.store import ResultStore
from harness.models.protocols import HardLabel
from harness.models.training import Plateau, train_student
from harness.stages.evaluate import EvalTrial, adopt_committed_references


def test_plateau_drops_the_lr_then_stops_and_keeps_the_best_epoch():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    plateau = Plateau(opt, patience=2, drops=1, factor=0.2)
    accuracies = [0.5, 0.6, 0.55, 0.58, 0.59, 0.57, 0.56]
    ended = []
    for i, acc in enumerate(accuracies):
        with torch.no_grad():
            model.weight.fill_(i)  # the weights of epoch i + 1
        ended.append(plateau.ended(acc, model))
    # Epoch 2 is the best; two epochs without a new best drop the lr once; two more end training.
    assert ended == [False, False, False, False, False, True, True][: len(ended)]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    assert plateau.best_epoch == 2 and plateau.best == 0.6
    assert torch.all(plateau.best_state["weight"] == 1)


def test_full_data_recipe_follows_validation(tiny_real):
    train, val, test = tiny_real.train, tiny_real.val, tiny_real.test
    idx = torch.arange(0, len(train), max(1, len(train) // 600))
    recipe = HardLabel(student_kwargs={"convnet3": {"width": 8}}).full_data(40, 64, patience=1, drops=0)
    assert recipe.plateau_rule() == (1, 0, 0.2) and recipe.identity() != HardLabel().full_data(40, 64).identity()
    validation = (val.load(torch.arange(len(val))), val.labels)
    result = train_student(
        "convnet3",
        train.load(idx),
        train.labels[idx],
        test.load(torch.arange(200)),
        test.labels[:200],
        10,
        0,
        recipe,
        0,
        validation=validation,
    )
    assert 2 <= result["epochs"] < 40 and 1 <= result["best_epoch"] <= result["epochs"] - 1
    assert 0.1 < result["val_accuracy"] <= 1
    with pytest.raises(ValueError, match="validation"):
        train_student(
            "convnet3",
            train.load(idx),
            train.labels[idx],
            test.load(torch.arange(10)),
            test.labels[:10],
            10,
            0,
            recipe,
            0,
        )


def _trial(method, protocol_hash, student="convnet3"):
    return EvalTrial("fashion-mnist", method, "ab12", 0, "", student, "hard-label", protocol_hash, 0, 0.0, 0)


def test_a_committed_full_data_row_is_taken_for_its_exact_key_only(tmp_path, capsys):
    committed = tmp_path / "committed"
    committed.mkdir()
    reference = {**asdict(_trial(FULL_DATA, "recipe1")), "accuracy": 0.91, "kind": "measured", "finished_at": 0.0}
    distilled = {**reference, "method": "random-real", "ipc": 10}
    other_recipe = {**reference, "protocol_hash": "recipe0", "accuracy": 0.86}
    for row in (reference, distilled, other_recipe):
        ResultStore(committed / "fashion-mnist.jsonl").append(row)
    store = ResultStore(tmp_path / "run" / "fashion-mnist.jsonl")
    trials = [
        _trial(FULL_DATA, "recipe1"),
        _trial(FULL_DATA, "recipe1", student="resnet18"),
        _trial("random-real", "recipe1"),
    ]
    trials[2].ipc = 10
    assert adopt_committed_references(trials, store, committed) == 1
    assert store.has(trials[0].key()) and not store.has(trials[1].key()) and not store.has(trials[2].key())
    [row] = store.read()
    assert row["accuracy"] == 0.91 and row["adopted_from"].endswith("fashion-mnist.jsonl")
    assert "full-data convnet3: 91.00% taken from" in capsys.readouterr().out
    assert adopt_committed_references(trials, store, committed) == 0  # already there: nothing copied twice
    assert adopt_committed_references(trials, ResultStore(tmp_path / "b.jsonl"), None) == 0
    assert adopt_committed_references(trials, ResultStore(tmp_path / "c.jsonl"), tmp_path / "absent") == 0
