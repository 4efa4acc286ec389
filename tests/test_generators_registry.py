"""Generators and teacher sources are registered plug-ins: the registries find every kind, a suite naming an
unknown one fails in the one line it always did, and no module outside the registering classes names a kind."""

import re
from pathlib import Path

import pytest
import yaml

from harness.config.loader import load_suite
from harness.config.schema import BENCHMARKS_DIR, SuiteError, TeacherConfig
from harness.models.generators import generator_for, get_generator, list_generators
from harness.models.generators.pixel_dit import PixelDiTGenerator
from harness.models.generators.pretrained_dit import DiTGenerator
from harness.models.teacher_sources import (
    CheckpointTeacher,
    RecipeTeacher,
    TimmTeacher,
    TrainedTeacher,
    list_teacher_kinds,
    teacher_source,
)
from harness.models.teachers import TorchvisionRecipe

ROOT = Path(__file__).resolve().parent.parent


def test_the_registries_find_every_kind():
    assert list_generators() == ["mar", "pixel-dit", "dit", "stable-diffusion"]
    assert get_generator("pixel-dit") is PixelDiTGenerator and get_generator("dit") is DiTGenerator
    with pytest.raises(KeyError, match="unknown generator 'magic'; known: dit, mar, pixel-dit, stable-diffusion"):
        get_generator("magic")
    assert list_teacher_kinds() == ["trained", "timm"]
    for config, source in (
        (TeacherConfig("trained"), TrainedTeacher),
        (TeacherConfig("trained", weights="observer.pth"), CheckpointTeacher),
        (TeacherConfig("trained", recipe=TorchvisionRecipe()), RecipeTeacher),
        (TeacherConfig("timm", arch="resnet18", weights="resnet18.tv_in1k"), TimmTeacher),
    ):
        assert type(teacher_source(config)) is source
    with pytest.raises(KeyError, match="unknown teacher kind 'magic'"):
        teacher_source(TeacherConfig("magic"))


def test_the_plan_reads_the_kinds_costs():
    """What prepare trains, as the plan prices it: the pixel DiT's samples; a pretrained DiT nothing."""
    fashion, imagenet = load_suite("fashion-mnist", check_files=False), load_suite("imagenet", check_files=False)
    samples, what = generator_for(fashion.backbone).prepare_training()
    assert samples == fashion.backbone.train.steps * fashion.backbone.train.batch_size
    assert what == f"the pixel DiT, {fashion.backbone.train.steps:,} steps"
    assert generator_for(imagenet.backbone).prepare_training() is None
    assert teacher_source(imagenet.teacher).pretrained and teacher_source(imagenet.teacher).training_epochs() is None
    assert teacher_source(fashion.teacher).training_epochs() == fashion.teacher.train.epochs


def _load(tmp_path, mutate):
    raw = yaml.safe_load((BENCHMARKS_DIR / "fashion-mnist.yaml").read_text())
    mutate(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError) as err:
        load_suite(str(path), check_files=False)
    return str(err.value).removeprefix(f"{path}: ")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda r: r["backbone"].update(kind="magic"),
            "backbone.kind: must be mar or pixel-dit or dit or stable-diffusion, got 'magic'",
        ),
        (
            lambda r: r["backbone"].update(kind="dit"),
            "backbone.pretrained: required for kind dit: a hub id or a local directory",
        ),
        (  # a kind's required fields come before the fields every kind has, as they always did
            lambda r: r["backbone"].update(kind="dit", dtype="float64"),
            "backbone.pretrained: required for kind dit: a hub id or a local directory",
        ),
        (lambda r: r["backbone"]["train"].update(heads=3), "backbone.train.heads: must divide width 128, got 3"),
        (lambda r: r["teacher"].update(kind="magic"), "teacher.kind: must be trained or timm, got 'magic'"),
        (
            lambda r: r["teacher"].update(kind="timm", recipe={}),
            "teacher.recipe: only a teacher of kind trained is trained with a recipe",
        ),
    ],
)
def test_a_kinds_mistake_is_the_one_line_it_was(tmp_path, mutate, message):
    assert _load(tmp_path, mutate) == message


# A string that is a kind but not one: identity.py's library versions name the timm package.
NOT_A_KIND = {"harness/core/identity.py": '"timm": timm.__version__'}


def test_kinds_are_named_only_where_they_register():
    """`grep -rn '"pixel-dit"\\|"dit"\\|"trained"\\|"timm"' harness/` finds the registering lines alone."""
    kinds = re.compile("|".join(f'"{re.escape(k)}"' for k in list_generators() + list_teacher_kinds()))
    found = []
    for path in sorted((ROOT / "harness").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if (
                kinds.search(line)
                and not re.fullmatch(r'\s*kind = "[\w-]+"', line)
                and NOT_A_KIND.get(rel, "\0") not in line
            ):
                found.append(f"{rel}:{i}: {line.strip()}")
    assert not found, found
