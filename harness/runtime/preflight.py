"""Checks of a run's inputs that need more than the suite file: the output folder, the real data's counts, and
whether each method's predicted peak memory fits the GPUs (`--gpu-memory`).

They run before any compute (before prepare loads or trains a model, before Ray starts), so a mistake costs one
line, not a traceback after an hour of preparation. Each raises SuiteError naming the field or flag.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from harness.config.defaults import DEFAULT_GPU_MEMORY_GB as DEFAULT_GPU_MEMORY_GB  # re-exported
from harness.config.schema import Suite, SuiteError
from harness.runtime.memory_figures import GB, figures_path, gigabytes, predict_peaks, shown
from methods import get_method


def check_out_dir(out: Path, source: str) -> None:
    """`--out` is (or can be made) a folder this process can write: made, and a probe file written and removed."""
    out = Path(out)
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        where = "is a file" if blocking == out else f"is under {blocking}, which is a file"
        raise SuiteError(
            f"{source}: --out: {out} {where}; --out must be a folder (it holds the run's sets, models and results)"
        )
    for sub in ("results", "leaderboard"):
        if (out / sub).exists() and not (out / sub).is_dir():
            raise SuiteError(f"{source}: --out: {out / sub} is a file where the run writes a folder; move it away")
    probe = out / f".ddbench-probe-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise SuiteError(
            f"{source}: --out: cannot write to {out} ({e.strerror or e}); choose a folder you can write"
        ) from None


def check_real_image_counts(suite: Suite, train, methods: list[str], ipcs: list[int]) -> None:
    """Every method that draws real images finds enough of them in every class's training split (the training
    images less those held out for validation), at every IPC it is run at. `train` is the loaded split."""
    counts = torch.bincount(train.labels, minlength=len(train.classes)).tolist()
    fewest = min(range(len(counts)), key=counts.__getitem__)
    for name in methods:
        method, config = get_method(name), suite.method_config(name)
        if "real_images" not in method.needs_for(config):
            continue
        for ipc in ipcs:
            need = method.real_images_needed(config, ipc)
            if need > counts[fewest]:
                raise SuiteError(
                    f"{suite.source}: ipcs: {name} at IPC {ipc} draws {need} real images of each class, but class "
                    f"{train.classes[fewest]} has {counts[fewest]} training images (after data.val_per_class "
                    f"{suite.data.val_per_class} held out for validation); lower the IPC, or keep more images per class"
                )


def check_memory_fits(suite: Suite, methods: list[str], gpu_memory_gb: float, folder: Path | None = None) -> None:
    """Every method whose peak memory the suite's rehearsal figures predict fits in `gpu_memory_gb`; the first that
    does not is one line naming it, its dearest stage, the prediction and the setting that lowers it. Methods
    without figures are never refused: nothing measured says they do not fit."""
    for name, prediction in predict_peaks(suite, methods, folder).items():
        if prediction is None or prediction.peak.bytes <= gpu_memory_gb * GB:
            continue
        p = prediction.peak
        lower = (
            f"lower {name}'s {p.setting} (now {p.batch})"
            if p.setting is not None and p.batch > 1
            else "no batch setting lowers it: a GPU with more memory is needed"
        )
        source = shown(figures_path(suite.name, folder))
        raise SuiteError(
            f"{suite.source}: methods: {name} is predicted to need {gigabytes(p.bytes)} in its {p.stage} stage, more "
            f"than --gpu-memory {gpu_memory_gb:g} GB (rehearsal figures {source}); {lower}"
        )
