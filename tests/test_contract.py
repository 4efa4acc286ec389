"""The contract every registered method keeps, checked over the registry so that a new method gets these
tests for free: on a tiny setting it makes exactly IPC images per class (after its choice across classes, if it
makes one), float in [0, 1], of the suite's
channels and size; the same task gives the same images; its config defaults are the values its module
docstring cites under "Defaults"; what it declares it needs is what the harness can provide."""

import ast
import dataclasses
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from harness.config.loader import load_suite
from harness.stages.distill import method_identity
from methods import get_method, list_methods
from methods.base import NEEDS, MethodContext
from tests.factories import (
    TINY_MAR,
    real_task,
    stand_in_prepared,
    tiny_bn_teacher,
    tiny_latent_dit,
    tiny_mar_backbone,
    tiny_teacher,
)

# Cost knobs common to the methods, shrunk where a method has them; a method without them runs at its defaults.
# Shrunk with `steps`: the settings that index into the chain (MGD3's stop, D3HR's inverted and starting steps), and
# D3HR's 10,000 batches of candidate groups.
CHEAP = {
    "steps": 4,
    "iterations": 2,
    "bo_init": 2,
    "bo_iterations": 1,
    "num_iter": 2,
    "stop_t": 1,
    "domain_steps": 2,
    "sampling_start_step": 1,
    "group_batches": 2,
}
IPC, CLASSES = 2, (0, 7)


def documented_defaults(cls) -> dict:
    """The `name = value` lines of the "Defaults" block of the method's module docstring."""
    doc = sys.modules[cls.__module__].__doc__ or ""
    block = re.search(r"^Defaults \(pinned by tests/test_contract.py\):[^\n]*\n((?:    \S[^\n]*\n?)*)", doc, re.M)
    assert block, f"{cls.name}: its module docstring has no 'Defaults (pinned by tests/test_contract.py):' block"
    out = {}
    for line in block.group(1).splitlines():
        m = re.match(r"^    (\w+) = (.+?)(?:\s{2,}.*)?$", line)
        assert m, f"{cls.name}: cannot read defaults line {line!r}"
        out[m.group(1)] = ast.literal_eval(m.group(2))
    return out


@pytest.fixture(scope="module")
def context():
    teacher = tiny_teacher()
    return MethodContext(
        torch.device("cpu"),
        backbone=tiny_latent_dit(),
        teacher=teacher,
        relabel_teacher=teacher,
        teacher_val_accuracy=0.9,
        bn_teacher=tiny_bn_teacher(),
    )


def _tasks(tiny_real, seed):
    return [real_task(tiny_real, label, IPC, seed + label, n_real=30) for label in CLASSES]


@pytest.mark.parametrize("name", list_methods())
def test_defaults_are_the_documented_ones(name):
    cls = get_method(name)
    config = cls.default_config()
    fields = {f.name for f in dataclasses.fields(config)}
    documented = documented_defaults(cls)
    assert set(documented) == fields, f"{name}: documented {sorted(documented)} vs fields {sorted(fields)}"
    # A variant is its family's documented defaults with its own overrides.
    assert dataclasses.asdict(config) == {**documented, **cls.defaults}


# Stand-in model hashes for computing sets' keys without preparing any model.
PREPARED = stand_in_prepared(backbone_hash="b", teacher_hash="t", relabel_hash="r", teacher_val_accuracy=0.9)
SUITE_FILES = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.yaml"))


@pytest.fixture(scope="module")
def suites():
    """Every suite under each of its profiles: where variants are listed beside their families."""
    loaded = []
    for path in SUITE_FILES:
        profiles = yaml.safe_load(path.read_text()).get("profiles") or {}
        loaded += [load_suite(path.stem, profile, check_files=False) for profile in ["full", *profiles]]
    return loaded


