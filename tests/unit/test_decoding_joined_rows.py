"""A side view of the generation (CAD's with-context view, contrastive decoding's masked-heads
amateur) as row 1 of the generation's own forward pass: one batched
one-token pass per step, each row equal to its own unpadded run (tiny float64 models)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import mechscope.probes.decoding as decoding
from mechscope.probes.cad import CAD
from mechscope.probes.contrastive_decoding import ContrastiveDecoding
from mechscope.probes.decoding import _two_row_cache, generate, new_cache
from mechscope.probes.interventions import HeadMask, applied
from tests.tiny import tiny_model

PROMPT = [3, 17, 8, 42, 5, 11]
N_NEW = 7
HEADS = ((0, 1), (1, 3))


def _f64(model):
    model = model.to(torch.float64)
    model.cfg.dtype = torch.float64
    return model


MODELS = {
    "rotary": dict(n_layers=2, seed=1),
    "gqa": dict(n_layers=2, n_heads=4, n_key_value_heads=2, seed=2),
    "partial_rotary_pairs": dict(n_layers=2, rotary_dim=4, adjacent_pairs=True, seed=3),
    "learned_positions": dict(n_layers=2, rotary=False, seed=4),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return _f64(tiny_model(d_vocab=50, n_ctx=64, **MODELS[request.param]))


def _logits(model, ids, interventions=()):
    with applied(model, interventions), torch.no_grad():
        return model(torch.tensor([ids]))[0, -1].double()


def _prefilled(model, ids, interventions=()):
    cache = new_cache(model, 1)
    with applied(model, interventions), torch.no_grad():
        model(torch.tensor([ids]), past_kv_cache=cache, attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return cache


@pytest.mark.parametrize("lengths", [(4, 11), (11, 4), (6, 6)])
def test_left_padded_rows_equal_their_unpadded_runs(model, lengths):
    """Two caches of different lengths merged into one left-padded 2-row cache: each row's
    logits over several one-token steps equal an uncached pass over that row alone."""
    g = torch.Generator().manual_seed(sum(lengths))
    rows = [torch.randint(0, 50, (n,), generator=g).tolist() for n in lengths]
    cache = _two_row_cache(model, _prefilled(model, rows[0]), _prefilled(model, rows[1]))
    for step in range(4):
        new = [[(7 * step + 3) % 50], [(11 * step + 5) % 50]]
        with torch.no_grad():
            got = model(torch.tensor(new), past_kv_cache=cache, attention_mask=torch.ones(2, 1, dtype=torch.long))
        for b in range(2):
            rows[b] += new[b]
            want = _logits(model, rows[b])
            torch.testing.assert_close(got[b, -1].double(), want, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- strategies

_SCORES: list[torch.Tensor] = []


@dataclass(frozen=True)
class _RecordCAD(CAD):
    def select(self, state):
        z = self.scores(state)
        _SCORES.append(z.double().cpu())
        return int(torch.argmax(z))


@dataclass(frozen=True)
class _RecordCD(ContrastiveDecoding):
    def select(self, state):
        z = self.scores(state)
        _SCORES.append(z.double().cpu())
        return int(torch.argmax(z))


def _run(model, prompt, strategy, **kw):
    _SCORES.clear()
    gen = generate(model, prompt, N_NEW, strategy, stop_at_eos=False, **kw)
    return gen.new_tokens, list(_SCORES)


def _close(got, want):
    """float32 scores (the strategies read float32 logits) vs float64 references."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        finite = torch.isfinite(w)
        assert torch.equal(torch.isfinite(g), finite)
        scale = float(w[finite].abs().max())
        torch.testing.assert_close(g[finite], w[finite], rtol=4 * torch.finfo(torch.float32).eps, atol=4e-6 * scale)


class _Counter:
    """Counts the forward passes the decoding loop makes (prefills and one-token steps)."""

    def __init__(self, monkeypatch):
        self.shapes: list[tuple[int, int]] = []
        real = decoding.last_logits

        def counted(model, ids, **kw):
            self.shapes.append(tuple(ids.shape))
            return real(model, ids, **kw)

        monkeypatch.setattr(decoding, "last_logits", counted)

    def steps(self):
        return [s for s in self.shapes if s[1] == 1]


