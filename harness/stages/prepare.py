"""Prepare: what a suite needs before any method runs — the diffusion backbone and the teacher — and the
backbone check (does the teacher recognise the backbone's samples as their conditioning class?).

Everything is content-addressed: the key is a hash of the config and of the training data, so the same
suite reuses what an earlier run (or the repository's committed `weights/`) already made.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray
import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel
from tqdm.auto import tqdm

from methods import get_method
from methods.base import MethodContext

from harness.core import atomic
from harness.core.files import REPO_WEIGHTS, drop_damaged, log, read_json
from harness.models.generators import ddim_sample, load_dit_backbone
from harness.models.generators.difffit import load_difffit_state
from harness.models.generators.dit import DIT_GUIDED_CHANNELS
from harness.models.generators.pixel_dit import train_pixel_dit
from harness.models.data import RealData
from harness.runtime.data_parallel import cluster_gpus, run_data_parallel
from harness.core.identity import class_list, config_hash
from harness.config.schema import BackboneConfig, Suite, TeacherConfig
from harness.models.teachers import (Teacher, accuracy, import_teacher_checkpoint, load_timm_teacher, load_trained_teacher,
                       save_teacher, train_recipe_teacher, train_teacher)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PrepareError(Exception):
    """A model the suite names cannot be had; one line that says which and what to do."""


@dataclass
class PreparedTeacher:
    config: TeacherConfig
    source: str                         # a ddbench teacher file, or a timm weights spec
    hash: str
    test_accuracy: float | None
    description: str


@dataclass
class Prepared:
    """The suite's prepared artefacts: where they are, their identities (hashes) for downstream cache keys,
    and what loading them takes, so that any worker loads them from this object alone."""
    classes: list[str]                  # the suite's class keys, in order
    backbone: BackboneConfig
    backbone_source: str                # local directory or hub id
    backbone_hash: str
    conditions: list[int]               # the backbone's label of each suite class
    teacher: TeacherConfig
    teacher_source: str                 # a trained teacher file, or a timm weights spec
    teacher_hash: str
    teacher_test_accuracy: float | None
    backbone_check: dict | None
    teacher_val_accuracy: float | None = None  # only where a suite's method needs it
    teacher_description: str = ""      # one line for the board: what the teacher is, where it came from
    relabel: PreparedTeacher | None = None  # relabels for protocols that train on a teacher's outputs
    # By method: the fine-tuned backbone it samples from (harness/stages/fine_tune.py): {"source": its DiffFit
    # parameters, "hash": its identity, "cost": what training it took}.
    fine_tuned: dict[str, dict] = field(default_factory=dict)

    def load_backbone(self, device="cpu", fine_tuned: dict | None = None):
        """The suite's backbone, or the fine-tuned one `fine_tuned` (an entry of `self.fine_tuned`) names."""
        vae = self.backbone.vae if self.backbone.kind == "dit" else None
        backbone = load_dit_backbone(self.backbone_source, device=device, dtype=DTYPES[self.backbone.dtype],
                                     vae=vae, guided_channels=guided_channels(self.backbone))
        if fine_tuned is not None:
            load_difffit_state(backbone, torch.load(fine_tuned["source"], map_location=device, weights_only=True))
        return backbone

    def load_teacher(self, device="cpu") -> Teacher:
        return load_teacher(self.teacher, self.teacher_source, self.classes, device)

    def load_relabel_teacher(self, device="cpu") -> Teacher:
        """The teacher whose outputs protocols with `needs_teacher` train on."""
        if self.relabel is None:
            return self.load_teacher(device)
        return load_teacher(self.relabel.config, self.relabel.source, self.classes, device)

    @property
    def relabel_hash(self) -> str:
        """The identity of the teacher that relabels: the suite's own where it names no other."""
        return self.relabel.hash if self.relabel is not None else self.teacher_hash

    def protocol_hash(self, protocol) -> str:
        """A trial's protocol hash: the recipe's identity and, where a teacher other than the suite's own gives
        the soft labels, that teacher's hash too, so rows relabelled by another subset teacher are not reused.
        (Rows relabelled by the suite's own teacher keep the recipe's identity alone, as they always had.)"""
        if protocol.needs_teacher and self.relabel is not None:
            return config_hash([protocol.identity(), self.relabel.hash])
        return protocol.identity()

    def teacher_note(self) -> str:
        if self.relabel is None:
            return f"teacher: {self.teacher_description}"
        return (f"teacher (methods, backbone check, diversity): {self.teacher_description}; "
                f"soft labels from: {self.relabel.description}")

    def provide(self, context: MethodContext, needs: frozenset[str]) -> MethodContext:
        """`context` with whatever of `needs` it still lacks loaded: a worker loads each model once, and every
        method it runs shares them. (A method's fine-tuned backbone is its own: `harness.stages.distill` loads it.)"""
        if "backbone" in needs and context.backbone is None:
            context.backbone = self.load_backbone(context.device)
        if "teacher" in needs and context.teacher is None:
            context.teacher = self.load_teacher(context.device)
        if "relabel_teacher" in needs and context.relabel_teacher is None:
            context.relabel_teacher = self.load_relabel_teacher(context.device)
        context.teacher_val_accuracy = self.teacher_val_accuracy
        return context


