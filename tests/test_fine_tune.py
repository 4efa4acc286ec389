"""The fine-tuning family: DiffFit's trainable set, Minimax's memory bank and criteria, IMS3's inversion matching
(its gradient goes through the inversion) and S3's greedy choice, the pinned defaults, the suites, and the
fine-tuned backbone as a prepared artefact (Ray Train, killed and resumed, cached) end to end on the tiny suite."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import DiTTransformer2DModel

from harness.config.loader import load_suite
from harness.core.identity import identity_fields
from harness.core.sets import load_set
from harness.models.generators.difffit import GAMMA, SHARED_OFFSETS, add_difffit, difffit_state, load_difffit_state
from harness.models.generators.pretrained_dit import KNOWN_DITS
from harness.stages.distill import distill, plan
from harness.stages.fine_tune import fine_tune_backbones, fine_tune_schedule, train_fine_tune
from harness.stages.prepare import prepare
from methods import get_method
from methods.fine_tuning import ddim_inversion, diffusion_loss
from methods.ims3 import IMS3Config, brute_force_subgroups, cosine_loss, greedy_subgroups
from methods.minimax import MemoryBank, MinimaxConfig, MinimaxObjective, cosine_matrix
from tests.factories import tiny_latent_dit, tiny_teacher
from tests.fine_tune_kill import family_suite

ROOT = Path(__file__).resolve().parent.parent


def _two_block_dit():
    """The tiny latent DiT with two blocks, so that DiffFit's γ (first half of the blocks) has a block to go in."""
    bb = tiny_latent_dit()
    torch.manual_seed(1)
    deeper = type(bb.transformer)(**{**bb.transformer.config, "num_layers": 2})
    return type(bb)(deeper, bb.scheduler, bb.vae)


