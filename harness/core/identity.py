"""Identity: content hashes that key every cache and result, the class lists suites name, and the software
versions recorded beside results. The bottom layer: it imports nothing from the harness.

What keys each thing the harness makes is written here, once (the "keys" section below), with the exceptions
kept so that rows and caches made before a setting existed stay current. A key changes only when what it keys
would change; tests/test_committed_store.py and tests/test_contract.py hold them to the committed rows.

| thing | key | where it is built |
|---|---|---|
| a distilled set | `set_key`: method, its config's identity, suite seed, image size, the models it reads | here |
| a set's shard seeds | `seed_key`: `method/hash`, or a family's shared key for paired ablation variants | here |
| a result row | `row_key`: suite, method, set hash, IPC, student, protocol, protocol hash, seed | here |
| a recipe | `Protocol.identity()`: its fields (WHEN_SET ones only off their default) | models/protocols.py |
| a relabelled recipe | `relabelled_protocol_key` / `cross_arch_protocol_key` | here |
| a fine-tuned backbone | `fine_tune_key`: base backbone, schedule, training data, conditions, DiffFit version | here |
| a backbone check | `backbone_check_key`: backbone (or fine-tune), teacher, the check's settings | here |
| the teacher's validation accuracy | `teacher_val_key`: teacher, validation split | here |
| the teacher's test accuracy | `teacher_test_key`: teacher, test split | here |
| a search | `search_key`: suite, spec, default point, space, recipe, validation split, models | here |
| diversity measures | `diversity_keys`: extractor, real reference, settings | here |
| a generator, a teacher | the plug-in's own identity (settings, data) | models/generators/, teacher_sources.py |

The plug-ins' keys keep exceptions of their own, listed here so that none is changed unawares: the pixel DiT's key
is wrapped with `guided_channels` only when that differs from its channels (pixel_dit.py `prepare`); a trained
teacher's key holds `arch_kwargs` only when set; the checkpoint and recipe teacher sources hash the kind of
trained teachers (they were that kind's options when their keys were first made: giving either a kind of its own in
the key would re-key every teacher made so far); a method search's key leaves out `protocol_search` (search.py
`search_id`). A search trial's row keys its set by `config_hash(config)` of the trial's config, and a shard's
seed is `shard_seed(suite seed, seed key, IPC, class)` (stages/distill.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

CLASSES_DIR = Path(__file__).resolve().parents[1] / "classes"
# The method name of the full-data reference rows in the result store (a student trained on the whole
# training split): not a registered method, a row kind every suite may have.
FULL_DATA = "full-data"
# A set folder's record (harness/core/sets.py): its presence says a set is there, without reading its images.
MANIFEST = "manifest.json"


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

    found = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }
    revision = code_revision()
    return found if revision is None else {**found, "ddbench": revision}


@functools.lru_cache(maxsize=1)
def code_revision() -> str | None:
    """The commit of the ddbench checkout that made a result (12 hex digits, `-dirty` when tracked files differ from
    it), or None outside a git checkout. Recorded, never keyed: it names which code made a row when the numbers of
    an unchanged recipe drift (docs/decisions.md, issue 27's round trip)."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("diff", "--quiet", "HEAD", "--").returncode != 0
    except (OSError, subprocess.TimeoutExpired):  # no git on the machine, or a hung one
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


# ---- keys: what keys each thing the harness makes ----

# The fields of a result row that key it in the store (harness/core/store.py): one row per key, ever.
ROW_KEY_FIELDS = ("suite", "method", "config_hash", "ipc", "student", "protocol", "protocol_hash", "seed")


def row_key(row: dict) -> tuple:
    return tuple(row[k] for k in ROW_KEY_FIELDS)


_ABSENT = object()


def set_identity(
    method: str,
    config_fields: dict,
    seed: int,
    image_size: int,
    models: dict,
    teacher_val_accuracy: Any = _ABSENT,
    fine_tuned: str | None = None,
    revision: int = 0,
) -> dict:
    """Everything that decides a distilled set's images. Kept out unless they apply, so that sets made before
    each existed keep their keys: the teacher's validation accuracy (only methods that read it, CaO2's ĉ), the
    fine-tuned backbone (only methods that sample one) and the method's revision (only when raised from 0)."""
    ident = {"method": method, "config": config_fields, "seed": seed, "image_size": image_size, **models}
    if teacher_val_accuracy is not _ABSENT:
        ident["teacher_val_accuracy"] = teacher_val_accuracy
    if fine_tuned is not None:
        ident["fine_tuned"] = fine_tuned
    if revision:
        ident["revision"] = revision
    return ident


def set_key(*args, **kwargs) -> str:
    """The hash of `set_identity(...)`: a set's `config_hash` in its manifest and in every row trained on it."""
    return config_hash(set_identity(*args, **kwargs))


def seed_key(family: str, seed_config: dict, seed: int, image_size: int, models: dict) -> str:
    """The key a family's paired ablation variants seed their shards from, so that they draw the same images
    where their switches change nothing: the family, the settings that decide the draws, and the models of the
    paired anchor (never the teacher's accuracy or the fine-tune: they decide what is done with a draw)."""
    ident = {"method": family, "config": seed_config, "seed": seed, "image_size": image_size, **models}
    return f"{family}/{config_hash(ident)}"


def relabelled_protocol_key(recipe_identity: str, relabel_hash: str | None) -> str:
    """A trial's protocol hash where a teacher gives the soft labels. Rows relabelled by the suite's own teacher
    keep the recipe's identity alone (`relabel_hash` None), as they always had; another teacher's hash joins it."""
    if relabel_hash is None:
        return recipe_identity
    return config_hash([recipe_identity, relabel_hash])


def cross_arch_protocol_key(recipe_fields: dict, teacher_key: str) -> str:
    """The cross-architecture study's protocol hash: the recipe the student trains under and the teacher that
    relabels, which is what the study varies (its rows live in their own store)."""
    return config_hash([recipe_fields, teacher_key])


def fine_tune_schedule_key(schedule: dict) -> str:
    """Which fine-tunes are one: the schedule's identity fields (NEVER fields, such as the checkpoint interval,
    left out), whatever method asks for it."""
    return config_hash(schedule)


def fine_tune_identity(
    backbone_hash: str, schedule: dict, train_fingerprint: str, conditions: list[int], trainable_version: int
) -> dict:
    return {
        "backbone": backbone_hash,
        "fine_tuning": schedule,
        "data": train_fingerprint,
        "conditions": conditions,
        "trainable": trainable_version,
    }


def fine_tune_key(*args) -> str:
    """A fine-tuned backbone: the base backbone, the schedule, the data it trains on, the labels it learns and
    which of its parameters train (DiffFit's version: a fine-tune of another trainable set is another model)."""
    return config_hash(fine_tune_identity(*args))


def backbone_check_key(backbone_hash: str, teacher_hash: str, per_class: int, cfg_scale: float, steps: int) -> str:
    """A backbone check (base or fine-tuned backbone): the model checked, the teacher that judges, the settings."""
    return config_hash([backbone_hash, teacher_hash, per_class, cfg_scale, steps])


def teacher_val_key(teacher_hash: str, val_fingerprint: str) -> str:
    return config_hash([teacher_hash, val_fingerprint])


def teacher_test_key(teacher_hash: str, test_fingerprint: str) -> str:
    """The teacher's test accuracy (what the board's note says of it): teacher, test split."""
    return config_hash(["test", teacher_hash, test_fingerprint])


def search_key(
    suite: str,
    spec: dict,
    default: dict,
    space: dict,
    protocol: str,
    val_fingerprint: str,
    backbone_hash: str,
    teacher_hash: str,
) -> str:
    """A hyperparameter search: a rerun with the same key is the same search, resumed. (`spec` leaves out
    `protocol_search` for method searches: added with protocol searches, it must not re-key the earlier ones.)"""
    return config_hash(
        {
            "suite": suite,
            "spec": spec,
            "default": default,
            "space": space,
            "protocol": protocol,
            "val": val_fingerprint,
            "backbone": backbone_hash,
            "teacher": teacher_hash,
        }
    )


def diversity_keys(extractor: dict, train_fingerprint: str, config: dict, version: int) -> tuple[str, str]:
    """(the real reference's key, the measures' key): the reference by extractor, real split, sample size and
    seed; the measures by the reference, every setting that decides a number (never the batch size) and the
    measures' version."""
    reference = {
        "extractor": extractor,
        "train": train_fingerprint,
        "per_class": config["real_per_class"],
        "seed": config["seed"],
    }
    decisive = {k: v for k, v in config.items() if k != "batch_size"}
    return config_hash(reference), config_hash({"reference": reference, "config": decisive, "v": version})
