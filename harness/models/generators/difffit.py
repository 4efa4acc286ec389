"""DiffFit parameter-efficient fine-tuning on the Backbone protocol (Xie et al. 2023), as MinimaxDiffusion and
IMS3 fine-tune DiT-XL/2.

What trains is the reference's selection (MinimaxDiffusion train_dit.py l.116-127 `mark_difffit_trainable`:
names containing "bias", "norm", "gamma" or "y_embed"), read on diffusers' module layout rather than by name:

- every bias;
- the affine parameters of normalisation layers (DiT's LayerNorms have none, so this selects nothing there,
  as "norm" selects nothing in the reference's DiT; diffusers' `norm1` is AdaLayerNormZero, whose linear
  and timestep MLP are not norms, so a name match would wrongly train them);
- DiffFit's learned scale factors γ, added here (the reference's models.py l.53-58, l.178-183, l.243): in
  the first half of the blocks (`use_gamma = [True] * 14 + [False] * 14` for DiT-XL/2's 28), one γ on each
  of the attention's q, k, v outputs (the reference's `gamma1` on qkv), one on its projection (`gamma2`),
  and one on each residual branch (the block's `gamma1`, `gamma2`), all starting at 1 so that the wrapped
  model is the base model until it trains;
- the class embedding (`y_embedder`) and the timestep MLP's two biases (`t_embedder.mlp.0/2.bias`), ONE of
  each as in the reference, whose single conditioning vector feeds every block. diffusers instead keeps a copy of
  the label table and the timestep MLP in every block's AdaLayerNormZero (DiT-XL/2's converted weights repeat the
  same values 28 times). Training the copies independently would train 28 tables (~32 M parameters against the
  reference's 1.15 M) and let them drift apart, so each of the three is trained as one shared offset, zero at the
  start, added to every copy: where the copies are equal (a converted DiT) this is the reference's shared table
  exactly (Adam's update of the offset is the table's, the gradient the sum over the blocks that read it); where
  a backbone trained its copies apart (a pixel DiT trained here) it keeps them, and the wrapped model starts as
  the base model.

Every other parameter is frozen and stays bit-identical, the per-block copies included. The γ and the shared
offsets act through forward hooks on the diffusers modules, so the backbone keeps its own forward and the Backbone
protocol is unchanged. For DiT-XL/2 the trainable set counts the reference's 1,739,552 parameters
(tests/test_fine_tune.py counts both).
"""

from __future__ import annotations

import torch
from torch import nn

GAMMA = "difffit_gamma"
# The shared offsets, registered on the transformer itself: `named_parameters` then lists each once.
SHARED_OFFSETS = {
    "difffit_class_embedding": "class_embedder.embedding_table",
    "difffit_timestep_bias_1": "timestep_embedder.linear_1",
    "difffit_timestep_bias_2": "timestep_embedder.linear_2",
}
# What a fine-tuned model's state means: raised when the trainable set changes, so that a fine-tune cached under
# an older set is neither loaded nor reused (harness/stages/fine_tune.py puts it in the fine-tune's identity).
DIFFFIT_VERSION = 2
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def _scale_output(module: nn.Module, inputs, output):
    return output * getattr(module, GAMMA)


def _add_gamma(module: nn.Module, width: int) -> None:
    module.register_parameter(GAMMA, nn.Parameter(torch.ones(width, device=next(module.parameters()).device)))
    module.register_forward_hook(_scale_output)


def _add_offset(module: nn.Module, offset: nn.Parameter) -> None:
    if isinstance(module, nn.Embedding):
        module.register_forward_hook(lambda m, inputs, output: output + nn.functional.embedding(inputs[0], offset))
    else:
        module.register_forward_hook(lambda m, inputs, output: output + offset)


def _shared_copies(transformer, suffix: str) -> list[nn.Module]:
    return [m for name, m in transformer.named_modules() if name.endswith(f"norm1.emb.{suffix}")]


def add_difffit(backbone) -> list[str]:
    """Add DiffFit's γ to `backbone.transformer` (once) and make exactly DiffFit's parameters trainable;
    returns their names. The rest of the backbone is frozen."""
    transformer = backbone.transformer
    blocks = transformer.transformer_blocks
    if not any(name.endswith(GAMMA) for name, _ in transformer.named_parameters()):
        for block in list(blocks)[: len(blocks) // 2]:
            attn, width = block.attn1, block.attn1.to_q.out_features
            for linear in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
                _add_gamma(linear, linear.out_features)
            _add_gamma(attn, width)  # the attention branch, before its gate
            _add_gamma(block.ff, width)  # the MLP branch, before its gate
        for offset_name, suffix in SHARED_OFFSETS.items():
            copies = _shared_copies(transformer, suffix)
            reference = copies[0].weight if suffix.endswith("table") else copies[0].bias
            offset = nn.Parameter(torch.zeros_like(reference))
            transformer.register_parameter(offset_name, offset)
            for module in copies:
                _add_offset(module, offset)
    backbone.requires_grad_(False)
    chosen = set()
    for module_name, module in transformer.named_modules():
        for name, p in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            per_block_copy = ".emb." in f".{module_name}."  # trained through the shared offsets instead
            if (
                (name == "bias" and not per_block_copy)
                or name in (GAMMA, *SHARED_OFFSETS)
                or isinstance(module, _NORMS)
            ):
                p.requires_grad_(True)
                chosen.add(full)
    return sorted(chosen)


def difffit_state(backbone) -> dict[str, torch.Tensor]:
    """The trainable parameters of a DiffFit backbone: all that a fine-tuned model adds to its base."""
    return {n: p.detach().clone() for n, p in backbone.transformer.named_parameters() if p.requires_grad}


def load_difffit_state(backbone, state: dict[str, torch.Tensor]) -> None:
    """Make `backbone` (a base backbone) the fine-tuned one: add DiffFit and load its trained parameters."""
    names = set(add_difffit(backbone))
    if set(state) != names:
        raise ValueError(
            f"fine-tuned state does not match DiffFit's parameters of this backbone "
            f"({len(set(state) ^ names)} names differ)"
        )
    params = dict(backbone.transformer.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    backbone.requires_grad_(False)