def test_difffit_trains_only_biases_norms_gammas_and_one_shared_class_embedding():
    bb = _two_block_dit()
    before = {n: p.detach().clone() for n, p in bb.transformer.named_parameters()}
    x, t, y = torch.randn(3, 4, 4, 4), torch.tensor([5, 400, 900]), torch.tensor([1, 2, 10])
    with torch.no_grad():
        base = bb.output(x, t, y)
    names = add_difffit(bb)
    with torch.no_grad():  # every γ starts at 1: the wrapped model is the base model until it trains
        assert torch.equal(bb.output(x, t, y), base)
    gammas = [n for n in names if n.endswith(GAMMA)]
    assert len(gammas) == 6 and all(n.startswith("transformer_blocks.0.") for n in gammas)
    # The per-block copies of the label table and timestep MLP stay frozen: one shared offset of each trains.
    expected = {n for n in before if n.endswith(".bias") and ".emb." not in n} | set(gammas) | set(SHARED_OFFSETS)
    assert set(names) == expected
    assert not any("norm1.linear.weight" in n or "timestep_embedder.linear_1.weight" in n for n in names)
    opt = torch.optim.AdamW([p for p in bb.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        opt.zero_grad()
        loss, _, _ = diffusion_loss(bb, x, y, t, torch.randn(x.shape, generator=torch.Generator().manual_seed(step)))
        loss.mean().backward()
        assert {n for n, p in bb.transformer.named_parameters() if p.grad is not None} <= set(names)
        opt.step()
    after = dict(bb.transformer.named_parameters())
    for n, p in before.items():
        assert torch.equal(after[n], p) == (n not in names), n  # the rest bit-identical, DiffFit's all moved
    assert all(p.grad is None for p in bb.vae.parameters())
    tables = [m.weight for n, m in bb.transformer.named_modules() if n.endswith("class_embedder.embedding_table")]
    assert len(tables) == 2 and all(t.grad is None for t in tables)
    # The fine-tuned model is its base plus the trained DiffFit parameters.
    fresh = _two_block_dit()
    load_difffit_state(fresh, difffit_state(bb))
    with torch.no_grad():
        assert torch.equal(fresh.output(x, t, y), bb.output(x, t, y))


def test_difffit_on_equal_copies_is_the_references_one_shared_table():
    """Where the blocks' label tables and timestep MLPs are copies (a converted DiT-XL/2), DiffFit's offsets train
    them as the reference trains its one `y_embedder` and `t_embedder`: every block reads the same trained table."""
    bb = _two_block_dit()
    blocks = bb.transformer.transformer_blocks
    with torch.no_grad():
        blocks[1].norm1.emb.load_state_dict(blocks[0].norm1.emb.state_dict())
    add_difffit(bb)
    opt = torch.optim.AdamW([p for p in bb.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    x, t, y = torch.randn(3, 4, 4, 4), torch.tensor([5, 400, 900]), torch.tensor([1, 2, 10])
    for step in range(3):
        opt.zero_grad()
        loss, _, _ = diffusion_loss(bb, x, y, t, torch.randn(x.shape, generator=torch.Generator().manual_seed(step)))
        loss.mean().backward()
        opt.step()
    labels, steps = torch.arange(11), torch.tensor([3.0, 700.0])
    with torch.no_grad():
        a, b = (block.norm1.emb for block in blocks)
        assert torch.equal(a.class_embedder(labels, None), b.class_embedder(labels, None))
        assert torch.equal(a.timestep_embedder(a.time_proj(steps)), b.timestep_embedder(b.time_proj(steps)))
        assert bb.transformer.difffit_class_embedding.abs().sum() > 0


def test_difffit_trains_the_references_parameter_count_on_dit_xl_2():
    """The reference's DiffFit set on DiT-XL/2 (MinimaxDiffusion train_dit.py l.116-127: names with "bias", "norm",
    "gamma", "y_embed"; models.py), hidden H = 1152, 28 blocks, patch 2, 8 output channels: x_embedder.proj.bias H;
    t_embedder.mlp.0/2.bias 2H; y_embedder.embedding_table 1001 × H; per block qkv 3H, proj H, fc1 4H, fc2 H and
    adaLN 6H biases (15H × 28; its LayerNorms have no affine parameters); γ in the first 14 blocks: attn.gamma1 3H,
    attn.gamma2 H, gamma1 H, gamma2 H (6H × 14, models.py l.53-58, l.178-183, l.243); final layer adaLN 2H and
    linear 2·2·8 = 32. Counted on diffusers' DiT-XL/2 layout (meta device: no weights)."""
    H = 1152
    reference = H + 2 * H + 1001 * H + 15 * H * 28 + 6 * H * 14 + 2 * H + 32
    assert reference == 1_739_552
    with torch.device("meta"):
        transformer = DiTTransformer2DModel(**KNOWN_DITS["facebook/DiT-XL-2-256"])
    bb = SimpleNamespace(transformer=transformer, requires_grad_=transformer.requires_grad_)
    names = set(add_difffit(bb))
    params = dict(transformer.named_parameters())
    assert sum(params[n].numel() for n in names) == reference
    assert sum(p.numel() for p in transformer.parameters() if p.requires_grad) == reference


def test_memory_bank_keeps_each_class_last_items_oldest_dropped_first():
    bank = MemoryBank(3)
    bank.add(0, torch.tensor([[1.0], [2.0]]))
    bank.add(1, torch.tensor([[9.0]]))
    bank.add(0, torch.tensor([[3.0], [4.0]]))
    assert bank.get(0).flatten().tolist() == [2.0, 3.0, 4.0] and bank.get(1).flatten().tolist() == [9.0]
    bank.add(0, torch.tensor([[5.0], [6.0], [7.0], [8.0]]))
    assert bank.get(0).flatten().tolist() == [6.0, 7.0, 8.0] and bank.get(2) is None
    restored = MemoryBank(3)
    restored.load_state_dict(bank.state_dict(), "cpu")
    assert torch.equal(restored.get(0), bank.get(0))


def test_minimax_criteria_use_the_memories_before_the_batch_joins_them():
    cfg = MinimaxConfig(memory_size=4)
    objective = MinimaxObjective(cfg)
    g = torch.Generator().manual_seed(0)
    x0, pred, classes = (
        torch.randn(4, 2, 3, 3, generator=g),
        torch.randn(4, 2, 3, 3, generator=g),
        torch.tensor([0, 0, 1, 1]),
    )
    pos, neg = objective.criteria(x0, pred, classes)  # no class has a memory yet: no criteria
    assert float(pos) == float(neg) == 0.0 and len(objective.real_memory) == 2
    x0b, predb = torch.randn(3, 2, 3, 3, generator=g), torch.randn(3, 2, 3, 3, generator=g)
    pos, neg = objective.criteria(x0b, predb, torch.tensor([1, 1, 0]))
    # Per class: 1 − the least cosine to the real memory, the greatest cosine to the generated memory, each
    # weighted and divided by the classes in the batch (train_dit.py l.255-268).
    want_pos = sum(
        (1 - cosine_matrix(predb[m], x0[k]).min()) * 0.002 / 2
        for m, k in ((torch.tensor([2]), [0, 1]), (torch.tensor([0, 1]), [2, 3]))
    )
    want_neg = sum(
        cosine_matrix(predb[m], pred[k]).max() * 0.008 / 2
        for m, k in ((torch.tensor([2]), [0, 1]), (torch.tensor([0, 1]), [2, 3]))
    )
    torch.testing.assert_close(pos, want_pos)
    torch.testing.assert_close(neg, want_neg)
    assert torch.equal(objective.real_memory.get(1), torch.cat([x0[2:], x0b[:2]]))  # then the batch joins
    assert torch.equal(objective.generated_memory.get(0), torch.cat([pred[:2], predb[2:]]))


def test_defaults_are_the_references():
    m = MinimaxConfig()
    assert (m.lambda_pos, m.lambda_neg, m.memory_size) == (0.002, 0.008, 64)
    assert (m.epochs, m.fine_tune_batch_size, m.lr, m.ema_decay, m.class_dropout) == (8, 8, 1e-3, 0.9999, 0.1)
    assert (m.cfg_scale, m.steps, m.sampler, m.checkpoint_every, m.max_steps) == (4.0, 50, "ddpm", 500, None)
    i = IMS3Config()
    assert (i.im_weight, i.groups, i.real_weight, i.separation_weight) == (0.002, 5, 0.4, 0.9)
    assert (i.epochs, i.fine_tune_batch_size, i.lr, i.cfg_scale, i.steps, i.inversion_steps) == (
        8,
        8,
        1e-3,
        4.0,
        50,
        50,
    )
    assert get_method("ims3-im-only").default_config().groups == 1
    assert not get_method("ims3-s3-only").default_config().fine_tune
    assert get_method("ims3-s3-only").fine_tuning(get_method("ims3-s3-only").default_config()) is None
    # IM-only and IMS3 ask for one fine-tune; S3-only and IMS3 draw the same noise.
    ims3, im_only = get_method("ims3"), get_method("ims3-im-only")
    assert ims3.fine_tuning(ims3.default_config()) == im_only.fine_tuning(im_only.default_config())
    with pytest.raises(ValueError, match="groups"):
        IMS3Config(groups=0)


def test_inversion_matching_gradient_flows_through_the_inversion():
    bb = _two_block_dit()
    names = add_difffit(bb)
    x0, y, t = torch.randn(2, 4, 4, 4), torch.tensor([3, 4]), torch.tensor([130, 610])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    ac = bb.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * noise  # no model in it: the IM term's gradient is the inversion's
    inverted = ddim_inversion(bb, x0, y, t, grid_steps=10)
    assert inverted.requires_grad and not x_t.requires_grad
    cosine_loss(x_t, inverted).mean().backward()
    params = dict(bb.transformer.named_parameters())
    assert sum(float(params[n].grad.abs().sum()) for n in names if params[n].grad is not None) > 0
    # The inversion is DDIM's run backwards: one step from the clean latent to t with the model's noise.
    with torch.no_grad():
        one = ddim_inversion(bb, x0, y, torch.tensor([15, 15]), grid_steps=10)  # below the grid's first step
        a = bb.alphas_cumprod[15]
        torch.testing.assert_close(one, a.sqrt() * x0 + (1 - a).sqrt() * bb.eps(x0, torch.tensor([0, 0]), y))


def test_s3_greedy_choice_equals_brute_force_on_tiny_cases():
    """Tiny cases shaped like S3's: each class's subgroup centroids near one class direction (they sample one
    class), the real centroid near it too. Eq. 11 is a quadratic assignment, so greedy search is exact only on
    cases like these, not in general (docs/decisions.md)."""
    a, b = 0.4, 0.9
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        direction = torch.nn.functional.normalize(torch.randn(3, 6, generator=g), dim=-1)
        centroids = torch.nn.functional.normalize(direction[:, None] + 0.1 * torch.randn(3, 3, 6, generator=g), dim=-1)
        real = torch.nn.functional.normalize(direction + 0.1 * torch.randn(3, 6, generator=g), dim=-1)
        assert greedy_subgroups(centroids, real, a, b) == brute_force_subgroups(centroids, real, a, b), seed
    # The choice is joint: two classes whose nearest-to-real subgroups coincide pick apart.
    centroids = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[1.0, 0.0], [0.0, 1.0]]])
    real = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert greedy_subgroups(centroids, real, a, b) == brute_force_subgroups(centroids, real, a, b) != [0, 0]


SETTINGS = {
    "minimax": {"lambda_pos": 0.002, "lambda_neg": 0.008, "memory_size": 64},
    "ims3": {"im_weight": 0.002, "groups": 5, "real_weight": 0.4, "separation_weight": 0.9},
}


@pytest.mark.parametrize("name", ["imagenet", "imagenette", "imagewoof", "imageidc", "imagenet-100"])
def test_imagenet_family_lists_the_family_with_the_papers_settings(name):
    suite = load_suite(name, check_files=False)
    for method in ("minimax", "ims3", "ims3-im-only", "ims3-s3-only"):
        cfg = suite.method_config(method)
        assert (cfg.epochs, cfg.fine_tune_batch_size, cfg.lr, cfg.cfg_scale, cfg.steps, cfg.sampler, cfg.max_steps) == (
            8,
            8,
            1e-3,
            4.0,
            50,
            "ddpm",
            None,
        )
        family = "minimax" if method == "minimax" else "ims3"
        assert {k: getattr(cfg, k) for k in SETTINGS[family]} == {
            **SETTINGS[family],
            **({"groups": 1} if method == "ims3-im-only" else {}),
        }


def test_fashion_mnist_lists_the_family_at_scaled_budgets():
    suite = load_suite("fashion-mnist", "leaderboard", check_files=False)
    diffusion = suite.method_config("diffusion")
    for method in ("minimax", "ims3", "ims3-im-only", "ims3-s3-only"):
        cfg = suite.method_config(method)
        assert (cfg.cfg_scale, cfg.steps, cfg.sampler) == (diffusion.cfg_scale, diffusion.steps, diffusion.sampler)
        assert cfg.max_steps is not None and cfg.lr == 1e-3 and cfg.fine_tune_batch_size == 8


def test_papers_settings_end_to_end_on_a_tiny_latent_dit(tiny_real, tmp_path):
    """ImageWoof's minimax and ims3 as listed, at a budget of a few steps and samples: the fine-tune with DiT-XL/2's
    learned-variance loss through the VAE, then sampling and S3's choice across classes."""
    suite = load_suite("imagewoof", check_files=False)
    for method in ("minimax", "ims3"):
        cls = get_method(method)
        cfg = dataclasses.replace(suite.method_config(method), max_steps=2, steps=2, checkpoint_every=1)
        bb = tiny_latent_dit()
        result = train_fine_tune(
            bb, tiny_real, list(range(10)), method, cfg, cls.fine_tuning(cfg), tmp_path / method, progress=False
        )
        trained, cost = result
        assert cost["steps"] == 2 and cost["seconds"] > 0 and cost["peak_memory_bytes"] > 0
        base = tiny_latent_dit()
        add_difffit(base)
        base = dict(base.transformer.named_parameters())
        assert trained.keys() == base.keys() - {n for n, p in base.items() if not p.requires_grad}
        assert any(not torch.equal(v, base[n]) for n, v in trained.items())
    from methods.base import ClassTask, MethodContext

    cfg = dataclasses.replace(suite.method_config("ims3"), steps=2, groups=3, centroid_real=4)
    method = get_method("ims3")(cfg, MethodContext(backbone=bb, teacher=tiny_teacher()))
    tasks = [
        ClassTask(c, f"c{c}", 2, 7 + c, torch.randint(0, 255, (6, 3, 8, 8), dtype=torch.uint8), 3, 8, 3)
        for c in range(3)
    ]
    candidates = [method.distill_class(t) for t in tasks]
    assert all(c.shape == (6, 3, 8, 8) for c in candidates)
    kept = method.select_across_classes(tasks, candidates)
    assert all(
        len(k) == 2 and int(k[0]) % 2 == 0 and torch.equal(k, torch.arange(int(k[0]), int(k[0]) + 2)) for k in kept
    )
    assert method.stage_seconds["s3"] > 0


def _straight(prepared, real, suite, tmp_path):
    """What the killing Minimax's fine-tune makes uninterrupted: Minimax's objective, its settings."""
    cfg = suite.method_config("test-killing-minimax")
    plain = MinimaxConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(MinimaxConfig)})
    trained, _ = train_fine_tune(
        prepared.load_backbone(),
        real,
        prepared.conditions,
        "minimax",
        plain,
        get_method("minimax").fine_tuning(plain),
        tmp_path / "straight",
        progress=False,
    )
    return trained


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tune_killed_resumes_from_its_checkpoint_is_cached_and_sampled(
    tiny_suite, tiny_real, tmp_path, ray_cluster, capsys
):
    out, marker = tmp_path / "out", tmp_path / "killed"
    suite = family_suite(tiny_suite, str(marker))
    # A process of its own prepares the suite and fine-tunes; the objective kills it at step 3, after the
    # checkpoint of step 2, as a preempted node or the OOM killer would.
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from tests.fine_tune_kill import fine_tune_until_killed; "
            "fine_tune_until_killed(sys.argv[1], sys.argv[2])",
            str(out),
            str(marker),
        ],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL and marker.exists(), killed.stderr[-2000:]
    work = next((out / "cache").glob("finetuned-*-work"))
    assert torch.load(work / "checkpoint.pt", weights_only=False)["step"] == 2
    assert not list((out / "cache").glob("finetuned-*/difffit.pt"))
    prepared = prepare(suite, tiny_real, out, check=False)  # the backbone and teacher the killed run made
    capsys.readouterr()
    tuned = fine_tune_backbones(suite, tiny_real, prepared, out, list(suite.methods))
    log = capsys.readouterr().out
    assert tuned.fine_tuned["test-killing-minimax"].cost["resumed_from"] == 2
    assert set(tuned.fine_tuned) == {"test-killing-minimax", "ims3", "ims3-im-only"}
    assert tuned.fine_tuned["ims3"].hash == tuned.fine_tuned["ims3-im-only"].hash  # one fine-tune, shared
    assert log.count("training the fine-tuned backbone") == 2  # Minimax's resumed, ims3's; im-only found it made
    # The resumed model is the one an uninterrupted run makes, bit for bit.
    resumed = torch.load(tuned.fine_tuned["test-killing-minimax"].source, weights_only=True)
    assert _same(resumed, _straight(prepared, tiny_real, suite, tmp_path))
    # A second run reuses every fine-tuned backbone; the check samples each like the base backbone's.
    again = fine_tune_backbones(suite, tiny_real, prepared, out, list(suite.methods), check=True)
    assert "training" not in capsys.readouterr().out
    unchecked = {k: dataclasses.replace(e, check=None) for k, e in again.fine_tuned.items()}
    assert unchecked == tuned.fine_tuned
    check = again.fine_tuned["ims3"].check
    assert check["samples"] == suite.backbone.check_per_class * len(tiny_real.classes) and 0 <= check["agreement"] <= 1
    tuned = again

    manifests = {
        m.method: m
        for m in distill(suite, tiny_real, tuned, plan(suite, tuned, out, list(suite.methods), [2]), lambda: None)
    }
    assert manifests["ims3"].fine_tune["hash"] == tuned.fine_tuned["ims3"].hash
    assert manifests["ims3"].fine_tune["check"] == check
    assert manifests["ims3-s3-only"].fine_tune is None and manifests["ims3"].fine_tune["seconds"] > 0
    classes = tiny_real.classes
    images = {k: load_set(m.path, classes, 1)[0] for k, m in manifests.items()}
    assert all(len(v) == 2 * len(classes) for v in images.values())
    # S3 keeps one of each class's candidate subgroups; IM-only is IMS3's first subgroup (shared draws).
    ims3 = manifests["ims3"]
    candidates = load_set(f"{ims3.path}-candidates", classes, 1)[0].view(len(classes), 4, 1, 28, 28)
    chosen = images["ims3"].view(len(classes), 2, 1, 28, 28)
    assert all(
        torch.equal(chosen[c], candidates[c, :2]) or torch.equal(chosen[c], candidates[c, 2:])
        for c in range(len(classes))
    )
    assert torch.equal(images["ims3-im-only"].view(len(classes), 2, 1, 28, 28), candidates[:, :2])
    shard = json.loads((Path(ims3.path) / classes[0] / "shard.json").read_text())
    assert shard["stage_seconds"]["s3"] > 0 and shard["candidates"] == 4 and shard["images"] == 2


