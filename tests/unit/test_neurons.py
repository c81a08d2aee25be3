"""Neuron decoding, search, taxonomy and clamp verification on tiny models wired by hand."""

import pytest
import torch

from mechscope.analyses.neurons import (
    NeuronDecodeResult,
    clamp_verification,
    decode_directions,
    decode_neurons,
    method_agreement,
    neuron_activity,
    neurons_for_token,
    topk_both,
    unembedding,
)
from mechscope.probes.errors import InputError
from mechscope.probes.results import Result
from tests.tiny import tiny_model

T_PLANT, L_PLANT, N_PLANT = 13, 1, 5


def planted_model():
    """A tiny model whose neuron (1, 5) writes exactly token 13's unembedding direction, with
    a non-trivial final-norm weight γ folded out (γ ⊙ w = 3·W_U[:, 13])."""
    m = tiny_model(n_layers=2, d_model=32, d_mlp=64, d_vocab=50, seed=1)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        m.ln_final.w.copy_(0.5 + torch.rand(32, generator=g))
        m.unembed.W_U[:, T_PLANT] *= 3  # a clearly dominant column, so its own direction wins
        m.blocks[L_PLANT].mlp.W_out[N_PLANT] = 3 * m.unembed.W_U[:, T_PLANT] / m.ln_final.w
    return m


def test_topk_both_equals_torch_topk():
    g = torch.Generator().manual_seed(0)
    for V, block in [(1001, 16), (4096, 64), (50, 64)]:
        x = torch.randn(37, V, generator=g)
        tv, ti, bv, bi = topk_both(x, 7, block=block)
        rv, ri = torch.topk(x, 7, dim=1)
        qv, qi = torch.topk(x, 7, dim=1, largest=False)
        assert torch.equal(tv, rv) and torch.equal(ti, ri)
        assert torch.equal(bv, qv) and torch.equal(bi, qi)


def test_decode_equals_full_product_any_chunking():
    m = planted_model()
    res = decode_neurons(m, k=4, chunk_size=7, softmax=True)
    W = unembedding(m, "final")
    full = torch.cat([m.blocks[i].mlp.W_out for i in range(2)]).detach() @ W  # [128, 50]
    rv, ri = torch.topk(full, 4, dim=1)
    assert torch.equal(res.top_ids.reshape(-1, 4).long(), ri)
    assert torch.allclose(res.top_logits.reshape(-1, 4), rv, atol=1e-5)
    bv, bi = torch.topk(full, 4, dim=1, largest=False)
    assert torch.equal(res.bottom_ids.reshape(-1, 4).long(), bi)
    p = torch.softmax(full, dim=1).max(dim=1).values
    assert torch.allclose(res.top_prob.reshape(-1), p, atol=1e-6)


def test_planted_neuron_decodes_to_its_token():
    m = planted_model()
    res = decode_neurons(m, k=5)
    assert int(res.top_ids[L_PLANT, N_PLANT, 0]) == T_PLANT
    # it is also the neuron that most promotes the token, found by the exact search
    hits = neurons_for_token(m, T_PLANT, top=3).to_frame()
    assert (int(hits.loc[0, "layer"]), int(hits.loc[0, "neuron"])) == (L_PLANT, N_PLANT)
    assert int(hits.loc[0, "rank_of_token"]) == 1 and hits.loc[0, "method"].startswith("write")
    # the offline search over the stored top-k agrees
    off = res.search(T_PLANT)
    assert (int(off.loc[0, "layer"]), int(off.loc[0, "neuron"])) == (L_PLANT, N_PLANT)
    card = res.card(L_PLANT, N_PLANT)
    assert card.loc[0, "top_token"] == f"<{T_PLANT}>"


