"""Bad input as a new user types it: every case is one line naming the field on stderr, exit 2, within seconds,
before any compute (nothing written under --out, Ray not started), and the result store's bytes unchanged.

A case is one change to tests/tiny-suite.yaml (its parsed mapping or its text) and/or extra command-line
arguments; add a line to CASES to grow the table. Cases run in-process through `harness.cli.main`; one runs
the real entry point, `python benchmark.py`, in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import ray
import tomllib
import torch
import yaml
from PIL import Image

from harness.cli import main
from harness.config.loader import load_suite
from harness.config.schema import SuiteError
from harness.core.identity import CLASSES_DIR, read_class_list
from harness.flags import precheck
from harness.models.data import FASHION_MNIST_CLASSES, load_fashion_mnist
from harness.runtime.preflight import check_real_image_counts
from tests.factories import FASHION_ROOT, broken_image_folder

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
BASE = TESTS / "tiny-suite.yaml"
# A row as the store holds them: its bytes must survive every bad run.
ROW = {
    "suite": "tiny",
    "method": "random-real",
    "config_hash": "0123456789ab",
    "ipc": 1,
    "student": "convnet3",
    "protocol": "hard-label",
    "protocol_hash": "ba9876543210",
    "seed": 0,
    "accuracy": 0.5,
    "kind": "measured",
}


@dataclass
class Case:
    name: str
    expect: str  # the field (or flag) the one line must name
    argv: tuple[str, ...] = ()  # extra arguments; "{out}" and "{store}" are filled in
    edit: Callable[[dict], object] | None = None  # a change to the parsed base suite
    text: Callable[[str], str] | None = None  # a change to its text (what a parsed mapping cannot hold)
    env: dict[str, str | None] | None = None  # environment variables to set (None: unset)


def _set(path: str, value):
    """An edit setting the dotted `path` of the suite to `value`."""

    def edit(raw):
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return edit


_BROKEN = tempfile.TemporaryDirectory(prefix="ddbench-broken-")  # made when a case first needs it; gone at exit


def _broken_images(raw):
    """An edit pointing the suite at a two-class ImageFolder holding a truncated PNG and a garbage .jpg."""
    raw["data"] = {
        "format": "imagefolder",
        "root": str(broken_image_folder(Path(_BROKEN.name))),
        "classes": "auto",
        "test_dir": "test",
        "image_size": 28,
        "val_per_class": 1,
    }


CASES = [
    # YAML itself
    Case(
        "duplicate top-level key",
        "seeds: duplicate key",
        text=lambda t: t.replace("seeds: 2\n", "seeds: 2\nseeds: 3\n"),
    ),
    Case(
        "duplicate nested key",
        "data.root: duplicate key",
        text=lambda t: t.replace("  image_size: 28\n", "  image_size: 28\n  root: /tmp\n"),
    ),
    Case(
        "duplicate key in a list item",
        "cross_arch.teachers[0].arch: duplicate key",
        text=lambda t: t.replace("{kind: trained, arch: convnet3,", "{kind: trained, arch: convnet3, arch: resnet18,"),
    ),
    Case(
        "unclosed bracket",
        "line 14, column 48: not valid YAML",
        text=lambda t: t.replace("train: {sample_size", "train: [sample_size"),
    ),
    Case("tab indentation", "line ", text=lambda t: t.replace("  format: idx", "\tformat: idx")),
    Case("empty file", "top level", text=lambda t: ""),
    Case("a list at the top", "top level", text=lambda t: "- name: tiny\n"),
    # the suite's own fields
    Case("unknown top-level field", "colour: unknown field", edit=_set("colour", "red")),
    Case("unsafe name: path separators", "name:", edit=_set("name", "../elsewhere/tiny")),
    Case("unsafe name: slash", "name:", edit=_set("name", "a/b")),
    Case("unsafe name: empty", "name:", edit=_set("name", "")),
    Case("unsafe name: space", "name:", edit=_set("name", "my suite")),
    Case("name not a string", "name: expected a string", edit=_set("name", 7)),
    Case("seed not an integer", "seed: expected an integer", edit=_set("seed", "x")),
    Case("seeds 0 in the suite", "seeds: must be at least 1", edit=_set("seeds", 0)),
    Case("ipcs empty", "ipcs:", edit=_set("ipcs", [])),
    Case("ipcs not integers", "ipcs[0]: expected an integer", edit=_set("ipcs", [1.5])),
    Case("ipcs repeated", "ipcs: lists 1 more than once", edit=_set("ipcs", [1, 1])),
    Case(
        "students repeated", "students: lists convnet3 more than once", edit=_set("students", ["convnet3", "convnet3"])
    ),
    Case("unknown student", "students[0]: unknown student", edit=_set("students", ["resnet9000"])),
    Case("unknown method", "methods.magic: unknown method", edit=lambda r: r["methods"].update(magic={})),
    Case("unknown method field", "methods.diffusion.cfg: unknown field", edit=_set("methods.diffusion", {"cfg": 2})),
    Case("method steps 0", "methods.diffusion.steps: must be at least 1", edit=_set("methods.diffusion", {"steps": 0})),
    Case("method batch_size 0", "methods.diffusion.batch_size", edit=_set("methods.diffusion", {"batch_size": 0})),
    # SRe2L matches a teacher's batch-norm statistics: the tiny suite's teachers (ConvNet-3, ResNetAP-10) have none.
    Case(
        "a batch-norm method without a batch-norm teacher",
        "methods.sre2l: needs a teacher with batch norm",
        edit=_set("methods.sre2l", {}),
    ),
    Case("unknown protocol", "protocols.magic: unknown protocol", edit=_set("protocols.magic", {})),
    Case("negative epochs", "protocols.hard-label.epochs:", edit=_set("protocols.hard-label.epochs", {2: -1})),
    Case("zero epochs", "protocols.soft-label.epochs:", edit=_set("protocols.soft-label.epochs", {2: 0})),
    Case(
        "zero epochs_beyond", "protocols.hard-label.epochs_beyond:", edit=_set("protocols.hard-label.epochs_beyond", 0)
    ),
    Case(
        "batch_size 0",
        "protocols.hard-label.batch_size: must be positive",
        edit=_set("protocols.hard-label.batch_size", 0),
    ),
    Case(
        "soft batch_size table 0",
        "protocols.soft-label.batch_size:",
        edit=_set("protocols.soft-label.batch_size", {1: 0}),
    ),
    Case("lr -1", "protocols.hard-label.lr: must be positive", edit=_set("protocols.hard-label.lr", -1)),
    Case("soft lr 0", "protocols.soft-label.lr: must be positive", edit=_set("protocols.soft-label.lr", 0)),
    Case(
        "negative weight decay",
        "protocols.hard-label.weight_decay",
        edit=_set("protocols.hard-label.weight_decay", -0.1),
    ),
    Case("cutmix_prob above 1", "protocols.hard-label.cutmix_prob", edit=_set("protocols.hard-label.cutmix_prob", 2)),
    Case(
        "milestone past the end",
        "protocols.hard-label.milestones",
        edit=_set("protocols.hard-label.milestones", [0.5, 1.5]),
    ),
    Case("temperature 0", "protocols.soft-label.temperature", edit=_set("protocols.soft-label.temperature", 0)),
    Case(
        "student option misspelt",
        "protocols.hard-label.student_kwargs.resnet18: resnet18 does not take",
        edit=_set("protocols.hard-label.student_kwargs", {"resnet18": {"chanels": [8, 8, 8, 8]}}),
    ),
    Case(
        "house student option misspelt",
        "protocols.hard-label.student_kwargs.convnet3: convnet3 does not take",
        edit=_set("protocols.hard-label.student_kwargs", {"convnet3": {"widht": 8}}),
    ),
    Case(
        "student options for no such student",
        "protocols.soft-label.student_kwargs.convnet: unknown student",
        edit=_set("protocols.soft-label.student_kwargs", {"convnet": {"width": 8}}),
    ),
    Case(
        "teacher option misspelt",
        "cross_arch.teachers[1].arch_kwargs: resnetap10 does not take {'widht': 4}: "
        "ResNetAP got unexpected options: widht",
        edit=lambda r: r["cross_arch"]["teachers"][1].update(arch_kwargs={"widht": 4}),
    ),
    Case("teacher epochs 0", "teacher.train.epochs: must be positive", edit=_set("teacher.train.epochs", 0)),
    Case("teacher batch_size 0", "teacher.train.batch_size", edit=_set("teacher.train.batch_size", 0)),
    Case("teacher lr -1", "teacher.train.lr: must be positive", edit=_set("teacher.train.lr", -1)),
    Case("teacher recipe lr -1", "teacher.recipe.lr: must be positive", edit=_set("teacher.recipe", {"lr": -1})),
    Case("teacher recipe epochs 0", "teacher.recipe.epochs", edit=_set("teacher.recipe", {"epochs": 0})),
    Case("teacher kind", "teacher.kind", edit=_set("teacher.kind", "magic")),
    Case(
        "cross-arch teacher epochs -1",
        "cross_arch.teachers[0].train.epochs",
        edit=lambda r: r["cross_arch"]["teachers"][0]["train"].update(epochs=-1),
    ),
    Case("cross-arch ipc 0", "cross_arch.ipc", edit=_set("cross_arch.ipc", 0)),
    Case("backbone steps 0", "backbone.train.steps: must be positive", edit=_set("backbone.train.steps", 0)),
    Case("backbone lr -1", "backbone.train.lr: must be positive", edit=_set("backbone.train.lr", -1)),
    Case("backbone batch_size 0", "backbone.train.batch_size", edit=_set("backbone.train.batch_size", 0)),
    Case("backbone size not the images'", "backbone.train.sample_size", edit=_set("backbone.train.sample_size", 32)),
    Case("backbone patch not dividing", "backbone.train.patch_size", edit=_set("backbone.train.patch_size", 5)),
    Case("backbone check 0 samples", "backbone.check_per_class", edit=_set("backbone.check_per_class", 0)),
    Case("full-data epochs -1", "full_data.epochs: must be ≥ 1, or 0", edit=_set("full_data.epochs", -1)),
    Case("full-data batch_size 0", "full_data.batch_size", edit=_set("full_data.batch_size", 0)),
    Case("full-data patience 0", "full_data.patience: must be at least 1", edit=_set("full_data.patience", 0)),
    Case("full-data lr_drops -1", "full_data.lr_drops", edit=_set("full_data.lr_drops", -1)),
    Case("data format", "data.format", edit=_set("data.format", "csv")),
    Case(
        "data root missing",
        "data.root: /nonexistent/fmnist does not exist",
        edit=_set("data.root", "/nonexistent/fmnist"),
    ),
    Case(
        "data root without the data's files",
        "data: Fashion-MNIST file train-images-idx3-ubyte[.gz] not found",
        edit=_set("data.root", "/usr/share"),
    ),
    Case(
        "data root from an unset variable",
        "data.root: environment variable DDBENCH_UNSET_ROOT is not set",
        edit=_set("data.root", "${DDBENCH_UNSET_ROOT}/fashion-mnist"),
        env={"DDBENCH_UNSET_ROOT": None},
    ),
    Case(
        "class list missing",
        "data.classes: class list /nonexistent/classes.txt not found",
        edit=lambda r: r["data"].update(format="imagefolder", classes="/nonexistent/classes.txt"),
    ),
    Case("validation eats every image", "data.val_per_class", edit=_set("data.val_per_class", 120)),
    Case("negative image cap", "data.max_train_per_class", edit=_set("data.max_train_per_class", -5)),
    Case(
        "a profile that is not a mapping",
        "profiles.quick: expected a mapping",
        edit=_set("profiles", {"quick": 5}),
        argv=("--profile", "quick"),
    ),
    # the command line
    Case("--methods ,", "methods: --methods ',' names no method", argv=("--methods", ",")),
    Case("--methods empty", "methods: --methods '' names no method", argv=("--methods", "")),
    Case(
        "--methods repeated", "methods: --methods names herding more than once", argv=("--methods", "herding,herding")
    ),
    Case("--methods unknown", "methods: --methods names magic", argv=("--methods", "magic")),
    Case("--students ,", "students: no students listed", argv=("--students", ",")),
    Case("--students unknown", "students[0]: unknown student", argv=("--students", "resnet9000")),
    Case("--ipc 0", "--ipc", argv=("--ipc", "0")),
    Case("--ipc -3", "--ipc", argv=("--ipc", "-3")),
    Case("--ipc not an integer", "--ipc", argv=("--ipc", "1.5")),
    Case(
        "--ipc above a class's images",
        "ipcs: random-real at IPC 101 draws 101",
        edit=lambda r: [p.update(epochs_beyond=2) for p in r["protocols"].values()],
        argv=("--ipc", "101"),
    ),
    Case(
        "--ipc above every bound of an epochs table",
        "protocols.hard-label.epochs: has no bound for IPC 3 (its largest is 2), which would train epochs_beyond's "
        "default 300 epochs",
        argv=("--ipc", "3"),
    ),
    Case(
        "--ipc above every bound of a soft-label batch_size table",
        "protocols.soft-label.batch_size: has no bound for IPC 3 (its largest is 2), which would train at "
        "batch_size_beyond's default batch size 100; add 3: N to the table, or set batch_size_beyond",
        edit=lambda r: (
            [r["protocols"]["soft-label"].update(batch_size={2: 10})]
            + [p.update(epochs_beyond=2) for p in r["protocols"].values()]
        ),
        argv=("--ipc", "3"),
    ),
    Case(
        "--ipc above a class's images for rded's crops",
        "ipcs: rded at IPC 30 draws 120",
        # factor 2 set by hand: at 28 px RDED now defaults to its low-resolution factor 1 (small_image_defaults),
        # which draws only IPC images and would pass the check (and run the whole pipeline in this test).
        edit=lambda r: [
            r["methods"].update(rded={"factor": 2}),
            *(p.update(epochs_beyond=2) for p in r["protocols"].values()),
        ],
        argv=("--methods", "rded", "--ipc", "30"),
    ),
    Case("--seeds 0", "--seeds", argv=("--seeds", "0")),
    Case("--seeds not an integer", "--seeds", argv=("--seeds", "two")),
    Case("--profile unknown", "profiles.huge: no such profile", argv=("--profile", "huge")),
    Case("--suite unknown", "no such suite file", argv=("--suite", "no-such-suite")),
    Case(
        "--cross-arch without a section",
        "cross_arch: --cross-arch needs",
        edit=lambda r: r.pop("cross_arch"),
        argv=("--cross-arch",),
    ),
    Case("--gpu-tflops negative", "--gpu-tflops", argv=("--gpu-tflops", "-1")),
    Case("--compare one method", "methods: --compare 'herding' must name two", argv=("--compare", "herding")),
    Case("--compare unknown", "methods: magic not in the suite", argv=("--compare", "herding,magic")),
    Case("--export without one IPC", "ipcs: --export needs one IPC", argv=("--export", "herding")),
    # every image of a user's folder decoded once before compute: the bad ones named in the one line
    Case(
        "unreadable images in an ImageFolder",
        "data: 2 of 21 images under {broken} cannot be read: train/bag/zz-garbage.jpg (cannot identify image file); "
        "train/coat/0003.png (image file is truncated); replace or remove them, or set data.skip_unreadable: true",
        edit=_broken_images,
    ),
    # answered before prepare (which can load or train models for a minute), from the store and the folders alone
    Case(
        "--compare with no rows of either",
        "methods: the store in {out} holds no row of herding or k-center",
        argv=("--compare", "herding,k-center"),
    ),
    Case(
        "--export of a set not on disk",
        "methods: no herding set at IPC 1 in {out}",
        argv=("--export", "herding", "--ipc", "1"),
    ),
    Case("--gpus 0", "--gpus", argv=("--gpus", "0")),
    Case("unknown flag", "unrecognized arguments: --colour", argv=("--colour", "red")),
    # --search (harness/stages/search.py)
    Case(
        "--search unknown method", "--search: magic is neither one of the suite's methods", argv=("--search", "magic")
    ),
    Case(
        "--search-set unknown",
        "--search-set: magic is not one of the suite's methods",
        argv=("--search", "soft-label", "--ipc", "1", "--search-set", "magic"),
    ),
    Case("--search-set without --search", "--search-set: only with --search", argv=("--search-set", "herding")),
    Case(
        "protocol per_student unknown field",
        "protocols.soft-label.per_student: convnet3: lrr is not a field",
        edit=_set("protocols.soft-label.per_student", {"convnet3": {"lrr": 0.1}}),
    ),
    Case("--search no method", "--search: ',' names no method", argv=("--search", ",")),
    Case("--search without a space", "--search: herding declares no search space", argv=("--search", "herding")),
    Case("--search at two IPCs", "--ipc: a search tunes at one IPC", argv=("--search", "diffusion")),
    Case(
        "--search, suite config outside the range",
        "methods.diffusion.steps: the suite's 3 lies outside",
        argv=("--search", "diffusion", "--ipc", "1"),
    ),
    Case("--trials 0", "--trials", argv=("--search", "diffusion", "--trials", "0")),
    Case(
        "--search-student unknown",
        "--search-student: unknown student",
        argv=("--search", "diffusion", "--ipc", "1", "--search-student", "resnet9000"),
    ),
    Case("--resume without --search", "--resume: only with --search", argv=("--resume",)),
    Case(
        "--search with --plan",
        "--search and --plan: one at a time",
        edit=_set("methods.diffusion", {"steps": 10}),
        argv=("--search", "diffusion", "--ipc", "1", "--plan"),
    ),
    Case(
        "--site with --compare",
        "--site and --compare: one at a time",
        argv=("--site", "--compare", "herding,diffusion"),
    ),
    Case("--trials without --search", "--trials: only with --search", argv=("--trials", "5")),
    Case(
        "--search of a fine-tuning method",
        "--search: minimax fine-tunes its backbone",
        edit=_set("methods.minimax", {}),
        argv=("--search", "minimax", "--ipc", "1"),
    ),
    Case(
        "--search-set a fine-tuning method",
        "--search-set: minimax fine-tunes its backbone",
        edit=_set("methods.minimax", {}),
        argv=("--search", "soft-label", "--ipc", "1", "--search-set", "minimax"),
    ),
    Case(
        "searched: unknown method",
        "searched.magic: not one of the suite's methods",
        edit=_set("searched", {"magic": {"config": {}, "trials": 3}}),
    ),
    Case(
        "searched: unknown config field",
        "searched.diffusion.config",
        edit=_set("searched", {"diffusion": {"config": {"cfg": 3.0}, "trials": 3}}),
    ),
    Case(
        "profile include missing",
        "profiles.searched.include[0]:",
        edit=_set("profiles", {"searched": {"include": ["no-such-fragment.yaml"]}}),
        argv=("--profile", "searched"),
    ),
    # NaN and infinite settings (issue 30 item 2): every float of every section, however deep
    Case(
        "protocol lr NaN",
        "protocols.hard-label.lr: must be a finite number, got nan",
        edit=_set("protocols.hard-label.lr", float("nan")),
    ),
    Case(
        "protocol lr infinite",
        "protocols.soft-label.lr: must be a finite number, got inf",
        edit=_set("protocols.soft-label.lr", float("inf")),
    ),
    Case(
        "method cfg_scale NaN",
        "methods.diffusion.cfg_scale: must be a finite number, got nan",
        edit=_set("methods.diffusion.cfg_scale", float("nan")),
    ),
    Case(
        "teacher lr NaN",
        "teacher.train.lr: must be a finite number, got nan",
        edit=_set("teacher.train.lr", float("nan")),
    ),
    Case(
        "backbone lr -inf",
        "backbone.train.lr: must be a finite number, got -inf",
        edit=_set("backbone.train.lr", float("-inf")),
    ),
    Case(
        "backbone check agreement NaN",
        "backbone.check_min_agreement: must be a finite number, got nan",
        edit=_set("backbone.check_min_agreement", float("nan")),
    ),
    Case(
        "per-student lr NaN",
        "protocols.soft-label.per_student.convnet3.lr: must be a finite number, got nan",
        edit=_set("protocols.soft-label.per_student", {"convnet3": {"lr": float("nan")}}),
    ),
    Case(
        "searched config NaN",
        "searched.diffusion.config.cfg_scale: must be a finite number, got nan",
        edit=_set("searched", {"diffusion": {"config": {"cfg_scale": float("nan")}, "trials": 3}}),
    ),
    Case(
        "lr 1e-3 read as a string",
        "protocols.hard-label.lr: expected a number, got '1e-3' (YAML reads 1e-3 as a string; write 1.0e-3)",
        text=lambda t: t.replace("  hard-label:\n", "  hard-label:\n    lr: 1e-3\n"),
    ),
    # surprising choices (issue 30 item 5): refused in one line
    Case("--out empty", "argument --out: an empty path names the current folder", argv=("--out", "")),
    Case("--out blank", "argument --out: an empty path", argv=("--out", " ")),
    Case("a flag's prefix", "unrecognized arguments: --method herding", argv=("--method", "herding")),
    Case("--gpus without --plan", "--gpus: only with --plan", argv=("--gpus", "4")),
    Case("--gpu-tflops without --plan", "--gpu-tflops: only with --plan", argv=("--gpu-tflops", "100")),
    Case(
        "--no-check with --accept-failed-check",
        "--no-check and --accept-failed-check: one or the other",
        argv=("--no-check", "--accept-failed-check"),
    ),
    Case(
        "negative guidance",
        "methods.diffusion.cfg_scale: a guidance scale must be ≥ 0",
        edit=_set("methods.diffusion.cfg_scale", -2),
    ),
    Case(
        "negative guidance in a searched config",
        "searched.diffusion.config.cfg_scale: a guidance scale must be ≥ 0",
        edit=_set("searched", {"diffusion": {"config": {"cfg_scale": -1.0}, "trials": 3}}),
    ),
    Case(
        "negative guidance in the backbone check",
        "backbone.check_cfg_scale: a guidance scale must be ≥ 0",
        edit=_set("backbone.check_cfg_scale", -1.0),
    ),
    Case(
        "one class listed",
        "data.classes: the inline list names 1 class (shirts): distillation makes images per class for a classifier, "
        "which needs at least 2",
        edit=lambda r: r["data"].update(format="imagefolder", classes=["shirts"]),
    ),
    Case(
        "data root a file",
        f"data.root: {BASE} is a file, not a folder",
        edit=_set("data.root", str(BASE)),
    ),
    Case(
        "profile include from an unset variable",
        "profiles.searched.include[0]: environment variable DDBENCH_UNSET_DIR is not set",
        edit=_set("profiles", {"searched": {"include": ["${DDBENCH_UNSET_DIR}/d4m.yaml"]}}),
        argv=("--profile", "searched"),
        env={"DDBENCH_UNSET_DIR": None},
    ),
    Case(
        "suite not UTF-8",
        "not UTF-8 text (byte 0xe9 at offset",
        text=lambda t: t.replace("a tiny suite", "a tiny suite, caf\udce9"),
    ),
    Case("--out is a file", "--out: {store} is a file", argv=("--out", "{store}")),
    Case("--out under a file", "--out: {store}/run is under {store}, which is a file", argv=("--out", "{store}/run")),
    Case("--out unwritable", "--out: cannot write to /proc/ddbench-out", argv=("--out", "/proc/ddbench-out")),
    Case("--out's results is a file", "--out: {out}/elsewhere/results is a file", argv=("--out", "{out}/elsewhere")),
]


# `evaluate`: a set made elsewhere (harness/stages/external.py), refused before any training; the sets are
# `bad_sets`' folders ({sets}), each a good ImageFolder of 2 Fashion-MNIST training images per class, less one fault.
LEAKED = "{sets}/leak/trouser/0001.png (test image 2), {sets}/leak/pullover/0001.png (test image 1), "
LEAKED += "{sets}/leak/ankle_boot/0001.png (test image 0)"
CASES += [
    Case(
        "evaluate: wrong class count",
        "--set: the set has 9 classes, the suite 10 (missing shirt)",
        argv=("--evaluate", "{sets}/nine", "--name", "outside"),
    ),
    Case(
        "evaluate: index folders without an order",
        "--class-order: the set's class folders are named by index (0, 1, 2, 3, 4 and 5 more)",
        argv=("--evaluate", "{sets}/index", "--name", "outside"),
    ),
    Case(
        "evaluate: a WNID folder missing",
        "--set: the set has 9 classes, the suite 10 (missing n02086240 (Shih-Tzu))",
        edit=lambda r: r["data"].update(
            format="imagefolder",
            root="{sets}/woof-data",
            classes="imagewoof",
            test_dir="test",
            val_per_class=1,
            max_train_per_class=None,
        ),
        argv=("--evaluate", "{sets}/woof-nine", "--name", "outside"),
    ),
    Case(
        "evaluate: mixed sizes",
        "--set: the suite's students take 28×28 grey (L) images (data.image_size, its channels); 1 are not: "
        "{sets}/mixed/coat/0001.png (32×32 L)",
        argv=("--evaluate", "{sets}/mixed", "--name", "outside"),
    ),
    Case(
        "evaluate: an RGB image for a grey suite",
        "1 are not: {sets}/rgb/coat/0001.png (28×28 RGB)",
        argv=("--evaluate", "{sets}/rgb", "--name", "outside"),
    ),
    Case(
        "evaluate: a corrupt file",
        "--set: unreadable images: {sets}/corrupt/coat/0001.png",
        argv=("--evaluate", "{sets}/corrupt", "--name", "outside"),
    ),
    Case(
        "evaluate: uneven classes",
        "--set: uneven classes: images per class range from 1 to 2 (coat: 1); --allow-uneven evaluates it at IPC 2",
        argv=("--evaluate", "{sets}/uneven", "--name", "outside"),
    ),
    Case(
        "evaluate: an exact duplicate",
        "--set: 1 images repeat another of the set exactly: {sets}/duplicate/coat/0001.png = "
        "{sets}/duplicate/coat/0000.png",
        argv=("--evaluate", "{sets}/duplicate", "--name", "outside"),
    ),
    Case(
        "evaluate: 3 Fashion-MNIST test images in the set",
        "--set: 3 images are (near-)identical to the suite's test split: " + LEAKED,
        argv=("--evaluate", "{sets}/leak", "--name", "outside"),
    ),
    Case(
        "evaluate: a normalised tensor without its normalisation",
        "--set: {sets}/normalised/images.pt: float images range over",
        argv=("--evaluate", "{sets}/normalised", "--name", "outside", "--class-order", "suite"),
    ),
    Case(
        "evaluate: soft labels",
        "--set: {sets}/soft.pt: soft labels (20, 10): ddbench trains on hard labels",
        argv=("--evaluate", "{sets}/soft.pt", "--name", "outside", "--class-order", "suite"),
    ),
    Case(
        "evaluate: no such set",
        "--set: {sets}/nope does not exist",
        argv=("--evaluate", "{sets}/nope", "--name", "outside"),
    ),
    Case("evaluate without --name", "--name: name the set", argv=("--evaluate", "{sets}/names")),
    Case(
        "evaluate under a method's name",
        "--name: herding is a method's",
        argv=("--evaluate", "{sets}/names", "--name", "herding"),
    ),
    Case(
        "evaluate: an order for named classes",
        "--class-order: the set names its classes",
        argv=("--evaluate", "{sets}/names", "--name", "outside", "--class-order", "suite"),
    ),
    Case(
        "evaluate: an unknown protocol",
        "--protocols: magic not the suite's",
        argv=("--evaluate", "{sets}/names", "--name", "outside", "--protocols", "magic"),
    ),
    Case(
        "evaluate: --ipc not the set's",
        "--ipc: the set holds 2 images per class, not [1]",
        argv=("--evaluate", "{sets}/names", "--name", "outside", "--ipc", "1"),
    ),
    Case(
        "evaluate with --methods",
        "--methods: evaluate trains on the set it is given",
        argv=("--evaluate", "{sets}/names", "--name", "outside", "--methods", "herding"),
    ),
    Case(
        "evaluate with --export",
        "--export and --evaluate: one at a time",
        argv=("--evaluate", "x", "--export", "herding"),
    ),
    Case("--allow-overlap without evaluate", "--allow-overlap: only with evaluate", argv=("--allow-overlap",)),
]


def _png(a: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


@pytest.fixture(scope="module")
def bad_sets(tmp_path_factory) -> Path:
    """The sets the `evaluate` cases read ({sets}), and an ImageWoof-shaped data root of Fashion-MNIST images."""
    root = tmp_path_factory.mktemp("sets")
    train = load_fashion_mnist(FASHION_ROOT, "train")
    test = load_fashion_mnist(FASHION_ROOT, "test")
    good = {
        key: [train.images[i, 0].numpy() for i in train.indices_of(label)[:2]]
        for label, key in enumerate(FASHION_MNIST_CLASSES)
    }

    def folder(name: str, skip=(), rename=None) -> Path:
        for key, images in good.items():
            for i, a in enumerate(images):
                if key not in skip:
                    _png(a, root / name / (rename or {}).get(key, key) / f"{i:04d}.png")
        return root / name

    folder("names")
    folder("nine", skip=("shirt",))
    folder("index", rename={k: str(i) for i, k in enumerate(FASHION_MNIST_CLASSES)})
    _png(np.zeros((32, 32), np.uint8), folder("mixed") / "coat" / "0001.png")
    _png(np.stack([good["coat"][1]] * 3, -1), folder("rgb") / "coat" / "0001.png")
    path = folder("corrupt") / "coat" / "0001.png"
    path.write_bytes(path.read_bytes()[:60])
    (folder("uneven") / "coat" / "0001.png").unlink()
    _png(good["coat"][0], folder("duplicate") / "coat" / "0001.png")
    leak = folder("leak")
    assert test.labels[:3].tolist() == [9, 2, 1]  # ankle_boot, pullover, trouser: LEAKED names them
    for k in range(3):
        _png(test.images[k, 0].numpy(), leak / FASHION_MNIST_CLASSES[int(test.labels[k])] / "0001.png")
    images = torch.from_numpy(np.stack([a for images in good.values() for a in images]))[:, None]
    (root / "normalised").mkdir()
    torch.save((images.float() / 255 - 0.2861) / 0.3530, root / "normalised" / "images.pt")
    torch.save({"images": images, "labels": torch.full((20, 10), 0.1)}, root / "soft.pt")
    woof = read_class_list(CLASSES_DIR / "imagewoof.txt")
    for label, wnid in enumerate(woof):
        for i, a in enumerate(train.images[train.indices_of(label)[:6], 0].numpy()):
            _png(a, root / "woof-data" / "train" / wnid / f"{i:04d}.png")
            if i < 2:
                _png(a, root / "woof-data" / "test" / wnid / f"{i:04d}.png")
                if wnid != "n02086240":
                    _png(a, root / "woof-nine" / wnid / f"{i:04d}.png")
    return root


def _write_suite(case: Case, folder: Path, fill: dict[str, str] | None = None) -> Path:
    text = BASE.read_text()
    if case.edit is not None:
        raw = yaml.safe_load(text)
        case.edit(raw)
        text = yaml.safe_dump(raw, sort_keys=False)
    if case.text is not None:
        text = case.text(text)
    text = _fill(text, fill or {})
    path = folder / "suite.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))  # a lone surrogate \udcXX writes the byte 0xXX
    return path


def _fill(text: str, fill: dict[str, str]) -> str:
    for name, value in fill.items():
        text = text.replace("{" + name + "}", value)
    return text


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _prepare_out(tmp_path: Path) -> tuple[Path, Path]:
    """--out holding a store with one row, and a second run folder whose `results` is a file."""
    out = tmp_path / "out"
    store = out / "results" / "tiny.jsonl"
    store.parent.mkdir(parents=True)
    store.write_text(json.dumps(ROW, sort_keys=True) + "\n")
    (out / "elsewhere").mkdir()
    (out / "elsewhere" / "results").write_text("not a folder\n")
    return out, store


@pytest.fixture(scope="module")
def seconds_by_case(request):
    """Each case's seconds, written to the test report at the module's end (measured, not asserted: the machine's
    load decides them; in process, the heavy imports are paid once before the first case)."""
    seconds: dict[str, float] = {}
    yield seconds
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if seconds and reporter is not None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line(f"\n[bad input] {len(seconds)} cases, {sum(seconds.values()):.1f} s, slowest first:")
            for name, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
                reporter.write_line(f"  {s:6.2f} s  {name}")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch, bad_sets, seconds_by_case):
    for name, value in (case.env or {}).items():
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)
    out, store = _prepare_out(tmp_path)
    fill = {"out": str(out), "store": str(store), "sets": str(bad_sets), "broken": _BROKEN.name}
    suite = _write_suite(case, tmp_path, fill)
    argv = ["--suite", str(suite), "--out", str(out), *(_fill(a, fill) for a in case.argv)]
    before = _snapshot(out)
    t0 = time.perf_counter()
    try:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
    finally:
        reached_ray = ray.is_initialized()
        if reached_ray:  # a case whose check no longer fires ran the pipeline: fail it alone, not every case after
            ray.shutdown()
    seconds = seconds_by_case[case.name] = time.perf_counter() - t0
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("ddbench: error: "), err
    assert _fill(case.expect, fill) in lines[0], lines[0]
    assert _snapshot(out) == before, "a bad run changed what --out holds"
    assert not reached_ray and seconds < 10, seconds


def test_the_checks_pass_good_input_up_to_the_boundary(tiny_suite, tiny_real):
    """The IPC check is not vacuous: the tiny suite's classes hold exactly 100 training images each (120 less
    20 for validation), so IPC 100 passes and IPC 101 is the first that fails."""
    per_class = len(tiny_real.train) // len(tiny_real.classes)
    assert per_class == tiny_suite.data.max_train_per_class - tiny_suite.data.val_per_class == 100
    check_real_image_counts(tiny_suite, tiny_real.train, list(tiny_suite.methods), [per_class])
    with pytest.raises(SuiteError, match="IPC 101"):
        check_real_image_counts(tiny_suite, tiny_real.train, list(tiny_suite.methods), [per_class + 1])
    # A method that draws no real images (diffusion samples from noise) is not held to the count.
    check_real_image_counts(tiny_suite, tiny_real.train, ["diffusion"], [per_class + 1])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through folder permissions")
def test_out_without_write_permission(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    with pytest.raises(SystemExit) as exit_:
        main(["--suite", str(BASE), "--out", str(locked / "run")])
    assert exit_.value.code == 2 and "--out: cannot write to" in capsys.readouterr().err


@pytest.mark.parametrize(
    "verb",
    [["run"], ["plan"], ["search", "diffusion"], ["site"], ["compare", "herding,k-center"], ["evaluate", "--set", "x"]],
)
def test_no_verb_takes_a_flag_by_its_prefix(verb, capsys):
    """argparse would take `--method` for `--methods` (and `--gpu` for `--gpus`): every parser is built with
    allow_abbrev=False, so a near-miss is an unknown flag, not a silent guess."""
    with pytest.raises(SystemExit) as exit_:
        main([*verb, "--suite", str(BASE), "--method", "herding"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "unrecognized arguments: --method herding" in err[0], err


def _folder(root: Path, layout: dict[str, int]) -> Path:
    """An ImageFolder of empty .png files (the checks before compute count images by name, and open none):
    `layout` maps a train/ sub-folder to its number of images; test/ gets the same classes."""
    for split in ("train", "test"):
        for key, n in layout.items():
            (root / split / key).mkdir(parents=True)
            for i in range(n if split == "train" else 1):
                (root / split / key / f"{i:04d}.png").touch()
    return root


FOLDER_CASES = {
    # an empty class folder: named, with its count, not blamed on val_per_class
    "empty class": ({"coat": 40, "shirt": 0}, "data.classes: class 'shirt' has no images in"),
    # a class too small for any validation split: the class is named with its count, and no impossible advice
    "3-image class": (
        {"coat": 40, "shirt": 3},
        "data.classes: class 'shirt' has 3 training images ({root}/train/shirt): too few to hold out a validation "
        "split (at most 25% of a class; data.val_per_class 1 needs 4)",
    ),
    # a class that a smaller split fits: the advice is a value that works
    "val_per_class above a quarter": ({"coat": 40, "shirt": 8}, "data.val_per_class: 3 would hold out more than 25%"),
    # a hidden folder is a tool's, not a class: skipped, so one real class is one class
    "hidden folder beside one class": (
        {"coat": 40, ".ipynb_checkpoints": 0},
        "data.classes: {root}/train names 1 class (coat): distillation makes images per class",
    ),
    "one class": ({"coat": 40}, "data.classes: {root}/train names 1 class (coat)"),
}


@pytest.mark.parametrize("name", FOLDER_CASES)
def test_a_bad_image_folder_is_one_line_naming_the_class(name, tmp_path, capsys):
    layout, expect = FOLDER_CASES[name]
    root = _folder(tmp_path / "data", layout)
    raw = yaml.safe_load(BASE.read_text())
    raw["data"].update(
        format="imagefolder", root=str(root), classes="auto", test_dir="test", max_train_per_class=None, val_per_class=3
    )
    if name == "3-image class":
        raw["data"]["val_per_class"] = 1
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(raw, sort_keys=False))
    out, _ = _prepare_out(tmp_path)
    before = _snapshot(out)
    with pytest.raises(SystemExit) as exit_:
        main(["--suite", str(suite), "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1, lines
    assert expect.format(root=root) in lines[0], lines[0]
    assert _snapshot(out) == before


def test_classes_auto_skips_hidden_folders(tmp_path):
    from harness.config.schema import DataConfig

    root = _folder(tmp_path / "data", {"coat": 1, "shirt": 1, ".ipynb_checkpoints": 1, ".cache": 0})
    assert DataConfig(format="imagefolder", root=str(root), classes="auto").class_keys() == ["coat", "shirt"]


@pytest.fixture
def not_ray():
    """A plain TCP server on localhost that answers every connection with an HTTP reply, as a web server would."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\nnot ray\n")

    threading.Thread(target=serve, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_an_address_where_something_else_listens_is_one_line(not_ray, tmp_path, capsys):
    """Ray's client would wait 40 s for a GCS there and end in a 13-line RpcError."""
    out, _ = _prepare_out(tmp_path)
    before = _snapshot(out)
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        main(["--suite", str(BASE), "--out", str(out), "--address", not_ray])
    seconds = time.perf_counter() - t0
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1, lines
    assert f"--address: {not_ray}: something listens there, but not a Ray head" in lines[0], lines[0]
    assert _snapshot(out) == before and not ray.is_initialized() and seconds < 10, seconds


# Through the real entry point: the mistakes benchmark.py answers before the heavy imports (harness/flags.py).
EARLY = {
    "duplicate key": ((), "seeds: duplicate key"),
    "no such suite": (("--suite", "nope"), "nope.yaml: no such suite file"),
    "unknown profile": (("--profile", "nope"), "profiles.nope: no such profile"),
    "flag by its prefix": (("--method", "herding"), "unrecognized arguments: --method herding"),
    "empty --out": (("--out", ""), "argument --out: an empty path names the current folder"),
    "not UTF-8": (("--suite", "{latin1}"), "not UTF-8 text"),
    # evaluate's own flags, checked from their text (harness/config/evaluate_args.py)
    "evaluate: no such set": (("--evaluate", "{tmp}/nope", "--name", "x"), "--set: {tmp}/nope does not exist"),
    "evaluate: a method's name": (("--evaluate", "{tmp}", "--name", "herding"), "--name: herding is a method's"),
    "evaluate: a name no folder takes": (("--evaluate", "{tmp}", "--name", "a b"), "--name: 'a b': use letters"),
    "evaluate: no such protocol": (
        ("--evaluate", "{tmp}", "--name", "x", "--protocols", "hard"),
        "--protocols: hard not the suite's",
    ),
    "evaluate: a normalisation unread": (
        ("--evaluate", "{tmp}", "--name", "x", "--tensor-normalization", "a/b"),
        "--tensor-normalization: 'a/b'",
    ),
    "evaluate: no class order file": (
        ("--evaluate", "{tmp}", "--name", "x", "--class-order", "{tmp}/nope.txt"),
        "--class-order: {tmp}/nope.txt is not a file",
    ),
    "evaluate: its flag without it": (("--reported", "41.5"), "--reported: only with evaluate"),
    # the names the flags give, against the suite's text and what --out holds (harness/config/flag_checks.py)
    "a method not in the suite": (("--methods", "herding,nope"), "--methods names nope, not in the suite"),
    "compare with no rows": (("--compare", "herding,k-center"), "holds no row of herding or k-center"),
    "export with no set": (("--export", "herding", "--ipc", "2"), "no herding set at IPC 2 in"),
    "two verbs at once": (("--site", "--compare", "herding,k-center"), "--site and --compare: one at a time"),
    "evaluate: with --methods": (("--evaluate", "{tmp}", "--name", "x", "--methods", "herding"), "--methods: evaluate"),
}


@pytest.mark.parametrize("name", EARLY)
def test_the_real_entry_point_answers_before_the_heavy_imports(name, tmp_path, seconds_by_case):
    """One line, exit 2, the store untouched, and neither torch nor Ray imported (`-X importtime` lists every module
    the process imported): what made every mistake cost 9-47 s (issue 30 item 7)."""
    out, store = _prepare_out(tmp_path)
    suite = _write_suite(CASES[0], tmp_path) if name == "duplicate key" else BASE
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(BASE.read_text().replace("tiny", "tiny-caf\u00e9", 1).encode("latin-1"))
    extra, expect = EARLY[name]
    extra = [a.replace("{latin1}", str(latin1)).replace("{tmp}", str(tmp_path)) for a in extra]
    expect = expect.replace("{tmp}", str(tmp_path))
    argv = ["--suite", str(suite), "--out", str(out), *extra]
    before = _snapshot(out)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "benchmark.py", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds_by_case[f"benchmark.py: {name}"] = time.perf_counter() - t0
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("ddbench: error: ") and expect in lines[0], lines[0]
    assert "yaml" in imported and not imported & {"torch", "ray", "diffusers", "timm"}, sorted(imported)[:20]
    assert _snapshot(out) == before


def test_the_ddbench_command_answers_before_the_heavy_imports_too(tmp_path):
    """The installed `ddbench` command is benchmark.py's `console` (pyproject's scripts): the same early answer as
    `python benchmark.py`, torch and Ray never imported (it was harness.cli:main, 10-18 s per mistake)."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"ddbench": "benchmark:console"}
    code = "import sys, benchmark; sys.argv = ['ddbench', *sys.argv[1:]]; sys.exit(benchmark.console())"
    argv = ["evaluate", "--suite", str(BASE), "--out", str(tmp_path / "out"), "--set", "/nope", "--name", "x"]
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2 and lines == ["ddbench: error: --set: /nope does not exist"], lines
    assert not imported & {"torch", "ray", "diffusers", "timm"} and not (tmp_path / "out").exists()


def test_load_suite_keeps_every_shipped_suite_free_of_duplicate_keys():
    for path in sorted((ROOT / "benchmarks").glob("*.yaml")):
        load_suite(str(path), check_files=False)


@pytest.mark.parametrize(
    "field, argv, expect",
    [
        ({"methods": ["herding"]}, ["--methods", "herding"], "methods: expected a mapping"),
        ({"methods": 3}, ["evaluate", "--set", "README.md", "--name", "mine"], "methods: expected a mapping"),
        ({"profiles": {"broken": 3}}, ["--methods", "nope"], "--methods names nope, not in the suite"),
    ],
    ids=["methods a list", "methods a number, evaluate", "a profile not a mapping"],
)
def test_the_early_checks_read_a_malformed_suite_as_one_line(field, argv, expect, tmp_path, capsys):
    """The checks before the heavy imports (harness/flags.py precheck) meet a suite the loader would refuse: one
    line, exit 2, never a traceback from reading it (review of the early checks)."""
    raw = yaml.safe_load(BASE.read_text())
    raw.update(field)
    suite = tmp_path / "bad.yaml"
    suite.write_text(yaml.safe_dump(raw))
    verb = argv[:1] if argv[0] == "evaluate" else []
    with pytest.raises(SystemExit) as stop:
        precheck([*verb, "--suite", str(suite), "--out", str(tmp_path / "out"), *argv[len(verb) :]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and expect in lines[0], lines