@pytest.mark.slow  # two Ray Train runs, ~90 s on two busy cores (one TorchTrainer start costs 30–40 s)
def test_fine_tune_through_ray_train_resumes_after_its_worker_is_killed(tiny_suite, tiny_real, tmp_path, ray_cluster):
    out, marker = tmp_path / "out", tmp_path / "killed"
    suite = family_suite(tiny_suite, str(marker))
    prepared = prepare(suite, tiny_real, out, check=False)
    with pytest.raises(Exception):  # noqa: B017 (Ray Train's error type varies) Ray Train's worker killed itself at step 3, after its step-2 checkpoint
        fine_tune_backbones(suite, tiny_real, prepared, out, ["test-killing-minimax"], connect=lambda: None)
    assert marker.exists()
    tuned = fine_tune_backbones(suite, tiny_real, prepared, out, ["test-killing-minimax"], connect=lambda: None)
    entry = tuned.fine_tuned["test-killing-minimax"]
    assert entry.cost["resumed_from"] == 2 and entry.cost["workers"] == 1
    assert _same(torch.load(entry.source, weights_only=True), _straight(prepared, tiny_real, suite, tmp_path))


def test_the_checkpoint_interval_keys_neither_the_fine_tune_nor_the_sets():
    """How often a fine-tune saves changes nothing it makes (a resume is bit-identical from any step)."""
    base, often = MinimaxConfig(), MinimaxConfig(checkpoint_every=7)
    assert identity_fields(base) == identity_fields(often) and "checkpoint_every" not in identity_fields(base)
    assert identity_fields(base) != identity_fields(MinimaxConfig(lr=2e-3))
    with_interval = dataclasses.asdict(MinimaxConfig().fine_tuning({}))
    assert set(with_interval) - set(fine_tune_schedule(MinimaxConfig().fine_tuning({}))) == {"checkpoint_every"}
