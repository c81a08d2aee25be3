"""decoding.generate: KV cache changes nothing (with or without interventions), sampling
is seeded and truncates as documented, streaming, EOS, length checks."""

from __future__ import annotations

import pytest
import torch

from mechscope.probes.decoding import generate
from mechscope.probes.interventions import HeadMask, NeuronClamp

PROMPT = [3, 17, 8, 42, 5, 11, 29, 0, 13, 7]


class Recorder:
    """Greedy, keeping each step's logits so cached and uncached runs can be compared."""

    name = "recorder"

    def __init__(self):
        self.logits: list[torch.Tensor] = []

    def select(self, state) -> int:
        self.logits.append(state.logits.clone())
        return int(state.logits.argmax())


def _run(model, kv, interventions=(), n=12, prompt=PROMPT):
    rec = Recorder()
    gen = generate(model, prompt, n, strategy=rec, interventions=interventions, kv_policy=kv)
    return gen, rec.logits


@pytest.mark.integration
def test_smollm2_cache_equivalence(smollm2):
    model = smollm2.model
    prompt = "The capital of France is"
    g_cache, l_cache = _run(model, "full", n=8, prompt=prompt)
    g_plain, l_plain = _run(model, None, n=8, prompt=prompt)
    assert g_cache.new_tokens == g_plain.new_tokens
    assert g_cache.text.startswith(" Paris")
    ivs = [HeadMask(5, 2), NeuronClamp(10, 100, value=3.0)]
    i_cache, li_cache = _run(model, "full", ivs, n=6, prompt=prompt)
    i_plain, li_plain = _run(model, None, ivs, n=6, prompt=prompt)
    assert i_cache.new_tokens == i_plain.new_tokens
    for a, b in zip(li_cache, li_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)