def _axis_model():
    """W_U is the identity on the first 32 tokens (token t ↔ residual axis t, tokens ≥ 32
    unreachable), the final norm's γ is 0.5 + t/32 on axis t; neuron (0, 2) writes 2·e_3 and
    reads (up-projection) e_9; neuron (0, 4) writes 4·e_20 and reads e_20."""
    m = tiny_model(n_layers=1, d_model=32, d_mlp=8, d_vocab=50, seed=2, dtype=torch.float64)
    with torch.no_grad():
        m.unembed.W_U.zero_()
        m.unembed.W_U[:, :32] = torch.eye(32, dtype=torch.float64)
        m.ln_final.w.copy_(0.5 + torch.arange(32, dtype=torch.float64) / 32)
        mlp = m.blocks[0].mlp
        mlp.W_out.zero_()
        mlp.W_in.zero_()
        mlp.W_out[2, 3] = 2.0
        mlp.W_in[9, 2] = 1.0
        mlp.W_out[4, 20] = 4.0
        mlp.W_in[20, 4] = 1.0
    return m


def test_methods_decode_what_they_say_values_by_hand():
    """write = W_Uᵀ(γ ⊙ W_out[n]); paper = W_Uᵀ W_in[:, n] with no norm — on axis-aligned
    weights the top logits are known by hand: write 2·γ_3 = 2·(0.5 + 3/32) on token 3,
    raw LM head 2 on token 3, paper 1 on token 9."""
    m = _axis_model()
    write = decode_neurons(m, k=2, method="write")
    raw = decode_neurons(m, k=2, method="custom", direction="out", norm="raw")
    paper = decode_neurons(m, k=2, method="paper")
    assert int(write.top_ids[0, 2, 0]) == 3 and int(raw.top_ids[0, 2, 0]) == 3 and int(paper.top_ids[0, 2, 0]) == 9
    assert float(write.top_logits[0, 2, 0]) == pytest.approx(2 * (0.5 + 3 / 32), rel=1e-6)
    assert float(raw.top_logits[0, 2, 0]) == pytest.approx(2.0, rel=1e-6)
    assert float(paper.top_logits[0, 2, 0]) == pytest.approx(1.0, rel=1e-6)
    assert float(write.top_logits[0, 4, 0]) == pytest.approx(4 * (0.5 + 20 / 32), rel=1e-6)
    assert "paper" in paper.method and "write" in write.method
    assert set(paper.to_frame()["method"]) == {paper.method}
    agree = method_agreement(m)
    row = agree[agree.layer == 0].iloc[0]
    # neuron 4 agrees (token 20 both ways); neuron 2 does not (3 vs 9); the zero neurons tie at token 0
    top_p, top_w = paper.top_ids[0, :, 0], write.top_ids[0, :, 0]
    assert int(row.same_top1) == int((top_p == top_w).sum()) and int(top_p[4]) == int(top_w[4]) == 20
    with pytest.raises(InputError, match="custom"):
        decode_neurons(m, method="paper", norm="final")


def test_decode_result_roundtrip(tmp_path):
    m = planted_model()
    res = decode_neurons(m, k=3, layers=[1])
    back = Result.load(res.save(tmp_path / "dec"))
    assert isinstance(back, NeuronDecodeResult)
    assert torch.equal(back.top_ids, res.top_ids) and back.top_prob is None
    assert back.layers == [1]
    with pytest.raises(InputError):
        back.card(0, 0)


def test_bad_input_messages():
    m = planted_model()
    with pytest.raises(InputError, match="layer"):
        decode_neurons(m, layers=[2])
    with pytest.raises(InputError, match="method"):
        decode_neurons(m, method="nope")
    with pytest.raises(InputError, match="token id"):
        neurons_for_token(m, 50)
    with pytest.raises(InputError, match="tokenizer"):
        neurons_for_token(m, "dog")
    with pytest.raises(InputError, match="empty"):
        neuron_activity(m, texts=[])
    with pytest.raises(InputError, match="neuron"):
        clamp_verification(m, neurons=[(0, 64)], prompts=[[1, 2, 3]])


def _silenced(rotary: bool, seed: int):
    """One layer with attention silenced (W_O = 0): the MLP sees RMSNorm(resid) of the
    token embedding (plus the learned position embedding when ``rotary`` is off)."""
    m = tiny_model(n_layers=1, d_model=32, d_mlp=16, d_vocab=50, n_ctx=64, rotary=rotary, seed=seed)
    with torch.no_grad():
        m.blocks[0].attn.W_O.zero_()
    return m


