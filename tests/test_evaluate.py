"""The hard-label loop's pieces, and a real (tiny) training run on real data."""
import torch

from harness.evaluate import HardLabelConfig, augment, cutmix, train_student


def test_reference_recipe_defaults():
    cfg = HardLabelConfig()
    # Minimax argument.py ipc_epoch, which CaO2 and IMS3 evaluate with.
    assert [cfg.epochs_for(i) for i in (1, 2, 10, 20, 50, 100, 200, 500, 1000)] == \
        [3000, 2000, 2000, 1500, 1500, 1000, 1000, 500, 300]
    assert cfg.cutmix_prob == 1.0
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (0.01, 0.9, 5e-4, 64)
    assert cfg.milestones == [2 / 3, 5 / 6] and cfg.gamma == 0.2 and cfg.cutmix_beta == 1.0
    assert cfg.rrc_scale == [0.5, 1.0]


def test_augment_and_cutmix_shapes_and_targets():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16)
    out = augment(x, g, HardLabelConfig())
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    mixed, target = cutmix(x, torch.tensor([0, 1, 2, 0, 1, 2]), 3, g, 1.0)
    assert mixed.shape == x.shape
    torch.testing.assert_close(target.sum(1), torch.ones(6))


def test_student_learns_from_real_images(tiny_real):
    train, test = tiny_real.train, tiny_real.test
    cfg = HardLabelConfig(epochs={100: 15}, student_kwargs={"convnet3": {"width": 16}})
    idx = torch.cat([train.indices_of(c)[:20] for c in range(10)])
    result = train_student("convnet3", train.load(idx), train.labels[idx], test.load(torch.arange(2000)),
                           test.labels[:2000], 10, 20, cfg, seed=0)
    assert result["epochs"] == 15
    assert result["accuracy"] > 0.5  # chance is 0.1
    again = train_student("convnet3", train.load(idx), train.labels[idx], test.load(torch.arange(2000)),
                          test.labels[:2000], 10, 20, cfg, seed=0)
    assert again["accuracy"] == result["accuracy"]
