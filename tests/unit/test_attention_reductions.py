"""probes.attention_reductions: blockwise column sums / counts, top-1 keys and first-key
mass equal closed forms on hand-built attention and the reductions of TransformerLens'
materialised pattern (float64 tiny models: MHA, GQA, a local window, right-padded batches,
a left-padded key mask, and the last query under a KV cache)."""

from __future__ import annotations

import pytest
import torch

from mechscope.probes import fused_attention as fa
from mechscope.probes.act import column_mean
from mechscope.probes.attention_reductions import PatternStats, QKReducer, Scoring, pattern_blocks, pattern_stats
from mechscope.probes.decoding import Greedy, generate
from mechscope.probes.errors import InputError
from mechscope.probes.kv_policies import new_cache
from tests.tiny import tiny_model
from tests.unit.test_fused_attention import gemma3_like, tokens

ATOL = 1e-12


def harmonic_colsum(T: int, width: int | None = None) -> torch.Tensor:
    """Σ_i A[i, j] for uniform attention over the visible keys (window ``width``)."""
    out = torch.zeros(T, dtype=torch.float64)
    for i in range(T):
        lo = 0 if width is None else max(0, i - width + 1)
        out[lo : i + 1] += 1.0 / (i + 1 - lo)
    return out


@pytest.mark.parametrize("block", [1, 2, 7, 256])
def test_uniform_attention_closed_forms(block):
    """q = 0: every query attends uniformly to what it sees. Column sums are harmonic
    tails, counts T − j, the first key gets 1/(i+1), ties make key 0 the top-1."""
    T, H, G = 7, 4, 2
    q = torch.zeros(1, T, H, 3, dtype=torch.float64)
    k = torch.randn(1, T, G, 3, dtype=torch.float64)
    s = pattern_stats(q, k, Scoring(scale=1.0), block=block)
    assert torch.allclose(s.colsum, harmonic_colsum(T).expand(1, H, T), atol=ATOL)
    assert torch.equal(s.count, (T - torch.arange(T))[None])
    assert torch.allclose(s.first, (1.0 / torch.arange(1, T + 1, dtype=torch.float64)).expand(1, H, T), atol=ATOL)
    assert torch.equal(s.top1, torch.zeros(1, H, T, dtype=torch.long))
    assert torch.allclose(s.column_mean(), (harmonic_colsum(T) / (T - torch.arange(T))).expand(1, H, T), atol=ATOL)


def test_uniform_attention_with_window_and_key_mask():
    T, H = 7, 2
    q = torch.zeros(2, T, H, 3, dtype=torch.float64)
    k = torch.randn(2, T, H, 3, dtype=torch.float64)
    s = pattern_stats(q, k, Scoring(scale=1.0, window=3), block=3)
    assert torch.allclose(s.colsum[0, 0], harmonic_colsum(T, 3), atol=ATOL)
    assert s.count[0].tolist() == [7, 6, 5, 4, 3, 2, 1]  # Gu et al.'s T − k + 1: the window zeroes A, not the count
    assert s.top1[0, 0].tolist() == [0, 0, 0, 1, 2, 3, 4]  # the oldest key still in the window
    assert torch.allclose(s.first[0, 0], torch.tensor([1, 1 / 2, 1 / 3, 0, 0, 0, 0], dtype=torch.float64), atol=ATOL)
    # row 0: keys 0, 1 are padding (left-padded cache); queries 0, 1 see nothing
    key_mask = torch.ones(2, T, dtype=torch.bool)
    key_mask[0, :2] = False
    s = pattern_stats(q, k, Scoring(scale=1.0), key_mask=key_mask)
    want = torch.zeros(T, dtype=torch.float64)
    want[2:] = harmonic_colsum(T - 2)
    assert torch.allclose(s.colsum[0, 1], want, atol=ATOL)
    assert torch.allclose(s.colsum[1, 1], harmonic_colsum(T), atol=ATOL)
    assert s.count[0].tolist() == [7, 6, 5, 4, 3, 2, 1]
    assert s.top1[0, 0].tolist() == [-1, -1, 2, 2, 2, 2, 2]
    assert s.first[0, 0].abs().max() == 0