def wired_token_model():
    """Neuron 3 — token detector for token 7: gate = 20·u·x and up = u·x, with u the direction
    of token 7's normalised embedding, so act ≈ 20·(u·x)² = 20·d·cos² for u·x > 0 and ≈ 0
    otherwise: token 7 gives 20·d, every other token at most 20·d·cos_max². Neuron 4 — dead:
    W_gate column 0, so silu(0)·up = 0 on every token. Returns (model, threshold between)."""
    m = _silenced(rotary=True, seed=3)
    d = 32
    with torch.no_grad():
        E = m.embed.W_E
        x = E / E.pow(2).mean(-1, keepdim=True).sqrt()  # what ln2 (weight 1) makes of each token
        u = x[7] / x[7].norm()
        cos = (x @ u) / x.norm(dim=1)
        assert float(cos[torch.arange(50) != 7].max()) < 0.8  # precondition of the wiring
        mlp = m.blocks[0].mlp
        mlp.W_gate[:, 3] = 20 * u
        mlp.W_in[:, 3] = u
        mlp.W_gate[:, 4] = 0
    threshold = 20 * d * (1 + float(cos[torch.arange(50) != 7].max()) ** 2) / 2
    return m, threshold


def wired_position_model():
    """Neuron 6 — positional: W_pos moves dimension 0 from −6 to +6 along the sequence and
    holds dimension 1 at 6; token embeddings are zero there. up reads dim 0, gate 3·dim 1."""
    m = _silenced(rotary=False, seed=4)
    with torch.no_grad():
        m.embed.W_E[:, :2] = 0
        m.pos_embed.W_pos.zero_()
        m.pos_embed.W_pos[:, 0] = torch.linspace(-1, 1, 64) * 6
        m.pos_embed.W_pos[:, 1] = 6.0
        mlp = m.blocks[0].mlp
        mlp.W_gate[:, 6] = 0
        mlp.W_gate[1, 6] = 3.0
        mlp.W_in[:, 6] = 0
        mlp.W_in[0, 6] = 1.0
    return m


def _random_texts(n=40, length=48, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50, (length,), generator=g).tolist() for _ in range(n)]


def test_taxonomy_token_detector_and_dead():
    m, threshold = wired_token_model()
    res = neuron_activity(m, texts=_random_texts(), threshold=threshold, max_types=64, max_positions=64)
    names = res.CATEGORIES
    cat = res.category[0]
    assert names[int(cat[3])] == "token detector"
    assert int(res.top_token_ids[0, 3, 0]) == 7
    assert float(res.top_token_share[0, 3]) == 1.0 and float(res.top_token_coverage[0, 3]) == 1.0
    assert names[int(cat[4])] == "dead" and float(res.max_act[0, 4]) == 0.0
    counts = res.counts()
    assert int(counts.loc[0, list(names)].sum()) == 16
    assert int(counts.loc[0, "dead"]) >= 1 and int(counts.loc[0, "token detector"]) >= 1
    det = res.neurons("token detector")
    assert 3 in det["neuron"].tolist()


def test_taxonomy_positional():
    m = wired_position_model()
    res = neuron_activity(m, texts=_random_texts(seed=3), threshold=2.0, max_types=64, max_positions=64)
    assert res.CATEGORIES[int(res.category[0, 6])] == "positional"
    assert float(res.eta2_pos[0, 6]) > 0.9 and float(res.eta2_token[0, 6]) < 0.2
    # the mean activation by position rises along the sequence
    prof = res.pos_mean[0, 6, :48]
    assert float(prof[-1]) > 2.0 > float(prof[0])


def test_negative_only_neuron_is_not_dead():
    """SiLU(gate)·up is signed: gate = 20·u and up = −u make neuron 3 fire only strongly
    *negative* (≈ −20·d·cos²) on token 7. |activation| > threshold counts that as firing, so
    the neuron is a token detector, not dead; a neuron at exactly 0 everywhere is dead."""
    m, threshold = wired_token_model()
    with torch.no_grad():
        m.blocks[0].mlp.W_in[:, 3] *= -1
    res = neuron_activity(m, texts=_random_texts(), threshold=threshold, max_types=64, max_positions=64)
    assert float(res.max_act[0, 3]) < threshold and float(res.min_act[0, 3]) < -threshold
    assert res.CATEGORIES[int(res.category[0, 3])] == "token detector" and int(res.top_token_ids[0, 3, 0]) == 7
    assert res.CATEGORIES[int(res.category[0, 4])] == "dead"