@pytest.mark.parametrize("name", list_methods())
def test_declarations_are_ones_the_harness_can_meet(name, suites):
    cls = get_method(name)
    config = cls.default_config()
    assert cls.needs_for(config) <= NEEDS
    for field in cls.search_space:
        assert hasattr(config, field), f"{name}: search_space names {field}, not a config field"
    shared = cls.seed_identity(config)
    # A paired variant draws its family's draws, whatever else it reads, on the same generator (a `-sd` row
    # samples another model, at its paper's unmapped guidance: its draws are its own).
    if cls.family and cls.paired_switches and cls.backbone_kind == get_method(cls.family).backbone_kind:
        assert shared == get_method(cls.family).seed_identity(get_method(cls.family).default_config())
        for suite in suites:
            if name in suite.methods and cls.family in suite.methods:
                assert method_identity(suite, PREPARED, name)[2] == method_identity(suite, PREPARED, cls.family)[2]


def test_a_methods_revision_enters_its_sets_hash_and_its_variants(monkeypatch, suites):
    """(Revision 0 stays out of it: tests/test_committed_store.py pins the committed sets' hashes.)"""
    fashion = next(s for s in suites if s.name == "fashion-mnist" and "patch-selection-teacher-cluster" in s.methods)
    names = ("herding", "patch-selection", "patch-selection-teacher-cluster")
    before = {n: method_identity(fashion, PREPARED, n) for n in names}
    monkeypatch.setattr(get_method("herding"), "revision", 1)
    revised = method_identity(fashion, PREPARED, "herding")
    assert revised[1] != before["herding"][1] and revised[2] == f"herding/{revised[1]}"
    # A family's revision reaches a variant that has its own.
    monkeypatch.setattr(get_method("patch-selection"), "revision", 1)
    for n in names[1:]:
        assert method_identity(fashion, PREPARED, n)[1] != before[n][1]


@pytest.mark.parametrize("name", list_methods())
def test_makes_ipc_images_per_class_deterministically(name, context, tiny_real):
    cls = get_method(name)
    config = cls.default_config()
    config = dataclasses.replace(config, **{k: v for k, v in CHEAP.items() if hasattr(config, k)})
    needs = cls.needs_for(config)
    tasks = _tasks(tiny_real, seed=11)
    if cls.backbone_kind == "mar":  # a method on MAR is handed the suite's MAR backbone: the tiny one here
        context = dataclasses.replace(
            context, backbone=tiny_mar_backbone(dataclasses.replace(TINY_MAR, num_classes=10))
        )
    if "real_images" not in needs:
        tasks = [dataclasses.replace(t, real=None) for t in tasks]
    first = [cls(config, context).distill_class(t) for t in tasks]
    again = [cls(config, context).distill_class(t) for t in tasks]
    if cls.selects_across_classes(config):  # candidates first, then the choice across classes keeps IPC of each
        assert all(len(c) == cls.candidates_per_class(config, IPC) for c in first)
        first, again = (
            [c[k] for c, k in zip(made, cls(config, context).select_across_classes(tasks, made))]
            for made in (first, again)
        )
    for images, repeat in zip(first, again):
        assert images.shape == (IPC, tiny_real.channels, tiny_real.image_size, tiny_real.image_size)
        assert images.dtype == torch.float32
        assert 0 <= images.min() and images.max() <= 1
        assert torch.equal(images, repeat)


def test_a_method_missing_what_it_needs_says_so():
    with pytest.raises(ValueError, match="needs backbone"):
        get_method("diffusion")(None, MethodContext())


def test_a_variant_is_one_line_over_its_family():
    from methods import register_variant

    cao2, oss_only = get_method("cao2"), get_method("cao2-oss-only")
    assert oss_only.Config is cao2.Config and oss_only.defaults == {"clo": False} and oss_only.family == "cao2"
    assert oss_only.seed_identity(oss_only.default_config()) == cao2.seed_identity(cao2.default_config())
    with pytest.raises(TypeError, match="has no field nope"):
        register_variant("cao2-typo", cao2, nope=1)
    assert "cao2-typo" not in list_methods()