def test_one_hot_attention_closed_forms():
    """Key j = c·e_j and query i = c·e_t(i): query i attends only to t(i) ≤ i (score c²
    there, 0 elsewhere). Also with only the last 3 queries at their cache offset."""
    T, c = 9, 20.0
    target = torch.tensor([0, 0, 1, 0, 2, 4, 4, 0, 7])
    k = (c * torch.eye(T, dtype=torch.float64))[None, :, None, :]  # [1, T, 1, T]
    q = (c * torch.eye(T, dtype=torch.float64)[target])[None, :, None, :].expand(1, T, 3, T)  # 3 heads share k
    s = pattern_stats(q, k, Scoring(scale=1.0), block=4)
    assert torch.equal(s.top1, target.expand(1, 3, T))
    assert torch.allclose(s.colsum[0, 0], torch.bincount(target, minlength=T).double(), atol=ATOL)
    assert torch.allclose(s.first[0, 0], (target == 0).double(), atol=ATOL)
    last = pattern_stats(q[:, -3:], k, Scoring(scale=1.0), want=("top1", "colsum"))  # q_offset = K − Q = 6
    assert last.top1[0, 0].tolist() == [4, 0, 7]
    assert last.count[0].tolist() == [3] * 7 + [2, 1]
    assert last.first is None


def materialised_run(model, toks, **kwargs):
    """One TransformerLens pass: every layer's materialised pattern and rotated q, k."""
    names = lambda n: n.endswith(("hook_pattern", "hook_rot_q", "hook_rot_k"))  # noqa: E731
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=names, **kwargs)
    return cache


@pytest.mark.parametrize("kind", ["mha", "gqa", "gemma3_like"])
@pytest.mark.parametrize("block", [1, 5, 256])
def test_equal_to_the_materialised_pattern(kind, block):
    model = {"mha": lambda: tiny_model(dtype=torch.float64),
             "gqa": lambda: tiny_model(n_key_value_heads=2, dtype=torch.float64),
             "gemma3_like": gemma3_like}[kind]()
    toks = tokens(batch=2, n=16, seed=11)
    lengths = torch.tensor([16, 11])  # row 1 right-padded after 11 tokens
    cache = materialised_run(model, toks)
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer]
        s = pattern_stats(cache["rot_q", layer], cache["rot_k", layer], Scoring.of(model, layer), lengths=lengths, block=block)
        assert (s.column_mean() - column_mean(pattern, 0, lengths)).abs().max() < ATOL
        assert torch.equal(s.top1, pattern.argmax(-1))
        assert (s.first - pattern[..., 0]).abs().max() < ATOL
        ref_colsum = (pattern * (torch.arange(16)[None, :] < lengths[:, None])[:, None, :, None]).sum(-2)
        assert (s.colsum - ref_colsum).abs().max() < ATOL
    assert Scoring.of(model, 0).window == (4 if kind == "gemma3_like" else None)


def test_equal_to_the_materialised_pattern_left_padded():
    """The cache's padding mask as ``key_mask`` (batched decoding's left padding)."""
    model = tiny_model(n_key_value_heads=2, dtype=torch.float64)
    toks = tokens(batch=2, n=12, seed=5)
    mask = torch.ones_like(toks)
    mask[0, :5] = 0
    cache = materialised_run(model, toks, past_kv_cache=new_cache(model, 2), attention_mask=mask)
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer]
        s = pattern_stats(cache["rot_q", layer], cache["rot_k", layer], Scoring.of(model, layer), key_mask=mask.bool())
        assert (s.colsum - pattern.sum(-2)).abs().max() < ATOL  # pad queries' rows are 0 in both
        assert torch.equal(s.top1[1], pattern[1].argmax(-1)) and torch.equal(s.top1[0, :, 5:], pattern[0, :, 5:].argmax(-1))
        assert (s.top1[0, :, :5] == -1).all()
        assert (s.first - pattern[..., 0]).abs().max() < ATOL


def test_blocks_hold_at_most_block_queries():
    q = torch.randn(1, 10, 4, 8)
    k = torch.randn(1, 10, 2, 8)
    shapes = [(start, tuple(p.shape)) for start, p, _ in pattern_blocks(q, k, Scoring(8**0.5), block=4)]
    assert shapes == [(0, (1, 4, 4, 10)), (4, (1, 4, 4, 10)), (8, (1, 4, 2, 10))]


