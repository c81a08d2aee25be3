"""analyses.next_token: top-k next tokens and single-head attention patterns."""

import numpy as np
import pandas as pd
import pytest
import torch

from mechscope.analyses.next_token import AttentionPatternResult, NextTokenResult, attention_pattern, next_token
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import NeuronClamp
from mechscope.probes.results import Result


def test_top_k_known_distribution(tiny):
    """W_U = 0 makes the logits equal b_U at every position: the top-k is known in advance."""
    b = torch.linspace(-3.0, 3.0, tiny.cfg.d_vocab)[torch.randperm(tiny.cfg.d_vocab, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        tiny.W_U.zero_()
        tiny.b_U.copy_(b)
    r = next_token(tiny, [3, 1, 4, 1, 5], k=7)
    expect = torch.softmax(b.double(), -1)
    order = torch.argsort(expect, descending=True)[:7]
    assert r.top_ids.tolist() == order.tolist()
    np.testing.assert_allclose(r.top_probs, expect[order].numpy(), rtol=1e-5)
    np.testing.assert_allclose(r.top_logprobs, np.log(expect[order].numpy()), atol=1e-5)
    np.testing.assert_allclose(r.entropy, float(-(expect * expect.log()).sum()), rtol=1e-5)
    assert r.prompt_tokens == ["<3>", "<1>", "<4>", "<1>", "<5>"]


def test_top_k_matches_plain_forward_and_interventions(tiny):
    ids = [5, 9, 2, 7, 7, 1]
    r = next_token(tiny, ids, k=5)
    with torch.no_grad():
        ref = tiny(torch.tensor([ids]))[0, -1].log_softmax(-1)
    top = torch.topk(ref, 5)
    assert r.top_ids.tolist() == top.indices.tolist()
    np.testing.assert_allclose(r.top_logprobs, top.values.numpy(), atol=1e-5)
    # an intervention changes the distribution exactly as the same hook does by hand
    clamp = NeuronClamp(1, 3, value=25.0)

    def by_hand(act, hook):
        act[..., 3] = 25.0
        return act

    r2 = next_token(tiny, ids, k=5, interventions=[clamp])
    with torch.no_grad():
        ref2 = tiny.run_with_hooks(torch.tensor([ids]), fwd_hooks=[("blocks.1.mlp.hook_post", by_hand)])[0, -1]
    top2 = torch.topk(ref2.log_softmax(-1), 5)
    assert r2.top_ids.tolist() == top2.indices.tolist()
    np.testing.assert_allclose(r2.top_logprobs, top2.values.numpy(), atol=1e-5)
    assert r2.params.interventions == (clamp,)
    assert not np.allclose(r.top_logprobs, r2.top_logprobs)


def test_k_is_clipped_and_checked(tiny):
    assert len(next_token(tiny, [1, 2], k=10_000).top_ids) == tiny.cfg.d_vocab
    with pytest.raises(InputError):
        next_token(tiny, [1, 2], k=0)
    with pytest.raises(InputError):
        next_token(tiny, [], k=3)


def test_attention_pattern_uniform_when_queries_are_zero(tiny):
    """W_Q = 0 in layer 1 makes every score 0, so head h attends uniformly: A[q, k] = 1/(q+1)."""
    with torch.no_grad():
        tiny.blocks[1].attn.W_Q.zero_()
        tiny.blocks[1].attn.b_Q.zero_()
    r = attention_pattern(tiny, [4, 8, 15, 16, 23, 42], layer=1, head=2)
    t = 6
    expect = np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]
    np.testing.assert_allclose(r.pattern, expect, atol=1e-6)
    frame = r.to_frame()
    assert len(frame) == t * (t + 1) // 2
    np.testing.assert_allclose(frame.groupby("query_pos")["weight"].sum(), 1.0, atol=1e-6)


def test_attention_pattern_matches_run_with_cache(tiny):
    ids = [3, 14, 15, 9, 26, 5, 35]
    r = attention_pattern(tiny, ids, layer=0, head=3)
    _, cache = tiny.run_with_cache(torch.tensor([ids]))
    np.testing.assert_allclose(r.pattern, cache["blocks.0.attn.hook_pattern"][0, 3].numpy(), atol=1e-6)
    assert (r.layer, r.head) == (0, 3)
    with pytest.raises(InputError, match="layer 2 is out of range"):
        attention_pattern(tiny, ids, layer=2, head=0)
    with pytest.raises(InputError, match="head 4 is out of range"):
        attention_pattern(tiny, ids, layer=0, head=4)


def test_results_round_trip(tiny, tmp_path):
    r = next_token(tiny, [1, 2, 3], k=4)
    r.save(tmp_path / "nt", html=True)
    back = Result.load(tmp_path / "nt")
    assert isinstance(back, NextTokenResult)
    assert back.top_tokens == r.top_tokens and np.array_equal(back.top_ids, r.top_ids)
    assert (tmp_path / "nt" / "top_k.html").is_file()
    a = attention_pattern(tiny, [1, 2, 3], 1, 1)
    a.save(tmp_path / "attn")
    back = Result.load(tmp_path / "attn")
    assert isinstance(back, AttentionPatternResult) and np.array_equal(back.pattern, a.pattern)
    assert set(a.figures()) == {"attention"}


def test_saved_results_rerun_to_equal_tables(tiny, tmp_path):
    """Params are saved as data (interventions included) and re-run to the same table."""
    clamp = NeuronClamp(1, 3, value=25.0)
    for r in (next_token(tiny, [5, 9, 2, 7], k=6, interventions=[clamp]), attention_pattern(tiny, [1, 2, 3, 4], 1, 2)):
        r.save(tmp_path / r.kind)
        back = Result.load(tmp_path / r.kind)
        assert back.params == r.params
        again = back.rerun(tiny)
        pd.testing.assert_frame_equal(again.to_frame(), r.to_frame())
    assert back.params.layer == 1 and back.params.head == 2



def _peak_rss_growth(fn) -> int:
    """Peak resident-memory growth (bytes) while ``fn`` runs, sampled every millisecond."""
    import os
    import threading
    import time

    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    base, peak, stop = rss(), [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    t = threading.Thread(target=watch)
    t.start()
    try:
        fn()
        peak[0] = max(peak[0], rss())
    finally:
        stop.set()
        t.join()
    return peak[0] - base


def test_only_the_last_position_is_unembedded():
    """The unembedding sees one position (not T), and a long prompt's peak memory does not
    grow by T × d_vocab logits: with a 50k vocabulary, 2,000 positions of float32 logits are
    400 MB; the growth stays under half of that (what remains is the attention scores and
    activations of one forward pass, about 100 MB here, sampled from the whole process'
    resident memory, to which other threads of a test worker can add)."""
    import gc

    from tests.tiny import tiny_model

    model = tiny_model(n_heads=1, d_head=32, d_vocab=50_000, n_ctx=2048)
    seen, plain = [], model.unembed.forward

    def spy(x):  # an instance attribute, not a module hook (a hook would force the full unembedding)
        seen.append(tuple(x.shape))
        return plain(x)

    model.unembed.forward = spy
    try:
        r = next_token(model, list(range(1, 2001)), k=3)
    finally:
        del model.unembed.forward
    assert seen == [(1, 1, model.cfg.d_model)]
    with torch.no_grad():
        ref = model(torch.arange(1, 2001)[None])[0, -1].log_softmax(-1)
    np.testing.assert_allclose(r.top_logprobs, torch.topk(ref, 3).values.numpy(), atol=1e-4)
    gc.collect()
    long_ = _peak_rss_growth(lambda: next_token(model, list(range(1, 2001)), k=3))
    assert long_ < 2000 * 50_000 * 4 / 2, long_
