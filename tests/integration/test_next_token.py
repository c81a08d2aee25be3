"""analyses.next_token: top-k next tokens and single-head attention patterns."""

import numpy as np
import pytest

from mechscope.analyses.next_token import attention_pattern, next_token


@pytest.mark.integration
def test_real_model_paris(smollm2):
    model, _ = smollm2
    r = next_token(model, "The capital of France is", k=5)
    assert r.top_tokens[0] == " Paris"
    assert r.prompt_tokens == ["The", " capital", " of", " France", " is"]  # no BOS by default
    with_bos = next_token(model, "The capital of France is", k=5, prepend_bos=True)
    assert with_bos.prompt_tokens[0] == "<|im_start|>" and len(with_bos.prompt_tokens) == 6
    a = attention_pattern(model, "The capital of France is", layer=29, head=8)
    assert a.pattern.shape == (5, 5)
    np.testing.assert_allclose(a.pattern.sum(-1), 1.0, atol=1e-5)
    assert np.allclose(np.triu(a.pattern, 1), 0.0)

