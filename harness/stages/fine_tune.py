"""Fine-tune: the backbones that methods fine-tune before they sample (Minimax, IMS3), as prepared artefacts.

A method declares what it needs (`Method.fine_tuning`: a schedule and its objective's settings); the harness
trains DiffFit's parameters of the suite's backbone (harness/models/generators/difffit.py) on the suite's training split
through Ray Train's TorchTrainer — one worker per GPU with DDP where the cluster has GPUs, one CPU worker
otherwise; in this process where no cluster is given, as `prepare` trains a teacher — and keeps the result by
content: the key is the base backbone's hash, the fine-tuning settings
and the training split's fingerprint, so methods (and variants) asking for the same fine-tune share one model,
and a later run reuses it. Training checkpoints every `checkpoint_every` steps and a killed run resumes from the
last checkpoint; every step draws from generators seeded by (seed, step, rank), so a resumed run makes the
weights an uninterrupted one makes. The cost (seconds, peak memory) is recorded with the model, for the cost
table of every set sampled from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from harness.config.schema import Suite
from harness.core import atomic, cache
from harness.core.cache import drop_damaged, log, read_json
from harness.core.identity import backbone_check_key, fine_tune_key, fine_tune_schedule_key, identity_fields
from harness.models.data import RealData, load_real_data
from harness.models.generators import generator_for
from harness.models.generators.difffit import DIFFFIT_VERSION, add_difffit
from harness.models.generators.sampling import fit_to_backbone
from harness.runtime.data_parallel import Worker, cluster_gpus, run_data_parallel
from harness.runtime.resources import ShardPeakMemory, machine
from harness.stages.prepare import FineTuned, Prepared, backbone_check
from methods import get_method
from methods.base import FineTuning

MODEL, COST, CHECKPOINT = "difffit.pt", "cost.json", "checkpoint.pt"


def fine_tune_schedule(ft: FineTuning) -> dict:
    """What keys the fine-tuned model of `ft`: its identity, every setting but how often it is saved."""
    return identity_fields(ft)


def needed_fine_tunes(suite: Suite, methods: list[str]) -> dict[str, tuple[FineTuning, list[str]]]:
    """The distinct fine-tunes `methods` sample from, by the hash of their schedule: each with the methods that
    share it (variants asking for the same fine-tune share one model). From the suite's config of each method: a
    searched set samples its method's fine-tuned backbone."""
    needed: dict[str, tuple[FineTuning, list[str]]] = {}
    for name in methods:
        ft = get_method(name).fine_tuning(suite.method_config(name))
        if ft is not None:
            # Keyed by the backbone it tunes too: one schedule on two kinds is two fine-tunes.
            key = fine_tune_schedule_key(fine_tune_schedule(ft))
            kind = suite.backbone_of(name).kind
            key = key if kind == suite.backbone.kind else f"{kind}/{key}"
            needed.setdefault(key, (ft, []))[1].append(name)
    return needed


def _step_generator(*parts) -> torch.Generator:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()
    return torch.Generator().manual_seed(int(digest[:15], 16))


def fine_tune_step(
    backbone,
    objective,
    opt: torch.optim.Optimizer,
    params: dict[str, torch.nn.Parameter],
    ema: dict[str, torch.Tensor],
    ema_decay: float,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: torch.Tensor,
    gen: torch.Generator,
    device,
) -> dict[str, float]:
    """One optimiser step of DiffFit's parameters on a batch of images in [0, 1], and the EMA after it: what every
    step of `train_fine_tune` does, and what the rehearsal (harness/stages/rehearsal.py) measures. Returns the
    loss's named parts."""
    with torch.no_grad():
        x0 = backbone.encode(fit_to_backbone(images, backbone).to(device))
    loss, parts = objective.loss(backbone, x0, labels.to(device), classes.to(device), gen)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        for n, average in ema.items():
            average.mul_(ema_decay).add_(params[n].detach(), alpha=1 - ema_decay)
    return parts


