"""KV-cache policies (StreamingLLM sinks + window, window-only) on tiny rotary models.

The exact semantics under test: while the text fits, a bounded cache equals full attention;
once it overflows, the next token's logits equal a fresh forward pass over [kept tokens +
new token] with positions re-assigned 0..len-1 (Xiao et al. 2023). That equality is exact
for a one-layer model only: in deeper models the cached keys/values of layer >= 2 were
computed when each token was fed (with the context it had then), which a fresh pass over
the kept tokens does not reproduce. So eviction + re-assigned rotary positions are checked
on one-layer models, and the deeper model is checked while the text fits.
"""

import pytest
import torch

from mechscope.probes.decoding import KV_POLICIES, generate
from mechscope.probes.errors import InputError
from mechscope.probes.kv_policies import SinkWindow, WindowOnly, stream_logprobs
from tests.tiny import tiny_model


def _full_logprobs(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].float().log_softmax(-1)


@pytest.fixture(scope="module")
def rot():
    return tiny_model(n_layers=2, n_heads=4, n_key_value_heads=2, d_vocab=50, n_ctx=64, seed=3)


@pytest.fixture(scope="module")
def rot1():
    return tiny_model(n_layers=1, n_heads=4, n_key_value_heads=2, d_vocab=50, n_ctx=64, seed=5)


def _ids(n, seed=0, vocab=50):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


def test_policies_registered():
    assert KV_POLICIES["sink_window"] is SinkWindow
    assert KV_POLICIES["window"] is WindowOnly


def test_keep_index():
    p = SinkWindow(2, 3)
    assert p.keep_index(5) is None
    assert p.keep_index(7).tolist() == [0, 1, 4, 5, 6]
    assert WindowOnly(3).keep_index(7).tolist() == [4, 5, 6]


