"""The hard-label loop's pieces, and a real (tiny) training run on real data."""

import torch

from harness.models.augment import augment, cutmix
from harness.models.protocols import HardLabel
from harness.models.training import train_student


def test_reference_recipe_defaults():
    cfg = HardLabel()
    # Minimax argument.py ipc_epoch, which CaO2 and IMS3 evaluate with.
    assert [cfg.epochs_for(i) for i in (1, 2, 10, 20, 50, 100, 200, 500, 1000)] == [
        3000,
        2000,
        2000,
        1500,
        1500,
        1000,
        1000,
        500,
        300,
    ]
    assert cfg.cutmix_prob == 1.0
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (0.01, 0.9, 5e-4, 64)
    assert cfg.milestones == [2 / 3, 5 / 6] and cfg.gamma == 0.2 and cfg.cutmix_beta == 1.0
    assert cfg.rrc_scale == [0.5, 1.0]


def test_augment_and_cutmix_shapes_and_targets():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    cfg = HardLabel()
    out = augment(x, g, cfg.rrc_scale, cfg.flip, cfg.color_jitter)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    mixed, target = cutmix(x, torch.tensor([0, 1, 2, 0, 1, 2]), 3, g, 1.0)
    assert mixed.shape == x.shape
    torch.testing.assert_close(target.sum(1), torch.ones(6))


def test_student_learns_from_real_images(tiny_real):
    train, test = tiny_real.train, tiny_real.test
    cfg = HardLabel(epochs={100: 15}, student_kwargs={"convnet3": {"width": 16}})
    idx = torch.cat([train.indices_of(c)[:20] for c in range(10)])
    result = train_student(
        "convnet3",
        train.load(idx),
        train.labels[idx],
        test.load(torch.arange(2000)),
        test.labels[:2000],
        10,
        20,
        cfg,
        seed=0,
    )
    assert result["epochs"] == 15
    assert result["accuracy"] > 0.5  # chance is 0.1
    again = train_student(
        "convnet3",
        train.load(idx),
        train.labels[idx],
        test.load(torch.arange(2000)),
        test.labels[:2000],
        10,
        20,
        cfg,
        seed=0,
    )
    assert again["accuracy"] == result["accuracy"]


def test_rded_soft_label_defaults():
    from harness.models.protocols import SoftLabel, rded_cosine

    cfg = SoftLabel()
    assert cfg.epochs_for(10) == 300 and cfg.epochs_for(50) == 300
    assert (cfg.lr, cfg.weight_decay, cfg.mix, cfg.cutmix_beta, cfg.patch_factor) == (1e-3, 0.01, "cutmix", 1.0, 2)
    assert cfg.tau() == 20 and SoftLabel(mix="mixup").tau() == 4 and SoftLabel(mix="mixup").mixup_alpha == 0.8
    assert [cfg.batch_size_for(i, 10, 10_000) for i in (1, 10, 50)] == [10, 50, 100]
    # ×2 for 100 classes; capped at the number of images
    assert cfg.batch_size_for(10, 100, 10_000) == 100 and cfg.batch_size_for(50, 10, 30) == 30
    assert cfg.lr_for("resnet18") == 1e-3 and cfg.lr_for("mobilenetv2_100") == 2.5e-3
    assert cfg.lr_for("efficientnet_b0") == 2e-3 and cfg.lr_for("vit_tiny_patch16_224") == 1e-4
    f = rded_cosine(300)
    assert f(0) == 1.0 and abs(f(300) - 0.5) < 1e-12  # RDED's quarter cosine ends at half the lr


def test_shuffle_patches_permutes_strips():
    from harness.models.augment import shuffle_patches

    x = torch.arange(2 * 16, dtype=torch.float).view(2, 1, 4, 4)
    out = shuffle_patches(x, 2, torch.Generator().manual_seed(3))
    for a, b in zip(x, out):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)
        # 2×2 blocks of 2×2 pixels move whole: each output block is some input block.
        blocks = {a[:, r : r + 2, c : c + 2].flatten().tolist().__str__() for r in (0, 2) for c in (0, 2)}
        assert all(b[:, r : r + 2, c : c + 2].flatten().tolist().__str__() in blocks for r in (0, 2) for c in (0, 2))


def test_soft_label_loss_is_kl_of_softened_outputs():
    from harness.models.protocols import soft_label_loss

    s, t = torch.randn(4, 5), torch.randn(4, 5)
    p, q = torch.softmax(t / 3, 1), torch.log_softmax(s / 3, 1)
    expected = (p * (p.log() - q)).sum(1).mean()
    torch.testing.assert_close(soft_label_loss(s, t, 3.0), expected)
    assert soft_label_loss(t, t, 3.0).abs() < 1e-6