def load_teacher(t: TeacherConfig, source: str, real_classes: list[str], device="cpu") -> Teacher:
    """A prepared teacher: the trained file at `source`, or timm weights mapped onto the suite's classes."""
    if t.kind == "trained":
        return load_trained_teacher(Path(source), device)
    return load_timm_teacher(t.arch, t.weights, real_classes, class_list(t.classes), t.input_size, device)


def guided_channels(b: BackboneConfig) -> int | None:
    """How many noise channels guidance combines: as the suite sets it, else DiT's three for a pretrained DiT
    (models.py `forward_with_cfg`) and every channel (None) for the pixel DiT, as its committed sets were made."""
    if b.guided_channels is not None:
        return b.guided_channels
    return DIT_GUIDED_CHANNELS if b.kind == "dit" else None


def _check_guided_channels(suite: Suite, latent_channels: int) -> None:
    n = guided_channels(suite.backbone)
    if n is not None and n > latent_channels:
        raise PrepareError(f"{suite.source}: backbone.guided_channels: {n} is more than the backbone's "
                           f"{latent_channels} latent channels")


def backbone_conditions(suite: Suite, classes: list[str]) -> list[int]:
    """The backbone's label of each suite class: its index in `backbone.classes` (by WNID), or its position
    in the suite when the backbone was trained on the suite."""
    if suite.backbone.classes is None:
        return list(range(len(classes)))
    index = {k: i for i, k in enumerate(class_list(suite.backbone.classes))}
    return [index[k] for k in classes]


def suite_needs(suite: Suite) -> frozenset[str]:
    """Everything the suite's methods need, as their configs have it."""
    return frozenset().union(*(get_method(name).needs_for(cfg) for name, cfg in suite.methods.items()))


def _cached_dir(out: Path, suite: Suite, name: str) -> Path:
    """The committed copy in weights/<any suite>/ if there is one (checksums verified), else the run's own cache.
    `name` carries the content hash, so a renamed copy of a suite finds the weights its original committed."""
    committed = next(iter(sorted(REPO_WEIGHTS.glob(f"*/{name}"))), None)
    if committed is None:
        return out / "cache" / name
    sums = committed.parent / "SHA256SUMS"
    for line in sums.read_text().splitlines() if sums.exists() else []:
        digest, rel = line.split(maxsplit=1)
        if rel.startswith(name + "/") and hashlib.sha256((sums.parent / rel).read_bytes()).hexdigest() != digest:
            raise RuntimeError(f"committed weights {sums.parent / rel} do not match {sums}: re-fetch the repository")
    return committed


