"""Sink metric (Gu et al. 2024), hidden sinks (ACT) and extreme tokens (Guo et al. 2024).

Hand-built attention matrices with known α_k and Sink_k^ε; a one-layer model whose sink
token is planted in the weights (so α is known in closed form); reducers checked against
naive computations on captured tensors, ragged batches included.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from mechscope.analyses.sinks import (
    SinkResult,
    alpha_from_pattern,
    attention_sinks,
    dormancy_score,
    sink_rate,
)
from mechscope.probes import capture
from mechscope.probes.errors import InputError
from mechscope.probes.results import Result
from tests.tiny import tiny_model

A1 = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.6, 0.2, 0.2, 0], [0.7, 0.1, 0.1, 0.1]])


def _uniform(T):
    return torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]


def test_alpha_hand_built():
    a = alpha_from_pattern(torch.stack([A1, _uniform(4)]))
    want = torch.tensor([[2.8 / 4, 0.8 / 3, 0.3 / 2, 0.1],
                         [(1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, (1 / 2 + 1 / 3 + 1 / 4) / 3, (1 / 3 + 1 / 4) / 2, 1 / 4]])
    torch.testing.assert_close(a, want)


def test_sink_rate_hand_built():
    a = alpha_from_pattern(torch.stack([A1, _uniform(4)]))  # two "heads"
    # α_1: 0.7, 0.52 -> both > 0.3; α_2: 0.267, 0.361 -> one; α_3, α_4 below
    np.testing.assert_allclose(sink_rate(a, 0.3), [100, 50, 0, 0])
    np.testing.assert_allclose(sink_rate(a, 0.6), [50, 0, 0, 0])
    nan = torch.tensor([[0.5, float("nan")], [0.1, 0.9]])
    np.testing.assert_allclose(sink_rate(nan, 0.3), [50, 100])  # NaN left out


def test_alpha_ragged_rows_ignore_padding():
    junk = torch.rand(4, 4)
    padded = torch.zeros(4, 4)
    padded[:3, :3] = A1[:3, :3]
    padded[3] = junk[3]  # a padded query row full of junk
    got = alpha_from_pattern(torch.stack([A1, padded])[:, None], torch.tensor([4, 3]))
    torch.testing.assert_close(got[0, 0], alpha_from_pattern(A1))
    torch.testing.assert_close(got[1, 0, :3], alpha_from_pattern(A1[:3, :3]))


def test_dormancy_score():
    # query 1 sees itself only; queries 2..4 of A1 put 0.5, 0.6, 0.7 on the first token
    a = alpha_from_pattern(A1)[0]
    assert abs(float(dormancy_score(np.array([a]), [4])[0]) - 0.6) < 1e-6


def test_bad_input(tiny):
    with pytest.raises(InputError, match="ε"):
        sink_rate(torch.rand(3, 4), 1.2)
    with pytest.raises(InputError, match="ε"):
        attention_sinks(tiny, [[1, 2, 3]], eps=0.0, variants=("no_bos",))
    with pytest.raises(InputError, match="fewer than k"):
        attention_sinks(tiny, [[1, 2, 3, 4, 5], [1, 2]], k_max=3, variants=("no_bos",))
    with pytest.raises(InputError, match="empty"):
        attention_sinks(tiny, [], variants=("no_bos",))
    with pytest.raises(InputError, match="empty"):
        attention_sinks(tiny, {"prose": []}, variants=("no_bos",))
    with pytest.raises(InputError, match="BOS"):
        attention_sinks(tiny, [[1, 2, 3, 4]], k_max=2, variants=("bos",))
    with pytest.raises(InputError, match="variant"):
        attention_sinks(tiny, [[1, 2, 3, 4]], k_max=2, variants=("nope",))


# ---------------------------------------------------------------------------------------
# A planted sink

SINK = 0


def planted_model(score: float = 6.0):
    """One layer, 4 query heads on 2 KV heads. Every query vector is the constant b_Q = s·u;
    only the SINK token has a key (along u), so each head gives the sink key the score
    ``score`` and every other key 0: A[i, j] = e^score / (m·e^score + i + 1 − m) on each of
    the m sink keys visible to query i, 1 / (same) elsewhere."""
    m = tiny_model(n_layers=1, d_model=32, n_heads=4, d_head=8, n_key_value_heads=2, rotary=False, seed=1,
                   dtype=torch.float64)
    d, dh = m.cfg.d_model, m.cfg.d_head
    with torch.no_grad():
        m.embed.W_E[:, 0] = 0.0
        m.embed.W_E[SINK] = 0.0
        m.embed.W_E[SINK, 0] = 1.0
        m.pos_embed.W_pos.zero_()
        att = m.blocks[0].attn
        att.W_Q.zero_()
        u = torch.zeros(dh)
        u[0] = 1.0
        att.b_Q[:] = u
        att._W_K.zero_()
        att._b_K.zero_()
        # RMSNorm maps the sink embedding e_0 to e_0 / sqrt(1/d + eps), so its key is that · c·u
        c = score * math.sqrt(dh) * math.sqrt(1 / d + m.cfg.eps)
        att._W_K[:, 0, 0] = c
    return m


def _expected_alpha(tokens, score):
    T = len(tokens)
    e = math.exp(score)
    A = torch.zeros(T, T, dtype=torch.float64)
    for i in range(T):
        w = torch.tensor([e if tokens[j] == SINK else 1.0 for j in range(i + 1)], dtype=torch.float64)
        A[i, : i + 1] = w / w.sum()
    return alpha_from_pattern(A)


def test_planted_first_token_sink():
    score = 6.0
    m = planted_model(score)
    g = torch.Generator().manual_seed(0)
    texts = []
    for n in (20, 16, 12):  # ragged
        t = torch.randint(1, 50, (n,), generator=g).tolist()
        t[0] = SINK
        texts.append(t)
    texts[1][9] = SINK  # a hidden sink at position 10 (1-based) of text 1
    res = attention_sinks(m, texts, k_max=12, max_tokens=64, variants=("no_bos",), norms=True, batch_size=2,
                          min_queries=1)
    assert res.alpha.shape == (1, 3, 1, 4, 12)
    for i, t in enumerate(texts):
        want = _expected_alpha(t, score)[:12].float()
        for h in range(4):  # every query head of both KV groups
            torch.testing.assert_close(torch.from_numpy(res.alpha[0, i, 0, h]), want, atol=1e-7, rtol=1e-6)  # float32 storage
    rates = res.sink_rates(0.3)
    assert rates.loc[rates.k == 1, "sink_rate"].item() == 100.0
    assert (rates.loc[rates.k > 1, "sink_rate"] < 100 / 3 * 1.01).all()  # only text 1, k = 10 can reach it
    assert rates.loc[rates.k == 10, "sink_rate"].item() == pytest.approx(100 / 3)
    # hidden sinks: exactly position 10 of text 1, in all 4 heads
    hc = res.hidden_counts
    assert hc[1, 9] == 4 and hc.sum() == 4
    assert res.hidden_heads.sum() == 4
    row = res.token_table[res.token_table.token_id == SINK]
    assert row["sink_occurrences"].item() == 1 and row["occurrences"].item() == 1


def test_reducers_match_naive_capture_on_ragged_batch():
    m = tiny_model(n_layers=2, n_heads=4, n_key_value_heads=2, seed=4)
    g = torch.Generator().manual_seed(3)
    texts = {"a": [torch.randint(0, 50, (n,), generator=g).tolist() for n in (13, 9)],
             "b": [torch.randint(0, 50, (n,), generator=g).tolist() for n in (11,)]}
    res = attention_sinks(m, texts, k_max=5, max_tokens=10, variants=("no_bos",), batch_size=3)
    seqs = [t[:10] for t in texts["a"] + texts["b"]]
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(2)] + [f"blocks.{l}.hook_resid_post" for l in range(2)] \
        + [f"blocks.{l}.attn.hook_v" for l in range(2)]
    acts = capture.run(m, seqs, capture=names).activations
    for i in range(3):
        for layer in range(2):
            a = alpha_from_pattern(acts[f"blocks.{layer}.attn.hook_pattern"][i])  # [H, T]
            torch.testing.assert_close(torch.from_numpy(res.alpha[0, i, layer]), a[:, :5], atol=1e-7, rtol=1e-5)
    T = 10
    for layer in range(2):
        norms = torch.zeros(T)
        vn = torch.zeros(2, T)
        cnt = torch.zeros(T)
        for i in range(3):
            n = len(seqs[i])
            norms[:n] += acts[f"blocks.{layer}.hook_resid_post"][i].norm(dim=-1)
            vn[:, :n] += acts[f"blocks.{layer}.attn.hook_v"][i].norm(dim=-1).T
            cnt[:n] += 1
        torch.testing.assert_close(torch.from_numpy(res.resid_norm[layer]), norms / cnt, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(torch.from_numpy(res.value_norm[layer]), vn / cnt, atol=1e-4, rtol=1e-5)
    assert list(res.domains) == ["a", "a", "b"]
    dd = res.dormancy_by_domain()
    assert set(dd.domain) == {"a", "b"} and len(dd) == 2 * 2 * 4


def test_result_roundtrip(tmp_path):
    m = planted_model()
    texts = [[SINK] + list(range(1, 12)), [SINK] + list(range(20, 30))]
    res = attention_sinks(m, texts, k_max=4, variants=("no_bos",))
    res.save(tmp_path / "r", html=True)
    back = Result.load(tmp_path / "r")
    assert isinstance(back, SinkResult)
    np.testing.assert_array_equal(back.alpha, res.alpha)
    assert back.sink_rates().equals(res.sink_rates())
    assert (tmp_path / "r" / "alpha_heatmap.html").is_file()


@pytest.mark.integration
def test_smollm2_first_token_is_a_sink(smollm2):
    texts = {"prose": ["The old man walked slowly along the quiet road, thinking about the harvest and the rain."],
             "code": ["def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n"]}
    res = attention_sinks(smollm2.model, texts, k_max=4, max_tokens=64)
    assert res.variants == ("no_bos", "bos", "newline", "space")
    rates = res.sink_rates(0.3).set_index(["variant", "k"])["sink_rate"]
    # Gu et al.: the first token is the sink in most heads, later positions rarely are
    for v in res.variants:
        assert rates[(v, 1)] > 50, v
        assert rates[(v, 2)] < 20, v
    L, H = smollm2.model.cfg.n_layers, smollm2.model.cfg.n_heads
    assert res.alpha.shape == (4, 2, L, H, 4)
    assert res.value_norm.shape[1] == smollm2.model.cfg.n_key_value_heads
    # residual-state peak at the sink in the middle layers (Guo et al.)
    mid = res.resid_norm[L // 2]
    assert mid[0] > 3 * np.median(mid[1:])
    figs = res.figures()
    assert {"alpha_heatmap", "sink_rate_by_k", "residual_norm", "value_norm", "dormancy_by_domain"} <= set(figs)


def test_hidden_sinks_need_enough_queries():
    """A planted sink late in a text is seen by few queries: it is a hidden sink with
    min_queries=1 and not with the default 16 (ACT's column mean over 7 queries would flag
    a late key by position alone); a planted sink seen by 20 queries counts either way."""
    m = planted_model(6.0)
    g = torch.Generator().manual_seed(0)
    short = torch.randint(1, 50, (16,), generator=g).tolist()
    long = torch.randint(1, 50, (40,), generator=g).tolist()
    short[0] = long[0] = SINK
    short[9] = SINK   # seen by 16 − 9 = 7 queries
    long[19] = SINK   # seen by 40 − 19 = 21 queries
    every = attention_sinks(m, [short, long], k_max=4, variants=("no_bos",), norms=False, min_queries=1)
    default = attention_sinks(m, [short, long], k_max=4, variants=("no_bos",), norms=False)
    assert default.params.min_queries == 16
    assert every.hidden_counts[0, 9] == 4 and every.hidden_counts[1, 19] == 4
    assert default.hidden_counts[0, 9] == 0 and default.hidden_counts[1, 19] == 4
    pos = default.hidden_sink_positions().set_index("pos")
    assert pos.loc[9, "texts"] == 1  # judged only in the long text, where it is not a sink
    assert pos.loc[9, "hidden_sink_fraction"] == 0.0 and pos.loc[19, "hidden_sink_fraction"] == 1.0
    assert pos.loc[30, "texts"] == 0  # 10 queries in the long text, none in the short: never judged


def test_sinks_result_reruns_to_equal_tables(tmp_path):
    from mechscope.probes.results import Result

    m = planted_model(6.0)
    res = attention_sinks(m, [[SINK, 3, 4, 5, 6, 7, 8, 9], [SINK, 9, 8, 7, 6, 5]], k_max=3, variants=("no_bos",))
    res.save(tmp_path / "s")
    back = Result.load(tmp_path / "s")
    assert back.params == res.params
    pd.testing.assert_frame_equal(back.rerun(m).to_frame(), res.to_frame())
    pd.testing.assert_frame_equal(back.rerun(m).token_table, res.token_table)