def test_fits_in_cache_equals_full_forward(rot):
    ids = _ids(20, 1)
    full = _full_logprobs(rot, ids)
    ref = full[:-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    lp = stream_logprobs(rot, ids, [SinkWindow(4, 20), WindowOnly(24)])
    torch.testing.assert_close(lp[0], ref, atol=1e-5, rtol=1e-5)  # float32 log-probs of magnitude ~4
    torch.testing.assert_close(lp[1], ref, atol=1e-5, rtol=1e-5)


def test_generate_with_sink_window_equals_recompute_while_it_fits(rot):
    prompt = _ids(5, 2)
    a = generate(rot, prompt, max_new_tokens=10, kv_policy=SinkWindow(2, 18))
    b = generate(rot, prompt, max_new_tokens=10, kv_policy=None)
    assert a.new_tokens == b.new_tokens
    torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy", [SinkWindow(2, 6), SinkWindow(0, 8), WindowOnly(8), SinkWindow(3, 5)])
def test_overflow_equals_forward_on_kept_tokens_with_reassigned_positions(rot1, policy):
    rot = rot1
    ids = _ids(30, 4)
    lp = stream_logprobs(rot, ids, [policy])[0]
    cap = policy.max_cache_len
    s = getattr(policy, "n_sink", 0)
    w = cap - s
    for t in range(cap, len(ids) - 1):
        ctx = ids[:s] + ids[t - w : t + 1]  # sinks + last W before t, then t itself
        assert len(ctx) == cap + 1
        ref = _full_logprobs(rot, ctx)[-1, ids[t + 1]]
        assert abs(float(lp[t]) - float(ref)) < 1e-4, t
    # and differs from full attention once tokens are evicted (the test could fail)
    full = _full_logprobs(rot, ids)[:-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert (lp[cap + 1 :] - full[cap + 1 :]).abs().max() > 1e-3


def test_generate_past_the_window_keeps_cache_bounded_and_matches_reference(rot1):
    rot = rot1
    prompt, S, W = _ids(3, 5), 2, 6
    gen = generate(rot, prompt, max_new_tokens=30, kv_policy=SinkWindow(S, W), stop_at_eos=False)
    assert len(gen.new_tokens) == 30
    assert gen.max_cache_len_seen == S + W + 1
    seq = list(prompt) + list(gen.new_tokens)
    for step in range(30):
        t = len(prompt) + step - 1  # position of the token fed last before choosing this one
        ctx = seq[: t + 1] if t + 1 <= S + W + 1 else seq[:S] + seq[t - W : t + 1]
        ref = _full_logprobs(rot, ctx)[-1]
        assert int(ref.argmax()) == gen.new_tokens[step]
        assert abs(float(ref[gen.new_tokens[step]]) - gen.logprobs[step]) < 1e-4


def test_prompt_longer_than_cache_is_fed_token_by_token(rot1):
    rot = rot1
    prompt, S, W = _ids(20, 6), 2, 5
    gen = generate(rot, prompt, max_new_tokens=1, kv_policy=SinkWindow(S, W))
    ctx = prompt[:S] + prompt[-(W + 1):]
    assert int(_full_logprobs(rot, ctx)[-1].argmax()) == gen.new_tokens[0]


def test_bad_input(rot):
    with pytest.raises(InputError, match="S = 5"):
        SinkWindow(5, 4)
    with pytest.raises(InputError, match="n_ctx"):
        stream_logprobs(rot, _ids(10), [SinkWindow(4, 60)])
    with pytest.raises(InputError, match="n_ctx"):
        stream_logprobs(rot, _ids(10), [WindowOnly(64)])
    with pytest.raises(InputError, match="same cache size"):
        stream_logprobs(rot, _ids(10), [WindowOnly(8), SinkWindow(2, 4)])
    with pytest.raises(InputError):
        WindowOnly(0)
    with pytest.raises(InputError, match="at least 2"):
        stream_logprobs(rot, _ids(1), [WindowOnly(8)])


def test_batched_streaming_matches_generate_on_a_deeper_model(rot):
    """stream_logprobs (per-row cache gather, policies batched) and generate (policy.trim
    through probes.decoding) implement the same policy: same log-probs past the window."""
    prompt = _ids(3, 7)
    for policy in (SinkWindow(2, 5), WindowOnly(7)):
        gen = generate(rot, prompt, max_new_tokens=25, kv_policy=policy, stop_at_eos=False)
        seq = list(prompt) + list(gen.new_tokens)
        lp = stream_logprobs(rot, seq, [policy])[0]
        got = lp[len(prompt) - 1 :]
        torch.testing.assert_close(got, torch.tensor(gen.logprobs), atol=1e-5, rtol=1e-5)  # float32


def test_streaming_perplexity_small(rot):
    """The analysis on a tiny model: (a) is the full pass, (b)/(c) the cached policies,
    (d) a fresh pass over the previous C+1 tokens; all equal before the cache fills."""
    from mechscope.analyses.streaming import streaming_perplexity

    ids = _ids(40, 9)
    S, W = 2, 8
    res = streaming_perplexity(rot, ids, n_sink=S, window=W, recompute_every=3)
    cap = S + W
    full = -_full_logprobs(rot, ids)[:-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()
    import numpy as np

    np.testing.assert_allclose(res.nll[0], full, atol=1e-4)
    for row in (1, 2, 3):
        np.testing.assert_allclose(res.nll[row, :cap], full[:cap], atol=1e-4)
    lp = stream_logprobs(rot, ids, [WindowOnly(cap), SinkWindow(S, W)])
    np.testing.assert_allclose(res.nll[1], -lp[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(res.nll[2], -lp[1].numpy(), atol=1e-5)
    for t in range(cap, len(ids) - 1):
        if (t - cap) % 3 == 0:
            ref = -_full_logprobs(rot, ids[t - cap : t + 1])[-1, ids[t + 1]]
            assert abs(res.nll[3, t] - float(ref)) < 1e-4
        else:
            assert np.isnan(res.nll[3, t])
    s = res.summary().set_index("policy")
    assert s.loc["recompute", "n_past_cache"] == len(range(cap, len(ids) - 1, 3))
    assert s.loc["full", "n_past_cache"] == len(ids) - 1 - cap
    assert "streaming_ppl" in res.figures()


def test_streaming_bad_input(rot):
    from mechscope.analyses.streaming import streaming_perplexity

    with pytest.raises(InputError, match="longer than the cache"):
        streaming_perplexity(rot, _ids(10), n_sink=2, window=8)
    with pytest.raises(InputError, match="n_ctx"):
        streaming_perplexity(rot, _ids(70), n_sink=4, window=60)
    with pytest.raises(InputError, match="S = 6"):
        streaming_perplexity(rot, _ids(40), n_sink=6, window=4)