def _bos_tokenizer():
    class Tok:
        bos_token_id = 1
        eos_token_id = None
        padding_side = "right"

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) % 50 for c in text]}

        def decode(self, ids, **kw):
            return "".join(chr(65 + int(i) % 26) for i in ids)

    return Tok()


@pytest.mark.parametrize("context", [[21, 9], [21, 9, 33, 2, 40, 7, 14, 30, 12, 6, 19, 44]])
@pytest.mark.parametrize("bos", [False, True])
def test_cad_one_batched_pass_per_step_matches_the_formula(model, context, bos, monkeypatch):
    """CAD with contexts shorter and longer than the query, with and without a BOS token
    (the context goes after it): the same tokens and scores as the direct uncached formula,
    and as the two-pass path (forced here by a reducer), with ONE 2-row pass per step."""
    alpha = 1.0
    prompt = ([1] if bos else []) + PROMPT
    with_ctx = (prompt[:1] + context + prompt[1:]) if bos else context + prompt
    if bos:
        model.tokenizer = _bos_tokenizer()
    try:
        count = _Counter(monkeypatch)
        tokens, scores = _run(model, prompt, _RecordCAD(context=tuple(context), alpha=alpha))
        steps = count.steps()
        gen: list[int] = []
        want = []
        for _ in range(N_NEW):
            z = (1 + alpha) * _logits(model, with_ctx + gen) - alpha * _logits(model, prompt + gen)
            want.append(z)
            gen.append(int(z.argmax()))
        assert list(tokens) == gen
        _close(scores, want)
        assert steps == [(2, 1)] * (N_NEW - 1)  # one batched pass per step, no side pass
        two_pass, two_scores = _run(model, prompt, _RecordCAD(context=tuple(context), alpha=alpha),
                                    reducers={"blocks.0.hook_resid_pre": lambda t, s, b: None})
        assert two_pass == tokens
        _close(two_scores, want)
    finally:
        model.tokenizer = None


def test_cad_falls_back_to_two_passes_where_rows_cannot_be_joined(model, monkeypatch):
    context = (21, 9, 33)
    strat = _RecordCAD(context=context, alpha=0.5)
    for kw in ({"kv_policy": None}, {"reducers": {"blocks.0.hook_resid_pre": lambda t, s, b: None}}):
        count = _Counter(monkeypatch)
        tokens, _ = _run(model, PROMPT, strat, **kw)
        gen: list[int] = []
        for _ in range(N_NEW):
            z = 1.5 * _logits(model, list(context) + PROMPT + gen) - 0.5 * _logits(model, PROMPT + gen)
            gen.append(int(z.argmax()))
        assert list(tokens) == gen
        assert all(s[0] == 1 for s in count.shapes)  # never a 2-row pass


def test_cd_masked_heads_one_batched_pass_per_step(model, monkeypatch):
    """Masked-heads amateur as row 1 (masks on row 1 only): the direct formula's tokens and
    scores, one 2-row pass per step."""
    masks = [HeadMask(l, h) for l, h in HEADS]
    count = _Counter(monkeypatch)
    tokens, scores = _run(model, PROMPT, _RecordCD(amateur_heads=HEADS, beta=0.05))
    gen: list[int] = []
    want = []
    for _ in range(N_NEW):
        e = _logits(model, PROMPT + gen).log_softmax(-1)
        a = _logits(model, PROMPT + gen, masks).log_softmax(-1)
        z = torch.where(e >= e.max() + torch.log(torch.tensor(0.05, dtype=e.dtype)), e - a,
                        torch.full_like(e, float("-inf")))
        want.append(z)
        gen.append(int(z.argmax()))
    assert list(tokens) == gen
    _close(scores, want)
    assert count.steps() == [(2, 1)] * (N_NEW - 1)


@dataclass(frozen=True)
class _TwiceCAD(CAD):
    def select(self, state):
        first = self.scores(state)
        assert torch.equal(self.scores(state), first)  # a second read at the same step: the same view
        return int(torch.argmax(first))


def test_cad_view_can_be_read_twice_per_step(model):
    context = (21, 9, 33)
    got = generate(model, PROMPT, N_NEW, _TwiceCAD(context=context, alpha=0.5), stop_at_eos=False).new_tokens
    assert got == generate(model, PROMPT, N_NEW, CAD(context=context, alpha=0.5), stop_at_eos=False).new_tokens