def prepare_backbone(suite: Suite, real: RealData, out: Path) -> tuple[str, str]:
    if suite.backbone.kind == "dit":
        try:  # only the config: fails fast, before any actor starts, when the hub is out of reach
            config = DiTTransformer2DModel.load_config(suite.backbone.pretrained, subfolder="transformer",
                                                       local_files_only=os.environ.get("HF_HUB_OFFLINE", "0") == "1")
        except Exception as e:
            raise PrepareError(f"{suite.source}: backbone.pretrained: cannot load {suite.backbone.pretrained!r} "
                               f"({type(e).__name__}); without network, set it to a local copy of the model "
                               f"(transformer/, vae/, scheduler/)") from None
        vae = suite.backbone.vae
        if vae not in (None, "subfolder"):
            try:
                AutoencoderKL.load_config(vae, local_files_only=os.environ.get("HF_HUB_OFFLINE", "0") == "1")
            except Exception as e:
                raise PrepareError(f"{suite.source}: backbone.vae: cannot load {vae!r} ({type(e).__name__}); "
                                   f"without network, set it to a local copy of the VAE (config.json and "
                                   f"weights)") from None
        _check_guided_channels(suite, int(config["in_channels"]))
        return suite.backbone.pretrained, config_hash({"pretrained": suite.backbone.pretrained,
                                                       "vae": suite.backbone.vae, "dtype": suite.backbone.dtype,
                                                       "classes": suite.backbone.classes,
                                                       "guided_channels": guided_channels(suite.backbone)})
    train = suite.backbone.train
    identity = {"kind": "pixel-dit", "train": train.identity(), "data": real.train.fingerprint(),
                "classes": real.classes}
    key = config_hash(identity)
    name = f"backbone-{key}"
    where = _cached_dir(out, suite, name)
    model_dir = where / "model"
    drop_damaged(model_dir, "backbone", lambda d: load_dit_backbone(d, vae=None), "training it again")
    drop_damaged(where / "work" / "checkpoint.pt", "backbone",  # training resumes from it
                 lambda f: torch.load(f, map_location="cpu", weights_only=False), "training from the start")
    if (model_dir / "transformer" / "config.json").exists():
        log(f"[prepare] backbone: pixel DiT {key} from {where}")
    else:
        work, threads = _training_dir(out, identity), idle_cores()
        log(f"[prepare] backbone: training pixel DiT {key} ({train.steps} steps on {len(real.train)} images, "
            f"{threads} torch threads; resumes from {work} if interrupted or shorter)")
        images = real.train.load(torch.arange(len(real.train)))
        atomic.sweep_temps(where)  # a model folder a killed run left half-written
        # Training resumes from `work`, never from a half-written model.
        with atomic.replacing(model_dir) as tmp, _torch_threads(threads):
            train_pixel_dit(images, real.train.labels, len(real.classes), train, tmp, work)
    channels = json.loads((model_dir / "transformer" / "config.json").read_text())["in_channels"]
    _check_guided_channels(suite, channels)
    n = guided_channels(suite.backbone)
    # `key` names the trained model; sets made with other guidance than every channel get another identity.
    return str(model_dir), key if n in (None, channels) else config_hash({"backbone": key, "guided_channels": n})


