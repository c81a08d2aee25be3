"""probes.capture: reducers see run_with_cache's numbers, ragged batches equal single runs,
early stop, input errors, progress."""

from __future__ import annotations

import pytest
import torch

from mechscope.probes import capture
from tests.tiny import tiny_model


@pytest.fixture(params=[None, 2], ids=["mha", "gqa"])
def model(request):
    # float64: batched, ragged and single runs must agree; in float32 they differ by BLAS rounding
    return tiny_model(n_layers=3, n_key_value_heads=request.param, dtype=torch.float64)


@pytest.mark.integration
def test_smollm2_ragged_padding(smollm2):
    model = smollm2.model
    texts = ["The capital of France is", "Hello", "def f(x):\n    return x * 2"]
    hooks = ["blocks.3.attn.hook_pattern", "blocks.5.hook_resid_post"]
    batched = capture.run(model, texts, capture=hooks, batch_size=3, return_logits=True)
    for i, text in enumerate(texts):
        alone = capture.run(model, [text], capture=hooks, return_logits=True)
        torch.testing.assert_close(batched.logits[i], alone.logits[0], rtol=1e-5, atol=1e-4)
        for h in hooks:
            torch.testing.assert_close(batched.activations[h][i], alone.activations[h][0], rtol=1e-5, atol=1e-4)

