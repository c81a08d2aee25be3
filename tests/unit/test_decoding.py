"""decoding.generate: KV cache changes nothing (with or without interventions), sampling
is seeded and truncates as documented, streaming, EOS, length checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope.probes.decoding import Greedy, Sample, generate, score_continuation
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import AttentionEdit, HeadMask, NeuronClamp, SteeringVector
from tests.tiny import tiny_model

PROMPT = [3, 17, 8, 42, 5, 11, 29, 0, 13, 7]


class Recorder:
    """Greedy, keeping each step's logits so cached and uncached runs can be compared."""

    name = "recorder"

    def __init__(self):
        self.logits: list[torch.Tensor] = []

    def select(self, state) -> int:
        self.logits.append(state.logits.clone())
        return int(state.logits.argmax())


class FakeTokenizer:
    """Just enough of a tokenizer to give a tokenizer-less tiny model an EOS id."""

    padding_side = "right"
    bos_token_id = None
    pad_token_id = None

    def __init__(self, eos):
        self.eos_token_id = eos

    def decode(self, ids):
        return "".join(f"<{int(i)}>" for i in ids)


@pytest.fixture(scope="module")
def gqa():
    return tiny_model(n_layers=3, n_heads=4, n_key_value_heads=2, d_vocab=50, n_ctx=64)


@pytest.fixture(scope="module")
def gqa64():
    """The same model in float64: cached and uncached paths then agree to rounding of the
    float32 step logits, so a 1e-5 tolerance tests the algorithm, not float32 noise (the
    tiny model's large weights amplify float32 rounding to ~1e-4)."""
    model = tiny_model(n_layers=3, n_heads=4, n_key_value_heads=2, d_vocab=50, n_ctx=64)
    model = model.to(torch.float64)
    model.cfg.dtype = torch.float64
    return model


def _interventions(model):
    return [
        HeadMask(0, 1, "uniform"),
        HeadMask(2, 3, "zero"),
        NeuronClamp(1, 9, value=4.0),
        SteeringVector.from_tensor(1, torch.linspace(-0.5, 0.5, model.cfg.d_model)),
        AttentionEdit(2, lambda p, o: 0.5 * p + 0.5 * torch.nn.functional.one_hot(
            torch.zeros(p.shape[:-1], dtype=torch.long), p.shape[-1]).to(p.dtype), heads=(0,)),
    ]


def _run(model, kv, interventions=(), n=12, prompt=PROMPT):
    rec = Recorder()
    gen = generate(model, prompt, n, strategy=rec, interventions=interventions, kv_policy=kv)
    return gen, rec.logits


