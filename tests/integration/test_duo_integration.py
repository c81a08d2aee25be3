"""DuoAttention gates on the embedded model: real passkey samples decode to what they claim,
a couple of training steps keep every gate in [0, 1] and move them, the Result saves and
reloads, and the CLI's bad input is one line."""

import numpy as np
import pytest

from analyses.duo_attention import DuoParams, duo_gates
from analyses.passkey import passkey_samples

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


def test_two_steps_keep_gates_in_unit_interval_and_round_trip(smollm2, tmp_path):
    from analyses.catalog import load_result

    params = DuoParams(steps=2, min_length=120, max_length=120, n_passkeys=1, passkey_words=4, n_sink=4, window=16,
                       retrieval_heads=((17, 3), (18, 6)))
    res = duo_gates(smollm2.model, params)
    assert res.gates.shape == (30, 3) and res.group == 3 and res.complete
    assert ((res.gates >= 0) & (res.gates <= 1)).all()
    assert (res.gates < 1).any()  # the L1 penalty moved them
    assert np.isfinite(res.log["distill"]).all() and res.log["distill"].iloc[0] == pytest.approx(0.0, abs=1e-6)
    res.save(tmp_path / "duo", html=True)
    back = load_result(tmp_path / "duo")
    assert back.params == params and np.array_equal(back.gates, res.gates)
    assert back.to_frame().equals(res.to_frame())
    assert back.overlap()["n_retrieval"] == 2  # L17K1, L18K2