def _planted_activity_model(texts):
    """A one-layer tiny model whose MLP activations are replaced by a planted rule of the
    tokens (read back from the embedding, which equals W_E[token] exactly): neuron 0 = 3 on
    the pair (5, 7) only; neuron 1 = 3 on every 7 (a token detector); all others 0."""
    m = tiny_model(n_layers=1, d_model=32, d_mlp=16, d_vocab=50, n_ctx=64, seed=6)
    seen = {}

    def read_tokens(x, hook):
        seen["tok"] = (x[..., None, :] == m.embed.W_E).all(-1).float().argmax(-1)
        return x

    def plant(act, hook):
        tok = seen["tok"]
        prev = torch.cat([torch.full_like(tok[:, :1], -1), tok[:, :-1]], 1)
        out = torch.zeros_like(act)
        out[..., 0] = 3.0 * ((prev == 5) & (tok == 7))
        out[..., 1] = 3.0 * (tok == 7)
        return out

    m.add_perma_hook("hook_embed", read_tokens)
    m.add_perma_hook("blocks.0.mlp.hook_post", plant)
    return m


def test_ngram_detector_needs_the_previous_token():
    """Token 7 occurs 100 times, 40 of them after 5. Neuron 0 fires on every pair (5, 7): it
    covers its pair fully but only 40 % of token 7's occurrences (< min_coverage 0.5), so the
    preceding token is needed — an n-gram detector. Neuron 1 fires on every 7: a token
    detector. The others never fire: dead."""
    g = torch.Generator().manual_seed(8)
    texts = []
    for i in range(20):
        t = torch.randint(10, 50, (48,), generator=g).tolist()  # tokens 0..9 never occur at random
        for j, pos in enumerate((4, 14, 24, 34, 44)):
            if j < 2:
                t[pos - 1], t[pos] = 5, 7  # 2 pairs (5, 7) per text: 40 in all
            else:
                t[pos - 1], t[pos] = 3, 7  # 3 lone 7s per text (after 3): 60 in all
        texts.append(t)
    m = _planted_activity_model(texts)
    res = neuron_activity(m, texts=texts, threshold=1.0, max_types=64, max_bigrams=64, max_positions=64)
    names = res.CATEGORIES
    assert names[int(res.category[0, 0])] == "n-gram detector"
    assert res.top_bigrams[0, 0, 0].tolist() == [5, 7]
    assert float(res.bigram_share[0, 0]) == 1.0 and float(res.bigram_coverage[0, 0]) == 1.0
    assert abs(float(res.unigram_coverage[0, 0]) - 0.4) < 1e-6  # 40 of token 7's 100 occurrences
    assert names[int(res.category[0, 1])] == "token detector"  # fires on every 7: the token suffices
    assert names[int(res.category[0, 2])] == "dead"
    table = res.neurons("n-gram detector")
    assert table["neuron"].tolist() == [0] and table["top_bigrams"].tolist()[0].startswith("'<5>'+'<7>'")


def test_clamp_verification_separates_a_true_label_from_a_false_one():
    """Paper-method labels are verified against controls. Neuron (0, 2) reads token 9's
    direction but writes token 3's: its label (9) does not rise more than random clamps
    raise it. Neuron (0, 4) reads and writes token 20: its label rises far above control."""
    m = _axis_model()
    with torch.no_grad():
        m.blocks[0].mlp.W_out[2].zero_()
        m.blocks[0].mlp.W_out[2, 3] = 5.0  # a strong write elsewhere
        m.blocks[0].mlp.W_out[4].zero_()
        m.blocks[0].mlp.W_out[4, 20] = 5.0
    prompts = [[1, 2, 3, 4], [10, 11], [20, 30, 35, 36, 37]]
    res = clamp_verification(m, neurons=[(0, 2), (0, 4)], prompts=prompts, value=30.0, n_controls=3)
    t = res.table.set_index("neuron")
    assert int(t.loc[2, "top_id"]) == 9 and int(t.loc[4, "top_id"]) == 20  # paper-method labels
    assert t.loc[4, "over_control"] > 0.5 and t.loc[4, "delta_p"] > res.params.min_delta_p
    assert abs(t.loc[2, "over_control"]) < 0.05 and t.loc[2, "delta_p"] < 0.05
    assert res.fraction_up == 0.5 and "paper" in res.method
    assert len(t.loc[4, "control_neurons"].split(",")) == 3
    lo, hi = res.effect_ci
    assert lo <= res.effect_over_control <= hi