def test_soft_label_student_learns_from_a_teacher(tiny_real):
    from harness.models.protocols import SoftLabel
    from harness.models.students import create_student
    from harness.models.teachers import Teacher

    train, test = tiny_real.train, tiny_real.test
    idx = torch.cat([train.indices_of(c)[:20] for c in range(10)])
    # A teacher that knows the answer: trained briefly with the hard-label loop on the same images.
    teacher_net = create_student("convnet3", 10, 1, 28, width=16)
    torch.manual_seed(0)
    opt = torch.optim.Adam(teacher_net.parameters(), 3e-3)
    data = train.load(torch.arange(len(train))).float().div(255)
    for _ in range(150):
        b = torch.randint(0, len(data), (128,))
        loss = torch.nn.functional.cross_entropy(teacher_net((data[b] - 0.3) / 0.35), train.labels[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher = Teacher(teacher_net, 28, 1, [0.3], [0.35])
    cfg = SoftLabel(epochs={100: 15}, student_kwargs={"convnet3": {"width": 16}})
    # Passed as IPC 1 so that RDED's batch size for it (10) gives enough steps in 15 epochs.
    result = train_student(
        "convnet3",
        train.load(idx),
        train.labels[idx],
        test.load(torch.arange(2000)),
        test.labels[:2000],
        10,
        1,
        cfg,
        seed=0,
        teacher=teacher,
    )
    assert result["epochs"] == 15 and result["accuracy"] > 0.5


def _small_set(tiny_real, per_class=5):
    train, test = tiny_real.train, tiny_real.test
    idx = torch.cat([train.indices_of(c)[:per_class] for c in range(10)])
    return train.load(idx), train.labels[idx], test.load(torch.arange(1000)), test.labels[:1000]


def _trained_weights(monkeypatch, vectorise, seeds, cfg, data, teacher=None):
    """Run train_student and capture the trained models' weights (through SeedStack.unstacked)."""
    from harness.models import training

    captured = []
    original = training.SeedStack.unstacked

    def capture(self):
        models = original(self)
        captured.extend({k: v.detach().clone() for k, v in m.state_dict().items()} for m in models)
        return models

    monkeypatch.setattr(training.SeedStack, "unstacked", capture)
    results = train_student("resnet18", *data, 10, 5, cfg, seeds, teacher=teacher, vectorise=vectorise)
    return results, captured


def test_seeds_trained_together_are_the_seeds_trained_alone(tiny_real, monkeypatch):
    from harness.models.protocols import SoftLabel
    from harness.models.students import create_student

    data = _small_set(tiny_real)
    kwargs = {"resnet18": {"channels": [4, 4, 8, 8]}}  # batch norm: running stats must follow each seed
    teacher = create_student("convnet3", 10, 1, 28, width=4).eval()
    for cfg in (
        HardLabel(epochs={5: 2}, batch_size=16, student_kwargs=kwargs),
        SoftLabel(epochs={5: 2}, student_kwargs=kwargs),
    ):
        alone, (w_alone,) = _trained_weights(monkeypatch, False, [1], cfg, data, teacher)
        loop, w_loop = _trained_weights(monkeypatch, False, [0, 1], cfg, data, teacher)
        vec, w_vec = _trained_weights(monkeypatch, True, [0, 1], cfg, data, teacher)
        assert loop[1]["accuracy"] == alone[0]["accuracy"] and loop[1]["seeds_together"] == 2
        for name, value in w_alone.items():
            assert torch.equal(w_loop[1][name], value), name  # one after another: exactly seed 1 alone
            torch.testing.assert_close(w_vec[1][name].float(), value.float(), rtol=1e-3, atol=1e-4)
        assert not torch.equal(w_loop[0]["fc.weight"], w_loop[1]["fc.weight"])  # the seeds differ


def test_data_parallel_through_ray_train_matches_one_process(tiny_real, ray_cluster, tmp_path):
    """Two DDP workers on CPU (gloo) through TorchTrainer: the same batches as one process, so ConvNet-3
    (instance norm: nothing per-worker) learns the same weights up to float reduction order."""
    from harness.stages.evaluate import EvalTrial, run_group_distributed

    images, labels, test_images, test_labels = _small_set(tiny_real)
    cfg = HardLabel(epochs={5: 3}, batch_size=16, student_kwargs={"convnet3": {"width": 8}})
    one = train_student("convnet3", images, labels, test_images, test_labels, 10, 5, cfg, [0])
    set_dir = tmp_path / "set"
    for c, key in enumerate(tiny_real.classes):
        (set_dir / key).mkdir(parents=True)
        from PIL import Image

        for i, img in enumerate(images[labels == c]):
            Image.fromarray(img[0].numpy()).save(set_dir / key / f"{i}.png")
    trial = EvalTrial("tiny", "random-real", "h", 5, str(set_dir), "convnet3", "hard-label", "p", 0, 0.0, 0)
    (row,) = run_group_distributed(
        [trial],
        cfg,
        tiny_real.classes,
        1,
        (test_images, test_labels),
        2,
        False,
        storage_path=str(tmp_path / "ray_train"),
    )
    assert row["seed"] == 0 and row["kind"] == "measured"
    assert abs(row["accuracy"] - one[0]["accuracy"]) <= 0.02
