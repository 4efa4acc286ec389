"""The rehearsal's memory figures (perf/rehearsal.py, harness/stages/rehearsal.py): each method's stages measured at
two batches on the suite's generator at its true size, kept per suite in `benchmarks/rehearsal/<suite>.json`, and
what they predict a method's peak memory to be at the suite's own batch settings.

A method's entry is keyed by what its memory depends on apart from its batches: its config with the batch settings
left out (they are what the figures scale by), the backbone's architecture and the teachers it loads. A suite whose
entry's key differs from its own (a changed setting, another generator, a user's suite) has no figure for that
method: the plan prints "—" and nothing is refused on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness.config.schema import BENCHMARKS_DIR, Suite
from harness.core.identity import config_hash, identity_fields
from methods import get_method

FIGURES_DIR = BENCHMARKS_DIR / "rehearsal"
# --gpu-memory and the plan count GiB: a card sold as "80 GB" (A100, H100) holds 80 GiB (nvidia-smi: 81920 MiB).
GB = 2**30


def figures_path(suite_name: str, folder: Path | None = None) -> Path:
    """Where a suite's figures are: `folder` (default: `FIGURES_DIR`, read when called, so tests can move it)."""
    return Path(folder if folder is not None else FIGURES_DIR) / f"{suite_name}.json"


def rehearsal_key(suite: Suite, name: str) -> str:
    """What one method's figures were measured under, less its batch settings: its class and config, the backbone's
    architecture (kind, weights' name, VAE, dtype) and the architectures of the teachers it loads."""
    method, config = get_method(name), suite.method_config(name)
    batch_fields = {f for f in method.stage_batches.values() if isinstance(f, str)}
    needs = method.needs_for(config)
    b, t = suite.backbone_of(name), suite.teacher
    teachers = {}
    if "teacher" in needs:
        teachers["teacher"] = (t.arch, t.input_size)
    if "relabel_teacher" in needs:
        r = t.relabel or t
        teachers["relabel_teacher"] = (r.arch, r.input_size)
    if "bn_teacher" in needs and (found := suite.bn_teacher()) is not None:
        teachers["bn_teacher"] = (found[0].arch, found[0].input_size, found[0].arch_kwargs)
    return config_hash(
        {
            "method": method.__name__,
            "config": {k: v for k, v in identity_fields(config).items() if k not in batch_fields},
            "backbone": (b.kind, b.pretrained, b.vae, b.dtype) if "backbone" in needs else None,
            "teachers": teachers,
            "image_size": suite.data.image_size,
        }
    )


def shown(path: Path) -> Path:
    """`path` as a message names it: relative to the repository where the committed figures are."""
    return path.relative_to(BENCHMARKS_DIR.parent) if path.is_relative_to(BENCHMARKS_DIR.parent) else path


def load_figures(suite_name: str, folder: Path | None = None) -> dict | None:
    path = figures_path(suite_name, folder)
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class StagePeak:
    stage: str
    bytes: float
    setting: str | None  # the config field that sets the stage's batch; None: fixed in the method's code
    batch: int


@dataclass
class PeakPrediction:
    """A method's predicted peak: its dearest stage at the suite's batch settings."""

    peak: StagePeak
    stages: list[StagePeak]


def stage_batch(config, batch: str | int) -> tuple[str | None, int]:
    """A stage's batch setting and its value in `config` (a fixed batch: no setting)."""
    return (batch, int(getattr(config, batch))) if isinstance(batch, str) else (None, int(batch))


def predict_peaks(suite: Suite, methods: list[str], folder: Path | None = None) -> dict[str, PeakPrediction | None]:
    """Per method, its predicted peak memory at the suite's batch settings (static + per sample × batch, per stage,
    the largest); None where the suite's figures lack the method under its present key, or a stage was not run."""
    figures = load_figures(suite.name, folder)
    out: dict[str, PeakPrediction | None] = {}
    for name in methods:
        entry = (figures or {}).get("methods", {}).get(name)
        if entry is None or entry.get("key") != rehearsal_key(suite, name) or entry.get("not_run"):
            out[name] = None
            continue
        method, config = get_method(name), suite.method_config(name)
        stages = []
        for stage, fig in entry["stages"].items():
            setting, batch = stage_batch(config, method.stage_batches[stage])
            stages.append(StagePeak(stage, fig["static_bytes"] + fig["bytes_per_sample"] * batch, setting, batch))
        out[name] = PeakPrediction(max(stages, key=lambda s: s.bytes), stages) if stages else None
    return out


def gigabytes(n: float) -> str:
    return f"{n / GB:,.1f} GB"
