"""Training a student: the one loop every protocol runs, readable in one go.

Data stays one tensor on the device and augmentation is batched (harness/models/augment.py), so a tiny student is not
dominated by Python overhead. The protocol object (harness/models/protocols.py) supplies the recipe; nothing here
knows a protocol by name. The reported accuracy is that of the final epoch: choosing the best epoch by test
accuracy would tune on the test set.
"""

from __future__ import annotations

import copy
import time

import torch

from harness.models.protocols import Protocol
from harness.models.students import create_student

# Test batches: on a CPU, the activations of 64 images of a small student stay in the caches and pass in less time
# per image than 1,000 (ConvNet-3 at 28 px, one thread: 1.1–2.2× less CPU, with the load; docs/performance.md); a
# GPU wants large batches. The model is in eval mode, so the batch size changes no prediction.
CPU_TEST_BATCH, GPU_TEST_BATCH = 64, 1000


@torch.no_grad()
def test_accuracy(
    model,
    images_u8: torch.Tensor,
    labels: torch.Tensor,
    mean: float,
    std: float,
    batch_size: int | None = None,
    view=None,
    autocast: torch.dtype | None = None,
) -> float:
    """Top-1 accuracy on uint8 test images, each batch in [0, 1] passed through `view` (the protocol's test-time
    resize and crop; None: as they are) and normalised. `batch_size` None: the device's (CPU_TEST_BATCH,
    GPU_TEST_BATCH). `autocast`: the dtype the student trained in (None: fp32), which it is tested in too."""
    batch_size = batch_size or (CPU_TEST_BATCH if images_u8.device.type == "cpu" else GPU_TEST_BATCH)
    model.eval()
    correct = 0
    for i in range(0, len(images_u8), batch_size):
        x = images_u8[i : i + batch_size].float().div(255)
        x = ((view(x) if view is not None else x) - mean) / std
        with torch.autocast(images_u8.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            logits = model(x)
        correct += (logits.argmax(1) == labels[i : i + batch_size]).sum().item()
    return correct / len(images_u8)


class SeedStack:
    """S independently initialised copies of one student, trained as one: `forward` takes a batch per seed
    ([S, B, ...]) and returns logits per seed ([S, B, K]).

    Vectorised, the copies are one set of stacked parameters run through `torch.func.vmap`: on a GPU S small
    students then cost about one kernel launch stream instead of S. Not vectorised, the copies run one after
    another: on a CPU, where a student's convolutions already saturate the cores, that is as fast and exactly
    reproduces S separate runs. Either way the optimiser is elementwise (SGD, AdamW), so one optimiser over all
    seeds' parameters is S independent optimisers.
    """

    def __init__(self, models: list[torch.nn.Module], vectorise: bool):
        self.models, self.vectorise = models, vectorise
        names = [n for n, _ in models[0].named_parameters()]
        if vectorise:
            from torch.func import functional_call, stack_module_state, vmap

            params, self.buffers = stack_module_state(models)
            self.params = params
            base = copy.deepcopy(models[0]).to("meta")
            self._forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), randomness="different")
            self.named = [(n, [params[n]]) for n in names]
        else:
            self.named = [(n, [dict(m.named_parameters())[n] for m in models]) for n in names]

    def param_groups(self, no_decay_on_bias_and_norm: bool, weight_decay: float) -> list[dict]:
        """All parameters; with `no_decay_on_bias_and_norm`, biases and norm weights (≤ 1-D per model) in a
        group without weight decay, as RDED has it."""
        shapes = dict(self.models[0].named_parameters())
        if not no_decay_on_bias_and_norm:
            return [{"params": [p for _, ps in self.named for p in ps]}]
        decay = [p for n, ps in self.named for p in ps if shapes[n].ndim > 1 and "weight" in n]
        rest = [p for n, ps in self.named for p in ps if not (shapes[n].ndim > 1 and "weight" in n)]
        return [{"params": decay}, {"params": rest, "weight_decay": 0.0}]

    def train(self, mode: bool = True):
        for m in self.models:
            m.train(mode)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.vectorise:
            return self._forward(self.params, self.buffers, x)
        return torch.stack([m(xs) for m, xs in zip(self.models, x)])

    def unstacked(self) -> list[torch.nn.Module]:
        """The trained copies as ordinary modules (for testing)."""
        if self.vectorise:
            with torch.no_grad():
                for s, m in enumerate(self.models):
                    for n, t in list(m.named_parameters()) + list(m.named_buffers()):
                        t.copy_((self.params.get(n) if n in self.params else self.buffers[n])[s])
        return self.models


