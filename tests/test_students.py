"""Students: every architecture a user would name is built through timm at each suite's input size."""
import pytest
import torch
from torch import nn

from harness.students import create_student, is_student

STUDENTS = ["convnet3", "convnet4", "convnet6", "resnetap10", "resnet18", "resnet50", "resnet101",
            "efficientnet_b0", "mobilenetv2_100", "vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"]


@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("chans,size", [(1, 28), (3, 256)], ids=["fashion-mnist", "imagenet-family"])
def test_student_builds_and_runs_at_suite_size(name, chans, size):
    assert is_student(name)
    model = create_student(name, 10, chans, size)
    with torch.no_grad():
        x = torch.rand(2, chans, size, size)
        assert model(x).shape == (2, 10)
        assert model.forward_head(model.forward_features(x), pre_logits=True).ndim == 2


def test_small_inputs_get_the_small_resnet_stem():
    small, large = create_student("resnet18", 10, 1, 28), create_student("resnet18", 10, 3, 224)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and isinstance(small.maxpool, nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)


def test_resnetap_downsamples_by_average_pooling():
    model = create_student("resnetap10", 10, 3, 224)
    strided = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    assert not strided  # the "AP" of ResNetAP: every stride is an average pool
    assert model.stem[0].kernel_size == (7, 7) and model.stem[3].kernel_size == 4  # the reference's large stem
    assert isinstance(create_student("resnetap10", 10, 1, 28).stem[3], nn.Identity)  # ≤ 64 px: no stem pooling
    assert all(isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels
               for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)))  # instance norm


def test_convnet_options():
    m = create_student("convnet3", 10, 1, 28, width=32, norm="batchnorm")
    assert m.classifier.in_features == 32 * 3 * 3
    assert any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