def test_greedy_same_with_and_without_cache(gqa, gqa64):
    g_cache, l_cache = _run(gqa64, "full", n=20)
    g_plain, l_plain = _run(gqa64, None, n=20)
    assert g_cache.new_tokens == g_plain.new_tokens and len(g_cache.new_tokens) == 20
    assert g_cache.kv_policy == "full" and g_plain.kv_policy == "none"
    assert g_cache.max_cache_len_seen == len(PROMPT) + 19 and g_plain.max_cache_len_seen == 0
    for a, b in zip(l_cache, l_plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    f32 = generate(gqa, PROMPT, 20, strategy="greedy").new_tokens  # float32, as used
    assert f32 == generate(gqa, PROMPT, 20, kv_policy=None).new_tokens
    assert generate(gqa, PROMPT, 20, strategy=Greedy()).new_tokens == f32


def test_interventions_same_logits_with_and_without_cache(gqa, gqa64):
    ivs = _interventions(gqa64)
    g_cache, l_cache = _run(gqa64, "full", ivs)
    g_plain, l_plain = _run(gqa64, None, ivs)
    _, l_base = _run(gqa64, "full")
    assert g_cache.new_tokens == g_plain.new_tokens
    for a, b in zip(l_cache, l_plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert _run(gqa, "full", ivs)[0].new_tokens == _run(gqa, None, ivs)[0].new_tokens  # float32
    assert (l_cache[0] - l_base[0]).abs().max() > 1e-2  # the interventions do change the logits
    assert g_cache.interventions == tuple(iv.describe() for iv in ivs)


def test_logprobs_match_teacher_forced_scoring(gqa):
    ivs = [NeuronClamp(1, 9, value=4.0)]
    gen = generate(gqa, PROMPT, 8, interventions=ivs)
    scored = score_continuation(gqa, PROMPT, gen.new_tokens, interventions=ivs)
    torch.testing.assert_close(torch.tensor(gen.logprobs), scored, rtol=1e-5, atol=1e-5)


def test_sampling_seeded_and_truncation(gqa):
    a = generate(gqa, PROMPT, 24, strategy=Sample(temperature=1.5, seed=1)).new_tokens
    b = generate(gqa, PROMPT, 24, strategy=Sample(temperature=1.5, seed=1)).new_tokens
    c = generate(gqa, PROMPT, 24, strategy=Sample(temperature=1.5, seed=2)).new_tokens
    greedy = generate(gqa, PROMPT, 24).new_tokens
    assert a == b and a != c and a != greedy
    assert generate(gqa, PROMPT, 24, strategy=Sample(temperature=1.5, top_k=1, seed=3)).new_tokens == greedy
    assert generate(gqa, PROMPT, 24, strategy=Sample(temperature=1.5, top_p=1e-6, seed=4)).new_tokens == greedy


def test_top_k_and_top_p_restrict_support():
    class State:
        generator = torch.Generator().manual_seed(0)

    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    st = State()
    st.logits = logits
    k2 = {Sample(top_k=2, seed=0).select(st) for _ in range(200)}
    assert k2 == {0, 1}
    # top_p: p = softmax(logits); keep the smallest prefix with mass ≥ 0.8 → first two tokens
    p = logits.softmax(-1)
    assert p[0] < 0.8 <= p[0] + p[1]
    pp = {Sample(top_p=0.8, seed=0).select(st) for _ in range(200)}
    assert pp == {0, 1}


def test_sample_rejects_bad_parameters():
    for kwargs in ({"temperature": 0}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(InputError):
            Sample(**kwargs)


def test_on_token_streams_every_token_in_order(gqa):
    seen = []
    gen = generate(gqa, PROMPT, 10, on_token=lambda i, s: seen.append((i, s)))
    assert [i for i, _ in seen] == list(gen.new_tokens) and len(seen) == 10
    assert all(s == f"<{i}>" for i, s in seen)  # tokenizer-less models label ids as <id>


def test_eos_stops_generation():
    model = tiny_model(n_layers=2, seed=3)
    free = generate(model, PROMPT, 12).new_tokens
    eos = free[4]
    stop = free.index(eos)  # the first time the chosen EOS appears
    model.tokenizer = FakeTokenizer(eos)
    streamed = []
    gen = generate(model, PROMPT, 12, on_token=lambda i, s: streamed.append(i))
    assert gen.new_tokens == free[: stop + 1] and gen.new_tokens[-1] == eos
    assert streamed == list(gen.new_tokens)
    assert generate(model, PROMPT, 12, stop_at_eos=False).new_tokens == free


def test_length_and_input_checks(gqa):
    with pytest.raises(InputError, match="n_ctx"):
        generate(gqa, list(range(40)) + list(range(20)), 10)
    generate(gqa, list(range(40)) + list(range(14)), 10)  # exactly n_ctx is fine
    with pytest.raises(InputError):
        generate(gqa, PROMPT, -1)
    with pytest.raises(InputError):
        generate(gqa, [], 3)
    with pytest.raises(InputError):
        generate(gqa, PROMPT, 3, strategy="telepathy")
    with pytest.raises(InputError):
        generate(gqa, PROMPT, 3, kv_policy="bottomless")
    assert generate(gqa, PROMPT, 0).new_tokens == ()


def test_generate_rows_equals_separate_generations(tiny64):
    """Each row of one batched decode equals its own generate() call (float64: exact routes)."""
    from mechscope.probes.decoding import generate_rows
    from mechscope.probes.interventions import HeadMask, NeuronClamp

    prompt = [3, 14, 15, 9, 2, 6]
    variants = [(), (NeuronClamp(0, 5, value=30.0),), (HeadMask(1, 2, "uniform"), NeuronClamp(1, 7, scale=-3.0))]
    for strategy in ("greedy", Sample(temperature=0.9, top_k=20, seed=4)):
        rows = generate_rows(tiny64, prompt, variants, 9, strategy)
        for ivs, got in zip(variants, rows):
            alone = generate(tiny64, prompt, 9, strategy, ivs)
            assert got.new_tokens == alone.new_tokens
            np.testing.assert_allclose(got.logprobs, alone.logprobs, rtol=1e-9, atol=1e-9)
    assert len({r.new_tokens for r in generate_rows(tiny64, prompt, variants, 9)}) > 1  # the variants differ
    assert all(not hp._forward_hooks for hp in tiny64.hook_dict.values())


def test_generate_reducers_see_every_step(tiny64):
    """Reducers run at the prefill and every decoding step, with the query's absolute position."""
    from mechscope.probes import hooknames

    prompt = [3, 14, 15, 9, 2]
    name = hooknames.name("pattern", 1)
    seen = []

    def reducer(pattern, site, batch):
        assert site.layer == 1 and site.point == "pattern"
        seen.append((batch.step, batch.q_offset, tuple(pattern.shape), pattern[0, :, -1].clone()))

    gen = generate(tiny64, prompt, 4, reducers={name: reducer})
    assert [s[0] for s in seen] == [None, 0, 1, 2]
    assert [s[1] for s in seen] == [0, 5, 6, 7]
    assert seen[0][2] == (1, 4, 5, 5) and seen[-1][2] == (1, 4, 1, 8)
    # the last query row of each step equals a full forward over the text so far
    full = prompt + list(gen.new_tokens)
    _, cache = tiny64.run_with_cache(torch.tensor([full[:-1]]), names_filter=[name])
    for step, offset, _, last_row in seen[1:]:
        q = offset
        np.testing.assert_allclose(last_row.numpy(), cache[name][0, :, q, : q + 1].numpy(), rtol=1e-9, atol=1e-12)

