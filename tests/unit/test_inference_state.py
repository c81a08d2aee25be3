"""Decoding leaves the model usable by gradient-based analyses.

TransformerLens builds its rotary sin/cos table for at most 2,048 positions and extends it,
stored on the attention module, the first time a longer context runs. A decode that builds
it under ``torch.inference_mode`` leaves inference tensors on the model, and the next
backward pass through rotary attention fails. The unit tests shrink the initial table (the
class constant TransformerLens reads at construction) so a short prompt takes the same
extension path as a 2,100-token one on the embedded model.
"""

from __future__ import annotations

import pytest
import torch
from transformer_lens.components.abstract_attention import AbstractAttention

from mechscope.probes.batched_greedy import greedy_rows
from tests.tiny import tiny_model


def _short_table_model(seed: int = 0):
    mp = pytest.MonkeyPatch()
    mp.setattr(AbstractAttention, "ROTARY_INITIAL_CACHE_SIZE", 8)
    try:
        return tiny_model(n_ctx=64, seed=seed, dtype=torch.float64)
    finally:
        mp.undo()


def _inference_tensors(model) -> list[str]:
    """Names of tensors kept on the model's modules that were made under inference mode."""
    out = [n for n, b in model.named_buffers() if b.is_inference()]
    for mname, mod in model.named_modules():
        for attr, val in vars(mod).items():
            if isinstance(val, torch.Tensor) and val.is_inference():
                out.append(f"{mname}.{attr}")
    return out


def _grads(model, tokens):
    model.zero_grad(set_to_none=True)
    logits = model(tokens)
    logits.log_softmax(-1)[0, -1, 3].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_decoding_past_the_rotary_table_leaves_no_inference_tensor():
    model = _short_table_model()
    assert model.blocks[0].attn.rotary_cos.shape[0] == 8
    greedy_rows(model, [list(range(1, 30))], 4)
    assert model.blocks[0].attn.rotary_cos.shape[0] >= 33  # the table was extended by the decode
    assert _inference_tensors(model) == []


def test_gradients_after_a_long_decode_equal_those_of_a_fresh_model():
    tokens = torch.tensor([[5, 9, 2, 7, 7, 1]])
    fresh = _grads(_short_table_model(seed=3), tokens)
    used = _short_table_model(seed=3)
    greedy_rows(used, [list(range(1, 40)), list(range(3, 20))], 5, top1=True)  # extends rotary
    after = _grads(used, tokens)
    assert fresh.keys() == after.keys() and len(fresh) > 0
    for name in fresh:  # float64: the same computation up to summation order
        torch.testing.assert_close(after[name], fresh[name], rtol=1e-10, atol=1e-12, msg=name)
