"""Students: every architecture a user would name is built through timm at each suite's input size."""

import copy

import pytest
import torch
from torch import nn

from harness.models.students import AvgPool2x2, create_student, is_student, with_torchs_pooling
from harness.models.training import SeedStack

STUDENTS = [
    "convnet3",
    "convnet4",
    "convnet6",
    "resnetap10",
    "resnet18",
    "resnet18_instancenorm",
    "resnet50",
    "resnet101",
    "efficientnet_b0",
    "mobilenetv2_100",
    "vit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
]


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
    assert all(
        isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels
        for m in model.modules()
        if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))
    )  # instance norm


def test_convnet_options():
    m = create_student("convnet3", 10, 1, 28, width=32, norm="batchnorm")
    assert m.classifier.in_features == 32 * 3 * 3
    assert any(isinstance(x, nn.BatchNorm2d) for x in m.modules())


# The hard-label recipe's ResNet-18 as Minimax's train_models/resnet.py builds it (CaO2's file is identical) for
# `-n resnet --depth 18 --norm_type instance` at 224 px: (in, out, kernel, stride) of every conv in module order.
def _reference_resnet18_convs(in_chans: int = 3) -> list[tuple[int, int, int, int]]:
    convs = [(in_chans, 64, 7, 2)]  # IntroBlock 'large', l.28 (size > 128, l.133-138)
    c_in = 64
    for stage, width in enumerate((64, 128, 256, 512)):  # l.179-182, layers[18] = [2, 2, 2, 2] (l.166)
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            convs += [(c_in, width, 3, stride), (width, width, 3, 1)]  # BasicBlock conv3x3, l.59-61
            if block == 0 and (stride != 1 or c_in != width):
                convs.append((c_in, width, 1, stride))  # projection shortcut, l.196-204
            c_in = width
    return convs


def test_resnet18_instancenorm_is_the_hard_label_recipes_resnet18():
    """Transcribed from vimar-gu/MinimaxDiffusion train_models/resnet.py (used by train.py:40-46 and CaO2's
    eval.py for `-n resnet --depth 18 --norm_type instance`, run.sh:35-36)."""
    torch.manual_seed(0)
    model = create_student("resnet18_instancenorm", 10, 3, 224)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    reference = _reference_resnet18_convs()
    assert [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]) for m in convs] == reference
    assert all(m.bias is None for m in convs)  # bias=False throughout
    assert model.conv1.padding == (3, 3)
    assert isinstance(model.maxpool, nn.MaxPool2d) and (
        model.maxpool.kernel_size,
        model.maxpool.stride,
        model.maxpool.padding,
    ) == (3, 2, 1)  # l.31
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d))]
    # 'instance' is nn.GroupNorm(C, C) (l.17): one norm after each conv, affine, starting at 1 and 0 (l.190-192).
    assert len(norms) == len(convs)
    assert all(isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels and m.affine for m in norms)
    assert all(bool((m.weight == 1).all()) and bool((m.bias == 0).all()) for m in norms)
    # He init of every conv by its fan-out (l.187-189).
    deep = model.layer4[1].conv2.weight
    assert abs(deep.std().item() / (2 / (9 * 512)) ** 0.5 - 1) < 0.02
    # Global average pool over the 7×7 map of a 224-px input (l.183, l.226), then one linear layer 512 → K (l.184).
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 512, 7, 7)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 512)
    assert (model.fc.in_features, model.fc.out_features) == (512, 10)
    expected = sum(i * o * k * k for i, o, k, _ in reference) + sum(2 * o for _, o, _, _ in reference) + 512 * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == expected
    # timm's batch-norm resnet18 is the soft-label recipe's (torchvision's) network: same shapes, other norms.
    assert not any(isinstance(m, nn.GroupNorm) for m in create_student("resnet18", 10, 3, 224).modules())