def idle_cores() -> int:
    """The cores no other process keeps busy (the last minute's load average off this process's cores), at
    least one: torch's default of every core beside busy Ray actors or other jobs made a pixel DiT step 3–6 s
    instead of 0.55 s with one thread (issue 13)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores - round(os.getloadavg()[0])))


@contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _training_dir(out: Path, identity: dict) -> Path:
    """Where a pixel DiT trains: keyed by all but its step count, so raising `steps` extends the finished run
    from its last checkpoint. A run asked for fewer steps than that checkpoint holds trains in its own folder."""
    steps = identity["train"]["steps"]
    every_step_count = {**identity, "train": {**identity["train"], "steps": None}}
    shared = out / "cache" / f"pixel-dit-training-{config_hash(every_step_count)}"
    checkpoint = shared / "checkpoint.pt"
    if checkpoint.exists() and torch.load(checkpoint, map_location="cpu", weights_only=False)["step"] > steps:
        return shared.with_name(f"{shared.name}-{steps}-steps")
    return shared


def describe_teacher(t: TeacherConfig, suite: Suite, test_accuracy: float | None) -> str:
    """One line saying which classifier this is and where it came from."""
    acc = f", test accuracy {test_accuracy:.1%}" if test_accuracy is not None else ""
    if t.kind == "timm":
        return f"{t.arch} pretrained on ImageNet-1k ({t.weights}), outputs picked by the suite's WNIDs{acc}"
    if t.weights:
        return f"{t.arch} trained on {suite.name}'s classes, from {t.weights}{acc}"
    recipe = " (torchvision's reference recipe, as RDED's observers)" if t.recipe is not None else ""
    return f"{t.arch} trained on {suite.name} by prepare{recipe}{acc}"


def prepare_teacher(suite: Suite, real: RealData, out: Path, t: TeacherConfig | None = None, connect=None,
                    where: str = "teacher") -> tuple[str, str, float | None]:
    """The suite's teacher (or `t`, e.g. a cross-architecture teacher): its source, identity hash and, for one
    trained on the suite's classes, its test accuracy. `connect` reaches the Ray cluster, whose GPUs train a
    teacher with a recipe; `where` names `t` in the suite for error messages."""
    t = t or suite.teacher
    if t.kind == "timm":
        try:
            load_timm_teacher(t.arch, t.weights, real.classes, class_list(t.classes), t.input_size)
        except Exception as e:
            raise PrepareError(f"{suite.source}: {where}.weights: cannot load {t.weights!r} for {t.arch} "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); without network, "
                               f"set it to a local weights file") from None
        return t.weights or "", config_hash({"arch": t.arch, "weights": t.weights, "classes": t.classes}), None
    if t.weights:
        path, key = _imported_teacher(suite, real, out, t, where)
    elif t.recipe is not None:
        path, key = _recipe_teacher(suite, real, out, t, connect)
    else:
        path, key = _small_teacher(suite, real, out, t)
    teacher = load_trained_teacher(path)
    if real.test is None:  # a hyperparameter search: the test split is not loaded, and not read
        return str(path), key, None
    acc = accuracy(teacher, real.test.load(torch.arange(len(real.test))), real.test.labels)
    log(f"[prepare] teacher: {t.arch} {key}, test accuracy {acc:.2%}")
    return str(path), key, acc


def _small_teacher(suite: Suite, real: RealData, out: Path, t: TeacherConfig) -> tuple[Path, str]:
    identity = {"kind": "trained", "train": asdict(t.train), "arch": t.arch, "data": real.train.fingerprint(),
                "classes": real.classes}
    if t.arch_kwargs:  # only when set, so the identity of teachers made before the option existed holds
        identity["arch_kwargs"] = t.arch_kwargs
    key = config_hash(identity)
    where = _cached_dir(out, suite, f"teacher-{key}")
    path = where / "teacher.pt"
    drop_damaged(path, "teacher", load_trained_teacher, "training it again")
    if not path.exists():
        log(f"[prepare] teacher: training {t.arch} {key}")
        where.mkdir(parents=True, exist_ok=True)
        train_teacher(real.train.load(torch.arange(len(real.train))), real.train.labels, len(real.classes),
                      t.arch, t.train, path, arch_kwargs=t.arch_kwargs)
    return path, key


def _imported_teacher(suite: Suite, real: RealData, out: Path, t: TeacherConfig, where: str) -> tuple[Path, str]:
    """A checkpoint trained on the suite's classes elsewhere, converted once into the cache (keyed by its bytes)."""
    source = Path(t.weights)
    if not source.is_file():
        raise PrepareError(f"{suite.source}: {where}.weights: {source} is not a file (a checkpoint trained on the "
                           f"suite's classes, e.g. RDED's data/pretrain_models/<subset>_resnet18.pth)")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    key = config_hash({"kind": "trained", "weights_sha256": digest, "arch": t.arch, "arch_kwargs": t.arch_kwargs,
                       "input_size": t.input_size, "classes": real.classes})
    path = out / "cache" / f"teacher-{key}" / "teacher.pt"
    drop_damaged(path, where, load_trained_teacher, "converting the checkpoint again")
    if not path.exists():
        try:
            import_teacher_checkpoint(source, t.arch, len(real.classes), t.input_size, path, t.arch_kwargs)
        except ValueError as e:
            raise PrepareError(f"{suite.source}: {where}.weights: {e}") from None
    return path, key


