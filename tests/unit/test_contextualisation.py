"""Contextualisation (LLM-Microscope prefix reconstruction) on tiny models whose states are
known to hold — or not to hold — the previous token."""

import math

import pytest
import torch

from mechscope.analyses.contextualisation import ContextParams, contextualisation
from mechscope.probes.errors import InputError
from tests.tiny import tiny_model

V = 24


def _texts(n=48, length=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (length,), generator=g).tolist() for _ in range(n)]


def _silenced():
    """Attention writes nothing (W_O = 0): each state is a function of its own token only."""
    m = tiny_model(n_layers=2, d_model=48, d_mlp=64, d_vocab=V, n_ctx=64, rotary=True, seed=4)
    with torch.no_grad():
        for blk in m.blocks:
            blk.attn.W_O.zero_()
    return m


def test_own_token_is_recovered_from_its_states():
    """Uniform random tokens over V = 24: knowing nothing, the best cross-entropy is log 24 =
    3.18 nats. The states of token t hold x_t, and with k = 1 the decoder's only input is the
    adapter's embedding, so the adapter learns to make the model emit x_t: far below log 24
    and far below the stateless control. A prefix picked one position off (x_{t-1}) would
    not be recoverable and fails this."""
    res = contextualisation(_silenced(), ContextParams(texts=_texts(), prefix=1, steps=120, batch_size=64, lr=3e-2,
                                                       max_train=500, max_eval=300, seed=0))
    d = res.by_distance().set_index("distance")
    assert d.loc[0, "loss"] < 0.5 * math.log(V)
    assert d.loc[0, "gain"] > 1.0
    assert res.loss.shape == (288, 1) and len(res.tokens) == 288  # 12 held-out texts (25 %) × 24 positions, < 300


def test_previous_token_is_not_in_context_free_states():
    """With attention silenced the states hold nothing about x_{t-1}: slot 0 of a k = 2
    prefix (predicted from the adapter's embedding alone) gains nothing over the stateless
    control (one trained embedding) on held-out texts: training can only overfit."""
    res = contextualisation(_silenced(), ContextParams(texts=_texts(seed=2), prefix=2, steps=120, batch_size=64, lr=3e-2,
                                                       max_train=500, max_eval=300, seed=0))
    d = res.by_distance().set_index("distance")
    assert d.loc[1, "gain"] < 0.15


def test_bad_input():
    m = _silenced()
    with pytest.raises(InputError, match="prefix"):
        ContextParams(prefix=0)
    with pytest.raises(InputError, match="at least 2 texts"):
        contextualisation(m, ContextParams(texts=([1, 2, 3],), prefix=2, steps=1))