def test_resnet18_instancenorm_trains():
    torch.manual_seed(0)
    model = create_student("resnet18_instancenorm", 4, 3, 96)
    x, y = torch.rand(8, 3, 96, 96), torch.arange(8) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)  # the hard-label recipe's optimiser
    losses = []
    for _ in range(6):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "name,kwargs,chans,size",
    [
        ("convnet3", {"width": 16}, 1, 28),  # 28 → 14 → 7 → 3: an odd side drops its last row and column
        ("convnet3", {"width": 8}, 3, 32),
        ("resnetap10", {"width": 8}, 1, 28),
    ],
)
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_average_pooling_is_pytorchs_bit_for_bit(name, kwargs, chans, size, bf16):
    """AvgPool2x2 changes no number: outputs, gradients (input and weights) and the second derivative IGD's guidance
    takes are bitwise those of nn.AvgPool2d(2, 2), in fp32 and under bf16 autocast."""
    torch.manual_seed(0)
    ours = create_student(name, 10, chans, size, **kwargs)
    assert any(isinstance(m, AvgPool2x2) for m in ours.modules())
    theirs = with_torchs_pooling(copy.deepcopy(ours))
    assert ours.state_dict().keys() == theirs.state_dict().keys()  # committed weights load into either
    x = torch.randn(4, chans, size, size)
    results = []
    for model in (ours, theirs):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(xi).float()
        grads = torch.autograd.grad(out.logsumexp(1).sum(), [xi, *model.parameters()], create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in grads[1:]), [xi])[0]
        results.append([out, *grads, second])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_average_pooling_under_vmap_is_pytorchs():
    """Seeds trained as one stack (torch.func.vmap) pool bitwise as the same stack with PyTorch's pooling."""
    torch.manual_seed(0)
    models = [create_student("convnet3", 10, 1, 28, width=8) for _ in range(2)]
    x = torch.randn(2, 3, 1, 28, 28)
    theirs = [with_torchs_pooling(copy.deepcopy(m)) for m in models]
    stacks = [SeedStack(models, vectorise=True), SeedStack(theirs, vectorise=True)]
    outs = []
    for stack in stacks:
        out = stack(x)
        out.square().sum().backward()
        outs.append([out, *(stack.params[n].grad for n in sorted(stack.params))])
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_average_pooling_is_pytorchs_in_the_corners():
    """Forward-mode and batched derivatives (jacfwd, jacrev, the Hessian) are PyTorch's bit for bit; a window or
    gradient of −0 gives +0 as PyTorch's kernel does (its sums start at +0); channels-last input pools alike;
    inputs PyTorch's kernel refuses are refused by it (they go to it)."""
    pool, torchs = AvgPool2x2(), nn.AvgPool2d(2, 2)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    assert torch.equal(torch.func.jacfwd(pool)(x), torch.func.jacfwd(torchs)(x))
    assert torch.equal(torch.func.jacrev(pool)(x), torch.func.jacrev(torchs)(x))
    cubed = lambda module: lambda t: module(t).pow(3).sum()  # noqa: E731 — a non-linear loss: a real Hessian
    assert torch.equal(torch.func.hessian(cubed(pool))(x), torch.func.hessian(cubed(torchs))(x))
    zeros = (-torch.zeros(1, 1, 4, 4)).requires_grad_()
    out = pool(zeros)
    (grad,) = torch.autograd.grad(out, zeros, -torch.zeros_like(out))
    assert not torch.signbit(out).any() and not torch.signbit(grad).any()
    last = torch.randn(2, 3, 6, 7).contiguous(memory_format=torch.channels_last)
    assert torch.equal(pool(last), torchs(last))
    for refused in (torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.zeros(4, 4), torch.zeros(1, 1, 1, 1)):
        with pytest.raises((RuntimeError, NotImplementedError, IndexError)):
            torchs(refused)
        with pytest.raises((RuntimeError, NotImplementedError, IndexError)):
            pool(refused)
