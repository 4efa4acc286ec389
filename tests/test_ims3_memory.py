"""IMS3's inversion matching at DiT-XL/2 size: each model call of the differentiated DDIM inversion is
checkpointed, so an IM step's memory does not grow with the inversion's length, and its loss and gradients are
those of the plain graph, bit for bit on CPU (so the fine-tuned weights, and the sets sampled from them, are the
ones made before checkpointing)."""

import pytest
import torch

import methods.fine_tuning
from harness.models.generators.difffit import GAMMA, add_difffit
from methods.fine_tuning import ddim_inversion
from methods.ims3 import IMS3Config, InversionMatching, cosine_loss
from tests.factories import tiny_latent_dit


def _wide_dit():
    """The tiny latent DiT, wider and two blocks deep, so that one model call's activations outweigh a latent
    by two orders of magnitude, as DiT-XL/2's do by four; DiffFit's trainable set added."""
    bb = tiny_latent_dit()
    torch.manual_seed(1)
    wider = type(bb.transformer)(
        **{**bb.transformer.config, "num_layers": 2, "num_attention_heads": 4, "attention_head_dim": 16}
    )
    wide = type(bb)(wider, bb.scheduler, bb.vae)
    add_difffit(wide)
    return wide


def _without_checkpointing(monkeypatch):
    """Every model call of the inversion kept in the graph, as before checkpointing."""
    monkeypatch.setattr(methods.fine_tuning, "checkpoint", lambda fn, *args, use_reentrant: fn(*args))


def _saved_bytes_of_an_im_step(bb, inversion_steps: int) -> int:
    """What an IM step's graph holds for backward: the bytes of every distinct storage autograd saves, seen
    through `saved_tensors_hooks`, less the model's parameters, which are held anyway (a checkpointed call's
    input latent is counted, its activations are not: they are recomputed). Deterministic and independent of
    thread count, unlike a process's resident memory."""
    held_anyway = {p.untyped_storage().data_ptr() for p in bb.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in held_anyway:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    x0 = torch.randn(8, *bb.latent_shape, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8)
    objective = InversionMatching(IMS3Config(inversion_steps=inversion_steps))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = objective.loss(bb, x0, labels, labels, torch.Generator().manual_seed(0))
    assert loss.requires_grad
    return sum(storages.values())


def test_im_step_memory_is_flat_in_the_number_of_inversion_steps(monkeypatch):
    bb = _wide_dit()
    short, long = _saved_bytes_of_an_im_step(bb, 4), _saved_bytes_of_an_im_step(bb, 16)
    assert long <= 1.2 * short, (short, long)
    # The measure tells: with every call's activations kept, 12 more calls grow the graph several times over.
    _without_checkpointing(monkeypatch)
    plain_short, plain_long = _saved_bytes_of_an_im_step(bb, 4), _saved_bytes_of_an_im_step(bb, 16)
    assert plain_long > 2 * plain_short and plain_short > short, (plain_short, plain_long)


def _im_gradients(bb, x0, labels, t, noise):
    bb.zero_grad(set_to_none=True)
    ac = bb.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
    im = cosine_loss(x_t, ddim_inversion(bb, x0, labels, t, grid_steps=10)).mean()
    im.backward()
    return im.detach(), {n: p.grad.clone() for n, p in bb.transformer.named_parameters() if p.grad is not None}


def _step_gradients(bb, x0, labels):
    bb.zero_grad(set_to_none=True)
    loss, _ = InversionMatching(IMS3Config(inversion_steps=10)).loss(
        bb, x0, labels, labels, torch.Generator().manual_seed(3)
    )
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in bb.transformer.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("measure", [_im_gradients, _step_gradients], ids=["im-term", "whole-step"])
def test_checkpointing_leaves_the_loss_and_its_gradients_bitwise_equal(monkeypatch, measure):
    bb = _wide_dit()
    g = torch.Generator().manual_seed(2)
    x0, labels = torch.randn(4, *bb.latent_shape, generator=g), torch.tensor([1, 3, 5, 7])
    # Paths of different lengths in one batch, one of them a single step (t below the grid's first timestep).
    t, noise = torch.tensor([15, 130, 610, 999]), torch.randn(x0.shape, generator=g)
    args = (x0, labels, t, noise) if measure is _im_gradients else (x0, labels)
    loss, grads = measure(bb, *args)
    _without_checkpointing(monkeypatch)
    plain_loss, plain_grads = measure(bb, *args)
    assert torch.equal(loss, plain_loss)
    assert grads.keys() == plain_grads.keys() and len(grads) > 0
    assert all(torch.equal(grads[n], plain_grads[n]) for n in grads)
    assert any(float(grads[n].abs().sum()) > 0 for n in grads if n.endswith(GAMMA))
