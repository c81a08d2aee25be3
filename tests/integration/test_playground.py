"""analyses.playground: baseline vs intervened generations and the per-token Δp."""

import pytest

from mechscope.analyses.next_token import next_token
from mechscope.analyses.playground import compare_generations
from mechscope.probes.interventions import NeuronClamp


@pytest.mark.integration
def test_real_model_clamp_agrees_with_next_token(smollm2):
    """Two independent routes to p(first baseline token | prompt, clamp): the playground's
    teacher-forced score and next_token's softmax."""
    model, _ = smollm2
    clamp = NeuronClamp(20, 100, value=10.0)
    r = compare_generations(model, "The capital of France is", [clamp], max_new_tokens=4)
    assert abs(r.delta_p[0]) > 1e-3
    assert r.baseline_tokens[0] == " Paris"
    nt = next_token(model, "The capital of France is", k=1000, interventions=[clamp])
    p_paris = float(nt.top_probs[list(nt.top_ids).index(r.baseline_ids[0])])
    assert r.p_intervened[0] == pytest.approx(p_paris, rel=1e-4)
    base = next_token(model, "The capital of France is", k=1)
    assert r.p_base[0] == pytest.approx(float(base.top_probs[0]), rel=1e-4)