class Plateau:
    """Training that follows validation accuracy (`Protocol.plateau_rule`): keeps the best epoch's weights; after
    `patience` epochs without a new best multiplies the lr by `factor`, and after `drops` drops the next plateau
    ends training. A reference row trained to its plateau, rather than for a guessed number of epochs, is what
    the label-robust score divides by."""

    def __init__(self, opt: torch.optim.Optimizer, patience: int, drops: int, factor: float):
        self.opt, self.patience, self.drops, self.factor = opt, patience, drops, factor
        self.best, self.best_epoch, self.best_state = -1.0, 0, None
        self.epoch = self.since_best = self.dropped = 0

    def ended(self, accuracy: float, model: torch.nn.Module) -> bool:
        self.epoch += 1
        if accuracy > self.best:
            self.best, self.best_epoch, self.since_best = accuracy, self.epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.since_best += 1
        if self.since_best < self.patience:
            return False
        if self.dropped == self.drops:
            return True
        for group in self.opt.param_groups:
            group["lr"] *= self.factor
        self.dropped, self.since_best = self.dropped + 1, 0
        return False


def train_student(
    student: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    ipc: int,
    protocol: Protocol,
    seed: int | list[int],
    device: str = "cpu",
    teacher=None,
    progress=None,
    vectorise: bool | None = None,
    rank: int = 0,
    world: int = 1,
    wrap=None,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
    report=None,
    report_every: int = 1,
):
    """Train `student` on uint8 `images` under `protocol`; final test accuracy + timings.

    Each step draws every seed's batch from its own generator (`protocol.batch`: augmentation, mixing, the
    targets), asks `teacher` for the targets where the protocol trains on the teacher's outputs, and sums the
    seeds' losses. `seed` may be a list: the seeds are then trained together (see SeedStack; `vectorise`
    defaults to on for CUDA) and a list of results is returned. Each seed keeps its own initialisation, data
    order and augmentation stream, so seed s trained with others is seed s trained alone.

    Data-parallel (Ray Train's TorchTrainer calls this on each of `world` workers, `wrap` being its
    `prepare_model`): every worker draws the whole batch with the same generator and trains on its `rank`-th
    slice, so W workers see the batches one process would.

    A protocol with a `plateau_rule` (the full-data row) follows the accuracy on `validation` (uint8 images,
    labels: the split carved from the training set) instead of a schedule, and trains one seed.

    `report(epoch, accuracy)`, where given, is called every `report_every` epochs and after the last with the
    first seed's accuracy on `test_images`: a hyperparameter search passes the validation split as those, and
    its early-stopping scheduler reads the curve. Evaluating draws no random number, so it changes no result.
    """
    started = time.perf_counter()
    seeds = [seed] if isinstance(seed, int) else list(seed)
    protocol = protocol.for_student(student)
    if protocol.needs_teacher and teacher is None:
        raise ValueError(f"the {protocol.name} protocol needs a teacher")
    rule = protocol.plateau_rule()
    if rule is not None and (validation is None or len(seeds) != 1):
        raise ValueError("a recipe that follows validation accuracy trains one seed on a given validation split")
    vectorise = False if rule is not None else vectorise
    vectorise = str(device).startswith("cuda") and world == 1 if vectorise is None else vectorise
    in_chans, size = images.shape[1], protocol.train_size(images.shape[-1])
    models = []
    for s in seeds:
        torch.manual_seed(s)
        models.append(
            create_student(student, num_classes, in_chans, size, **protocol.student_kwargs.get(student, {})).to(device)
        )
    # The GPU fast paths (Protocol.precision, channels_last, compile): bf16 autocast over fp32 master weights;
    # channels-last where the seeds run one after another (vmap's stacked weights have no memory format).
    autocast = protocol.autocast_dtype()
    on_cuda = str(device).startswith("cuda")
    channels_last = (on_cuda if protocol.channels_last is None else protocol.channels_last) and not vectorise
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        models = [m.to(memory_format=torch.channels_last) for m in models]
    if protocol.compile and not vectorise:
        for m in models:
            m.compile()
    if wrap is not None:
        models = [wrap(m) for m in models]
    stack = SeedStack(models, vectorise)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    # Normalise with the test-free statistics of the training images the student is given.
    data, labels = images.to(device).float().div(255), labels.to(device)
    mean, std = data.mean().item(), max(data.std().item(), 1e-3)
    epochs = protocol.epochs_for(ipc)
    batch_size = protocol.batch_size_for(ipc, num_classes, len(data))
    opt = protocol.optimizer(stack.param_groups, student, num_classes)
    sched = protocol.scheduler(opt, epochs)
    plateau = Plateau(opt, *rule) if rule is not None else None
    if protocol.needs_teacher:
        teacher = teacher.to(device).eval()
        if channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
    device_type = torch.device(device).type

    t0 = time.perf_counter()
    stack.train()
    for epoch in range(epochs):
        perms = [torch.randperm(len(data), generator=g) for g in gens]
        for i in range(0, len(data), batch_size):
            idxs = [perm[i : i + batch_size].to(device) for perm in perms]
            if len(idxs[0]) < world:
                continue  # a last batch too small to give every worker an image
            xs, targets = zip(*(protocol.batch(data[idx], labels[idx], g, num_classes) for idx, g in zip(idxs, gens)))
            x = torch.stack(xs)[:, rank::world]
            with torch.autocast(device_type, dtype=autocast or torch.float32, enabled=autocast is not None):
                if protocol.needs_teacher:  # the teacher relabels in the student's precision
                    with torch.no_grad():
                        target = teacher(x.flatten(0, 1).contiguous(memory_format=memory_format))
                    target = target.float().view(len(seeds), x.shape[1], -1)
                else:
                    target = torch.stack(targets)[:, rank::world]
                inputs = (x - mean) / std
                if channels_last:
                    inputs = torch.stack([xi.contiguous(memory_format=torch.channels_last) for xi in inputs])
                logits = stack(inputs).float()  # the loss in fp32
            loss = sum(protocol.loss(logits[k], target[k]) for k in range(len(seeds)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if progress is not None:
            progress(epoch + 1, epochs)
        if report is not None and ((epoch + 1) % report_every == 0 or epoch + 1 == epochs):
            model = stack.unstacked()[0]
            report(
                epoch + 1,
                test_accuracy(
                    model,
                    test_images.to(device),
                    test_labels.to(device),
                    mean,
                    std,
                    view=protocol.test_view,
                    autocast=autocast,
                ),
            )
            stack.train()
        if plateau is None:
            sched.step()
            continue
        model = stack.models[0]
        if plateau.ended(
            test_accuracy(
                model,
                validation[0].to(device),
                validation[1].to(device),
                mean,
                std,
                view=protocol.test_view,
                autocast=autocast,
            ),
            model,
        ):
            break
        stack.train()
    epochs_run = epoch + 1 if epochs else 0
    if plateau is not None:
        stack.models[0].load_state_dict(plateau.best_state)
    train_seconds = time.perf_counter() - t0
    results = []
    for model in stack.unstacked():
        t1 = time.perf_counter()
        acc = test_accuracy(
            model, test_images.to(device), test_labels.to(device), mean, std, view=protocol.test_view, autocast=autocast
        )
        results.append(
            {
                "accuracy": acc,
                "train_seconds": train_seconds / len(seeds),
                "epochs": epochs_run,
                "test_seconds": time.perf_counter() - t1,
                # Building the students, moving the data to the device, normalising it: what precedes training.
                "setup_seconds": (t0 - started) / len(seeds),
                "seeds_together": len(seeds),
                "vectorised": vectorise,
                "precision": protocol.precision or "fp32",
                "channels_last": channels_last,
                "compiled": bool(protocol.compile and not vectorise),
                **({"best_epoch": plateau.best_epoch, "val_accuracy": plateau.best} if plateau else {}),
            }
        )
    return results[0] if isinstance(seed, int) else results