def test_neuron_results_rerun_to_equal_tables(tmp_path):
    import pandas as pd

    m = _axis_model()
    results = [decode_neurons(m, k=3, method="paper"), neurons_for_token(m, 20, top=3),
               neuron_activity(m, texts=_random_texts(n=4, length=10), max_types=16, max_positions=16),
               clamp_verification(m, neurons=[(0, 4)], prompts=[[1, 2, 3]], value=10.0, n_controls=2)]
    from mechscope.analyses.neurons import max_activating

    results.append(max_activating(m, 0, 4, texts=_random_texts(n=3, length=8), k=3))
    for r in results:
        r.save(tmp_path / r.kind)
        back = Result.load(tmp_path / r.kind)
        assert back.params == r.params
        pd.testing.assert_frame_equal(back.rerun(m).to_frame(), r.to_frame())


def test_decode_directions_rejects_bad_k():
    with pytest.raises(InputError):
        decode_directions(torch.randn(3, 4), torch.randn(4, 5), k=6)


def test_cli_bad_input_is_one_line(capsys):
    from mechscope.app.cli import main

    assert main(["neurons", "decode", "--neuron", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mechscope: error: --neuron needs --layer."]
    assert main(["neurons", "activity", "--neuron", "3"]) == 2


def test_decoding_is_cached_by_the_weights_it_came_from(tmp_path, monkeypatch):
    """A second decode of the same weights reads the stored one (nothing recomputed, equal
    result); a changed weight or another k is a new entry; a damaged file is recomputed."""
    import mechscope.analyses.neurons.decode as dec

    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    m = planted_model()
    first = decode_neurons(m, k=4, softmax=True)
    files = list((tmp_path / "neuron_decode").glob("*.safetensors"))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError("recomputed")

    with monkeypatch.context() as mp:
        mp.setattr(dec, "decode_directions", boom)
        again = decode_neurons(m, k=4, softmax=True)
    for name in ("top_ids", "top_logits", "bottom_ids", "bottom_logits", "top_prob"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name

    fresh = decode_neurons(m, k=4, softmax=True, cache=False)
    assert torch.equal(fresh.top_ids, first.top_ids) and torch.equal(fresh.top_logits, first.top_logits)
    decode_neurons(m, k=3)  # another k: its own entry
    original = m.blocks[0].mlp.W_out[2].clone()
    with torch.no_grad():
        m.blocks[0].mlp.W_out[2] += 1.0  # other weights: another entry, and the new decoding
    changed = decode_neurons(m, k=4, softmax=True)
    assert len(list((tmp_path / "neuron_decode").glob("*.safetensors"))) == 3
    assert not torch.equal(changed.top_logits, first.top_logits)

    files[0].write_bytes(b"not a safetensors file")
    with torch.no_grad():
        m.blocks[0].mlp.W_out[2] = original
    healed = decode_neurons(m, k=4, softmax=True)
    assert torch.equal(healed.top_ids, first.top_ids)

    monkeypatch.setenv("MECHSCOPE_CACHE", "off")
    decode_neurons(m, k=5)
    assert len(list((tmp_path / "neuron_decode").glob("*.safetensors"))) == 3


def test_two_decodes_of_the_same_weights_at_once_compute_it_once(tmp_path, monkeypatch):
    """Two decodes start together (as two dashboard processes or test workers would): the second
    waits on the first's lock and reads its file instead of computing the product again."""
    import threading
    import time

    import mechscope.analyses.neurons.decode as dec

    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path))
    real, calls = dec.decode_directions, []

    def slow(*a, **k):
        calls.append(1)
        time.sleep(0.5)
        return real(*a, **k)

    monkeypatch.setattr(dec, "decode_directions", slow)
    m = planted_model()
    results = [None, None]

    def run(i):
        results[i] = decode_neurons(m, k=4)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert torch.equal(results[0].top_ids, results[1].top_ids)
