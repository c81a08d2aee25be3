"""DuoAttention gates on the embedded model: real passkey samples decode to what they claim,
two training steps equal the same steps on the objective written out independently
(tests/duo_objective.py), and the Result saves and reloads."""

import numpy as np
import pytest
import torch

from mechscope.analyses.duo_attention import DuoParams, duo_gates
from mechscope.probes.passkey import passkey_samples
from tests import duo_objective

pytestmark = pytest.mark.integration


def test_passkey_samples_on_the_real_tokenizer(smollm2):
    m = smollm2.model
    a = passkey_samples(m, 3, (150, 200), 2, 3, seed=7)
    assert a == passkey_samples(m, 3, (150, 200), 2, 3, seed=7)
    for s in a:
        assert 150 <= len(s.ids) <= 200
        tail = m.tokenizer.decode(list(s.ids[s.answer_start:]))
        assert tail.startswith("Which words form the first passkey") and all(k in tail for k in s.passkeys)
        head = m.tokenizer.decode(list(s.ids[: s.answer_start]))
        assert all(f"passkey of the vault is {k}." in head for k in s.passkeys)


def test_two_steps_follow_the_objective_and_round_trip(smollm2, tmp_path):
    from mechscope.analyses.catalog import load_result

    m = smollm2.model
    params = DuoParams(steps=2, min_length=120, max_length=120, n_passkeys=1, passkey_words=4, n_sink=4, window=16,
                       retrieval_heads=((17, 3), (18, 6)))
    res = duo_gates(m, params)
    assert res.gates.shape == (30, 3) and res.group == 3 and res.complete
    assert np.isfinite(res.log["distill"]).all() and res.log["distill"].iloc[0] == pytest.approx(0.0, abs=1e-6)
    # the same two steps on the objective written out (reference full branch, as DuoParams' default)
    samples = [(s.ids, s.answer_start) for s in passkey_samples(m, 2, (120, 120), 1, 4, params.seed, params.n_lengths,
                                                                 params.long_text)]
    want, grads = duo_objective.train(m, samples, params.n_sink, params.window, params.lr, params.reg_weight,
                                      params.full_branch)
    # step 1 starts at α = 1, the unmodified model: the distillation term's gradient is exactly 0, so every gate
    # gets λ/90 from the L1 term and closes by lr; step 2's gradient opens some gates and closes others
    torch.testing.assert_close(grads[0], torch.full((30, 3), 0.05 / 90, dtype=torch.float64), rtol=1e-12, atol=0)
    assert (grads[1] < 0).any() and (grads[1] > 0).any()
    np.testing.assert_allclose(res.gates, want.numpy(), rtol=1e-6, atol=1e-6)  # float32 gates
    assert float(want.max() - want.min()) > 0.05  # the gates differ by far more than the tolerance
    res.save(tmp_path / "duo", html=True)
    back = load_result(tmp_path / "duo")
    assert back.params == params and np.array_equal(back.gates, res.gates)
    assert back.to_frame().equals(res.to_frame())
    assert back.overlap()["n_retrieval"] == 2  # L17K1, L18K2
