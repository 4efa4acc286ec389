"""Identity: content hashes that key every cache and result, the class lists suites name, and the software
versions recorded beside results. The bottom layer: it imports nothing from the harness."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

CLASSES_DIR = Path(__file__).resolve().parents[1] / "classes"
# The method name of the full-data reference rows in the result store (a student trained on the whole
# training split): not a registered method, a row kind every suite may have.
FULL_DATA = "full-data"


# Field metadata of a setting added after results were first stored under its config (a protocol's recipe, a
# method's config): it enters the identity only when set away from its default. A setting whose default keeps
# the earlier behaviour must not retire what was made before it existed.
WHEN_SET = {"identity": "when-set"}
# Field metadata for a setting that changes how work is done, never what it makes (a checkpoint interval): it
# enters no identity, so changing it neither retrains nor re-keys anything.
NEVER = {"identity": "never"}


def identity_fields(config) -> dict:
    """A config dataclass as it enters an identity: every field, less the WHEN_SET fields at their default and the
    NEVER fields."""
    out = dataclasses.asdict(config)
    for f in dataclasses.fields(config):
        if f.metadata.get("identity") == NEVER["identity"]:
            del out[f.name]
            continue
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if f.metadata.get("identity") == WHEN_SET["identity"] and getattr(config, f.name) == default:
            del out[f.name]
    return out


def config_hash(obj: Any) -> str:
    """12 hex digits of the SHA-256 of `obj` as canonical JSON: equal settings, equal key."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def read_class_list(path: Path) -> list[str]:
    """One class key (a WNID, a name) per line; blank lines and `#` comments skipped."""
    lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def class_list(name: str) -> list[str]:
    """A class list shipped in harness/classes/ by name, e.g. imagenet-1k."""
    return read_class_list(CLASSES_DIR / f"{name}.txt")


def versions() -> dict:
    """The libraries that decide a result, recorded with every manifest and result row."""
    import diffusers  # imported here: the bottom layer stays cheap to import for the suite checker
    import timm
    import torch

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "timm": timm.__version__,
            "python": platform.python_version()}