def _recipe_teacher(suite: Suite, real: RealData, out: Path, t: TeacherConfig, connect) -> tuple[Path, str]:
    """A teacher trained from scratch on the suite's training split with `t.recipe`: through Ray Train on the
    cluster's GPUs where it has any (at most one per 32 images of the batch, torchvision's per-GPU batch),
    else in this process."""
    key = config_hash({"kind": "trained", "recipe": asdict(t.recipe), "arch": t.arch, "arch_kwargs": t.arch_kwargs,
                       "input_size": t.input_size, "data": real.train.fingerprint(), "classes": real.classes})
    path = _cached_dir(out, suite, f"teacher-{key}") / "teacher.pt"
    drop_damaged(path, "teacher", load_trained_teacher, "training it again")
    if path.exists():
        return path, key
    workers = 0
    if connect is not None:
        connect()
        workers = min(cluster_gpus(), max(1, t.recipe.batch_size // 32))
    log(f"[prepare] teacher: training {t.arch} {key} on {len(real.train)} images for {t.recipe.epochs} epochs "
        + (f"through Ray Train on {workers} GPUs" if workers else "in this process"))
    images = real.train.load(torch.arange(len(real.train))).numpy()
    args = (real.train.labels, len(real.classes), t.arch, t.recipe, t.input_size)
    if not workers:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        teacher = train_recipe_teacher(images, *args, device=device, arch_kwargs=t.arch_kwargs)
        save_teacher(teacher.cpu(), t.arch, len(real.classes), path, **t.arch_kwargs)
        return path, key
    train_data_parallel(images, args, t, path, workers, use_gpu=True,
                        storage_path=str((out / "ray_train").resolve()))
    return path, key


def train_data_parallel(images, args: tuple, t: TeacherConfig, path: Path, workers: int, use_gpu: bool,
                        storage_path: str | None = None) -> None:
    """`train_recipe_teacher` on `workers` Ray Train workers, which share the images through the object store;
    rank 0's teacher is saved at `path`."""
    images_ref = ray.put(images)

    def work(worker):
        teacher = train_recipe_teacher(ray.get(images_ref), *args, device=worker.device, rank=worker.rank,
                                       world=worker.world, wrap=worker.wrap, arch_kwargs=t.arch_kwargs)
        save_teacher(teacher.cpu(), t.arch, args[1], worker.folder / "teacher.pt", **t.arch_kwargs)

    run_data_parallel(work, workers, use_gpu, lambda folder: atomic.torch_save(
        torch.load(folder / "teacher.pt", map_location="cpu", weights_only=True), path), storage_path)


def teacher_val_accuracy(suite: Suite, real: RealData, out: Path, source: str, teacher_hash: str,
                         chunk: int = 1000) -> float:
    """The teacher's accuracy over the suite's classes on the validation split (never the test split),
    cached by teacher and split; read in chunks, because ImageNet-1k's split does not fit in memory."""
    key = config_hash([teacher_hash, real.val.fingerprint()])
    path = out / "cache" / f"teacher-val-{key}.json"
    drop_damaged(path, "teacher", lambda f: read_json(f, ("accuracy",)), "measuring its validation accuracy again")
    if path.exists():
        acc = json.loads(path.read_text())["accuracy"]
    else:
        teacher = load_teacher(suite.teacher, source, real.classes, "cuda" if torch.cuda.is_available() else "cpu")
        correct = 0.0
        for i in range(0, len(real.val), chunk):
            idx = torch.arange(i, min(i + chunk, len(real.val)))
            correct += accuracy(teacher, real.val.load(idx), real.val.labels[idx]) * len(idx)
        acc = correct / max(1, len(real.val))
        atomic.write_json(path, {"accuracy": acc, "images": len(real.val)})
    log(f"[prepare] teacher: validation accuracy {acc:.2%} ({len(real.val)} images)")
    return acc


@torch.no_grad()
def backbone_check(backbone, teacher: Teacher, num_classes: int, per_class: int, cfg_scale: float, steps: int,
                   seed: int = 0, batch_size: int = 100, conditions: list[int] | None = None) -> dict:
    """Sample `per_class` images per class and count how many the teacher assigns to their condition.
    `conditions[c]` is the backbone's label of suite class c (default: c)."""
    agree, total = torch.zeros(num_classes), 0
    t0 = time.perf_counter()
    bar = tqdm(total=num_classes * per_class, desc="[prepare] backbone check", mininterval=5)
    for c in range(num_classes):
        g = torch.Generator().manual_seed(seed * 100_003 + c)
        noise = torch.randn((per_class, *backbone.latent_shape), generator=g)
        for i in range(0, per_class, batch_size):
            z = ddim_sample(backbone, noise[i:i + batch_size].to(backbone.device),
                            conditions[c] if conditions else c, steps, cfg_scale)
            pred = teacher(backbone.decode(z)).argmax(1).cpu()
            agree[c] += (pred == c).sum()
            total += len(pred)
            bar.update(len(pred))
    bar.close()
    per_class_rate = (agree / per_class).tolist()
    return {"agreement": float(agree.sum() / total), "per_class": per_class_rate, "samples": total,
            "cfg_scale": cfg_scale, "steps": steps, "seconds": time.perf_counter() - t0}


def prepare(suite: Suite, real: RealData, out: Path, check: bool = True, connect=None,
            methods: list[str] | None = None, accept_failed_check: bool = False) -> Prepared:
    """`connect` reaches the Ray cluster; only a teacher trained with a recipe asks for it (for its GPUs).
    A failed backbone check stops the run here (PrepareError) when any of `methods` (default: the suite's)
    samples the backbone, unless `accept_failed_check`: then their rows are marked on the board."""
    out = Path(out)
    backbone_source, backbone_hash = prepare_backbone(suite, real, out)
    teacher_source, teacher_hash, teacher_acc = prepare_teacher(suite, real, out, connect=connect)
    relabel = None
    if suite.teacher.relabel is not None:
        r = suite.teacher.relabel
        source, key, acc = prepare_teacher(suite, real, out, r, connect, where="teacher.relabel")
        relabel = PreparedTeacher(r, source, key, acc, describe_teacher(r, suite, acc))
    val_acc = None
    if "teacher_val_accuracy" in suite_needs(suite):
        val_acc = teacher_val_accuracy(suite, real, out, teacher_source, teacher_hash)
    conditions = backbone_conditions(suite, real.classes)

    def prepared(check_result: dict | None) -> Prepared:
        return Prepared(list(real.classes), suite.backbone, backbone_source, backbone_hash, conditions,
                        suite.teacher, teacher_source, teacher_hash, teacher_acc, check_result, val_acc,
                        describe_teacher(suite.teacher, suite, teacher_acc), relabel)

    result = None
    if check:
        b = suite.backbone
        key = config_hash([backbone_hash, teacher_hash, b.check_per_class, b.check_cfg_scale, b.check_steps])
        path = out / "cache" / f"backbone-check-{key}.json"
        drop_damaged(path, "backbone check", lambda f: read_json(
            f, ("agreement", "passed", "samples", "cfg_scale", "steps", "min_agreement")), "checking again")
        if path.exists():
            result = json.loads(path.read_text())
        else:
            unchecked = prepared(None)
            result = backbone_check(unchecked.load_backbone(), unchecked.load_teacher(), len(real.classes),
                                    b.check_per_class, b.check_cfg_scale, b.check_steps, conditions=conditions)
            result["min_agreement"] = b.check_min_agreement
            result["passed"] = result["agreement"] >= b.check_min_agreement
            atomic.write_json(path, result, indent=1)
        verdict = "passes" if result["passed"] else "FAILS"
        log(f"[prepare] backbone check: teacher agrees with the conditioning class on {result['agreement']:.1%} "
            f"of {result['samples']} samples (cfg {result['cfg_scale']}, {result['steps']} steps); "
            f"{verdict} the suite's minimum {result['min_agreement']:.0%}")
        _stop_on_failed_check(suite, result, methods, accept_failed_check)
    return prepared(result)


def _stop_on_failed_check(suite: Suite, result: dict, methods: list[str] | None, accept: bool) -> None:
    """Sets sampled from a backbone that does not make its classes are not results: refuse to make them."""
    users = [m for m in (methods or suite.methods) if "backbone" in get_method(m).needs_for(suite.method_config(m))]
    if result["passed"] or not users:
        return
    if accept:
        log(f"[prepare] backbone check failed; --accept-failed-check: the rows of {', '.join(users)} are marked "
            f"on the board")
        return
    raise PrepareError(f"{suite.source}: backbone: the check failed ({result['agreement']:.1%} agreement, below "
                       f"check_min_agreement {result['min_agreement']:.0%}), so {', '.join(users)} would sample a "
                       f"backbone that does not make its classes; train it longer (backbone.train.steps), run "
                       f"only methods without it (--methods), or pass --accept-failed-check to mark their rows")