def train_fine_tune(
    backbone,
    real: RealData,
    conditions: list[int],
    method: str,
    config,
    ft: FineTuning,
    work_dir: Path,
    device: str = "cpu",
    rank: int = 0,
    world: int = 1,
    wrap=lambda m: m,
    progress: bool = True,
) -> tuple[dict, dict]:
    """Fine-tune `backbone` (in place) with DiffFit and `method`'s objective, resuming from `work_dir`'s checkpoint.
    Returns the EMA of the trained parameters and the cost."""
    work_dir.mkdir(parents=True, exist_ok=True)
    names = add_difffit(backbone)
    transformer = backbone.transformer
    params = dict(transformer.named_parameters())
    trainable = [params[n] for n in names]
    ema = {n: params[n].detach().clone() for n in names}
    opt = torch.optim.AdamW(trainable, lr=ft.lr, weight_decay=0.0)
    objective = get_method(method).fine_tune_objective(config)
    n_images = len(real.train)
    per_epoch = n_images // ft.batch_size
    if per_epoch < 1 or ft.batch_size % world:
        raise ValueError(f"fine-tuning batch {ft.batch_size} does not fit {n_images} images on {world} workers")
    total = ft.epochs * per_epoch if ft.max_steps is None else min(ft.max_steps, ft.epochs * per_epoch)
    step, seconds, peak = 0, 0.0, 0
    checkpoint, rank_state = work_dir / CHECKPOINT, work_dir / f"objective-{rank}.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        with torch.no_grad():
            for n in names:
                params[n].copy_(state["trainable"][n])
                ema[n].copy_(state["ema"][n])
        opt.load_state_dict(state["opt"])
        step, seconds, peak = state["step"], state["seconds"], state["peak_memory_bytes"]
        mine = (
            state["objective"]
            if rank == 0
            else (torch.load(rank_state, map_location=device, weights_only=False) if rank_state.exists() else None)
        )
        if mine is not None and mine.get("step") == step:
            objective.load_state_dict(mine["state"])
        if rank == 0:
            log(f"[fine-tune] {method}: resuming from step {step} of {total} ({checkpoint})")
    resumed_from = step
    backbone.transformer = wrap(transformer)  # DDP over the workers where there are several
    memory = ShardPeakMemory(device)
    memory.start()
    t0 = time.perf_counter()
    local = ft.batch_size // world
    labels_of = real.train.labels
    conditions_t = torch.tensor(conditions)
    order, order_epoch = None, -1
    bar = tqdm(
        total=total, initial=step, desc=f"[fine-tune] {method}", disable=not progress or rank != 0, mininterval=5
    )
    parts: dict[str, float] = {}
    while step < total:
        epoch, i = divmod(step, per_epoch)
        if epoch != order_epoch:  # every worker draws the epoch's order alike, and takes its share of each batch
            order, order_epoch = torch.randperm(n_images, generator=_step_generator(ft.seed, "epoch", epoch)), epoch
        idx = order[i * ft.batch_size : (i + 1) * ft.batch_size][rank::world][:local]
        gen = _step_generator(ft.seed, step, rank)
        images = real.train.load(idx).float().div(255)
        if ft.hflip:
            flip = torch.rand(len(idx), generator=gen) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        classes = labels_of[idx]
        drop = torch.rand(len(idx), generator=gen) < ft.class_dropout
        labels = torch.where(drop, torch.full_like(classes, backbone.null_class), conditions_t[classes])
        parts = fine_tune_step(
            backbone, objective, opt, params, ema, ft.ema_decay, images, labels, classes, gen, device
        )
        step += 1
        bar.update(1)
        if step % ft.checkpoint_every == 0 or step == total:
            seconds_now = seconds + time.perf_counter() - t0
            peak_now = max(peak, memory.peak())
            if rank != 0:
                atomic.torch_save({"step": step, "state": objective.state_dict()}, rank_state)
            else:
                atomic.torch_save(
                    {
                        "step": step,
                        "trainable": {n: params[n].detach().cpu() for n in names},
                        "ema": {n: v.cpu() for n, v in ema.items()},
                        "opt": opt.state_dict(),
                        "seconds": seconds_now,
                        "peak_memory_bytes": peak_now,
                        "objective": {"step": step, "state": objective.state_dict()},
                    },
                    checkpoint,
                )
    bar.close()
    backbone.transformer = transformer
    cost = {
        "seconds": seconds + time.perf_counter() - t0,
        "peak_memory_bytes": int(max(peak, memory.peak())),
        "peak_memory_kind": memory.kind,
        "steps": total,
        "resumed_from": resumed_from,
        "workers": world,
        "loss": parts,
        **machine(device),
    }
    return {n: v.cpu() for n, v in ema.items()}, cost


def fine_tune_backbones(
    suite: Suite,
    real: RealData,
    prepared: Prepared,
    out: Path,
    methods: list[str],
    connect=None,
    check: bool = False,
    make: bool = True,
) -> Prepared:
    """`prepared` with the fine-tuned backbone of every one of `methods` that declares one; with `check`, each
    fine-tuned backbone also gets the base one's check (does the teacher recognise its samples?). Without `make`
    (a run that only draws the board) nothing is trained: an uncached fine-tune is named by its key alone, which
    is all its sets' identities need."""
    entries = {}
    for ft, names in needed_fine_tunes(suite, methods).values():
        first = names[0]  # methods that share a schedule share its model, named by the first that asks for it
        view, base = suite.for_method(first), prepared.for_method(first)  # the backbone it fine-tunes
        tuned = prepare_fine_tuned(view, real, base, Path(out), first, suite.method_config(first), ft, connect, make)
        if check and tuned.source is not None:
            tuned.check = check_fine_tuned(view, base, Path(out), first, tuned)
        entries.update(dict.fromkeys(names, tuned))
    return dataclasses.replace(prepared, fine_tuned=entries)