def test_qk_reducer_under_generate_keeps_the_fused_path():
    """The retrieval score's input — the top-1 key of the last query at every forward pass,
    over the whole KV cache — from q and k (fused path on) equals the argmax of the
    materialised hook_pattern (every layer materialised)."""
    model = tiny_model(n_layers=3, n_key_value_heads=2, dtype=torch.float64)
    state = fa.install(model, True)
    prompt = tokens(batch=1, n=14, seed=8)[0].tolist()
    from_qk, from_pattern = [], []

    def on_qk(layer, q, k, batch):
        from_qk.append(pattern_stats(q[:, -1:], k, Scoring.of(model, layer), want=("top1",)).top1[0, :, 0])

    def on_pattern(pattern, site, batch):
        from_pattern.append(pattern[0, :, -1].argmax(-1))

    before = dict(state.calls)
    a = generate(model, prompt, max_new_tokens=6, strategy=Greedy(), stop_at_eos=False,
                 reducers=QKReducer(model, on_qk).reducers())
    assert state.calls["fused"] - before["fused"] == 6 * 3 and state.calls["materialised"] == before["materialised"]
    b = generate(model, prompt, max_new_tokens=6, strategy=Greedy(), stop_at_eos=False,
                 reducers={f"blocks.{layer}.attn.hook_pattern": on_pattern for layer in range(3)})
    assert a.new_tokens == b.new_tokens
    assert len(from_qk) == len(from_pattern) == 18
    assert all(torch.equal(x, y) for x, y in zip(from_qk, from_pattern))
    assert len({int(t.max()) for t in from_qk}) > 1  # the top-1 moves over the steps


def test_bad_input_and_out_of_memory(monkeypatch):
    q, k = torch.randn(1, 5, 4, 8), torch.randn(1, 5, 3, 8)
    with pytest.raises(InputError, match="cannot share"):
        pattern_stats(q, k, Scoring(1.0))
    with pytest.raises(InputError, match="Unknown statistic"):
        pattern_stats(q, k[:, :, :2], Scoring(1.0), want=("mean",))
    with pytest.raises(InputError, match="block"):
        pattern_stats(q, k[:, :, :2], Scoring(1.0), block=0)
    with pytest.raises(InputError, match="colsum"):
        PatternStats().column_mean()
    with pytest.raises(InputError, match="rotary"):
        QKReducer(tiny_model(rotary=False), lambda *a: None)

    def oom(*a, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch, "softmax", oom)
    with pytest.raises(fa.AttentionMemoryError, match=r"lower block \(now 3\)"):
        pattern_stats(q, k[:, :, :2], Scoring(1.0), block=3)


def test_column_mean_reducers_equal_the_pattern_over_ragged_batches():
    """The sinks/ACT reducer: texts of different lengths in one right-padded batch; each
    layer's α equals probes.act.column_mean of the materialised pattern with the batch's
    lengths, and every attention call stays fused."""
    from mechscope.probes import capture
    from mechscope.probes.attention_reductions import column_mean_reducers

    model = tiny_model(n_key_value_heads=2, dtype=torch.float64)
    state = fa.install(model, True)
    g = torch.Generator().manual_seed(4)
    seqs = [torch.randint(0, 50, (n,), generator=g) for n in (11, 7, 3, 11)]
    got, ref = {}, {}

    def on_alpha(layer, alpha, batch):
        for r, i in enumerate(batch.index):
            got[(i, layer)] = alpha[r, :, : int(batch.lengths[r])]

    before = dict(state.calls)
    capture.run(model, seqs, reducers=column_mean_reducers(model, on_alpha, block=4), batch_size=3)
    assert state.calls["materialised"] == before["materialised"]

    def on_pattern(pattern, site, batch):
        a = column_mean(pattern, 0, batch.lengths)
        for r, i in enumerate(batch.index):
            ref[(i, site.layer)] = a[r, :, : int(batch.lengths[r])]

    with fa.materialised(model):
        capture.run(model, seqs, reducers={f"blocks.{l}.attn.hook_pattern": on_pattern for l in range(2)}, batch_size=3)
    assert got.keys() == ref.keys() and len(got) == 8
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-9, atol=1e-12)