def check_fine_tuned(suite: Suite, prepared: Prepared, out: Path, method: str, entry: FineTuned) -> dict:
    """The base backbone's check (`prepare.backbone_check`, the suite's settings) on a fine-tuned backbone, cached:
    what the fine-tune did to the teacher's agreement with the conditioning class. It stops nothing."""
    b = suite.backbone
    key = backbone_check_key(entry.hash, prepared.teacher_hash, b.check_per_class, b.check_cfg_scale, b.check_steps)

    def check() -> dict:
        return backbone_check(
            prepared.load_backbone(fine_tuned=entry),
            prepared.load_teacher(),
            len(prepared.classes),
            b.check_per_class,
            b.check_cfg_scale,
            b.check_steps,
            conditions=prepared.conditions,
            generator=generator_for(b),
        )

    result = cache.ensure_json(
        out / "cache" / f"backbone-check-{key}.json",
        "fine-tuned backbone check",
        ("agreement", "samples"),
        "checking again",
        check,
        indent=1,
    )
    base = prepared.backbone_check
    versus = f" (the base backbone: {base['agreement']:.1%})" if base else ""
    log(
        f"[fine-tune] {method}: the teacher agrees with the conditioning class on {result['agreement']:.1%} of "
        f"{result['samples']} samples of the fine-tuned backbone{versus}"
    )
    return {k: result[k] for k in ("agreement", "samples", "cfg_scale", "steps")}


def prepare_fine_tuned(
    suite: Suite,
    real: RealData,
    prepared: Prepared,
    out: Path,
    method: str,
    config,
    ft: FineTuning,
    connect=None,
    make: bool = True,
) -> FineTuned:
    key = fine_tune_key(
        prepared.backbone_hash, fine_tune_schedule(ft), real.train.fingerprint(), prepared.conditions, DIFFFIT_VERSION
    )
    where = out / "cache" / f"finetuned-{key}"
    model, cost_path = where / MODEL, where / COST
    drop_damaged(
        model,
        "fine-tuned backbone",
        lambda f: torch.load(f, map_location="cpu", weights_only=True),
        "training it again",
    )
    drop_damaged(
        cost_path, "fine-tuned backbone", lambda f: read_json(f, ("seconds", "peak_memory_bytes")), "training it again"
    )
    work = out / "cache" / f"finetuned-{key}-work"
    drop_damaged(
        work / CHECKPOINT,
        "fine-tuned backbone",
        lambda f: torch.load(f, map_location="cpu", weights_only=False),
        "training from the start",
    )
    if model.exists() and cost_path.exists():
        log(f"[fine-tune] {method}: the fine-tuned backbone {key} from {where}")
        return FineTuned(key, str(model), json.loads(cost_path.read_text()))
    if not make:
        return FineTuned(key)
    if connect is None:  # no cluster to train on (as `prepare` trains a teacher): this process
        device = "cuda" if torch.cuda.is_available() else "cpu"
        log(
            f"[fine-tune] {method}: training the fine-tuned backbone {key} in this process on {device} "
            f"(resumes from {work} if interrupted)"
        )
        trained, cost = train_fine_tune(
            prepared.load_backbone(device), real, prepared.conditions, method, config, ft, work, device
        )
        atomic.sweep_temps(where)
        atomic.torch_save(trained, model)
        atomic.write_json(cost_path, cost)
        return _trained(method, key, model, cost)
    connect()
    gpus = cluster_gpus()
    # One worker per GPU, as many as split the global batch evenly (the reference asserts it divides).
    workers = max(w for w in range(1, max(1, min(gpus, ft.batch_size)) + 1) if ft.batch_size % w == 0)
    log(
        f"[fine-tune] {method}: training the fine-tuned backbone {key} through Ray Train on "
        + (f"{workers} GPU(s)" if gpus else "one CPU worker")
        + f" (resumes from {work} if interrupted)"
    )

    def work_fn(worker: Worker) -> None:
        data = load_real_data(suite.data)
        backbone = prepared.load_backbone(worker.device)
        result = train_fine_tune(
            backbone,
            data,
            prepared.conditions,
            method,
            config,
            ft,
            work,
            worker.device,
            worker.rank,
            worker.world,
            worker.wrap,
        )
        if worker.rank == 0:
            torch.save(result[0], worker.folder / MODEL)
            (worker.folder / COST).write_text(json.dumps(result[1]))

    def collect(folder: Path) -> None:
        atomic.sweep_temps(where)
        atomic.torch_save(torch.load(folder / MODEL, map_location="cpu", weights_only=True), model)
        atomic.write_text(cost_path, (folder / COST).read_text())

    run_data_parallel(work_fn, workers, gpus > 0, collect, storage_path=str((out / "ray_train").resolve()))
    return _trained(method, key, model, json.loads(cost_path.read_text()))


def _trained(method: str, key: str, model: Path, cost: dict) -> FineTuned:
    resumed = f", resumed from step {cost['resumed_from']}" if cost.get("resumed_from") else ""
    log(
        f"[fine-tune] {method}: {key} trained for {cost['steps']} steps in {cost['seconds']:.0f} s{resumed}, peak "
        f"memory {cost['peak_memory_bytes'] / 2**20:.0f} MiB"
    )
    return FineTuned(key, str(model), cost)
