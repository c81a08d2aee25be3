"""Context-aware decoding, contrastive decoding and DoLa against direct, uncached
implementations of their reference formulas on tiny float64 models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mechscope.probes.cad import CAD
from mechscope.probes.contrastive_decoding import ContrastiveDecoding, register_amateur
from mechscope.probes.decoding import STRATEGIES, generate, generate_rows
from mechscope.probes.dola import DoLa, candidate_layers
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import HeadMask, applied
from tests.tiny import tiny_model

PROMPT = [3, 17, 8, 42, 5, 11]
CONTEXT = [21, 9, 33, 2, 40, 7, 14]
N_NEW = 8


def _f64(model):
    model = model.to(torch.float64)
    model.cfg.dtype = torch.float64
    return model


@pytest.fixture(scope="module")
def model():
    return _f64(tiny_model(n_layers=6, d_vocab=50, n_ctx=64, seed=1))


def _logits(model, ids, interventions=()):
    with applied(model, interventions), torch.no_grad():
        return model(torch.tensor([ids]))[0, -1].double()


# --------------------------------------------------------------------------- CAD


def test_cad_alpha_zero_is_greedy_on_context_and_query(model):
    cad = generate(model, PROMPT, N_NEW, CAD(context=tuple(CONTEXT), alpha=0.0))
    greedy = generate(model, CONTEXT + PROMPT, N_NEW, "greedy")
    assert cad.new_tokens == greedy.new_tokens


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_cad_matches_direct_formula(model, alpha):
    got = generate(model, PROMPT, N_NEW, CAD(context=tuple(CONTEXT), alpha=alpha), kv_policy="full").new_tokens
    gen: list[int] = []
    for _ in range(N_NEW):
        z = (1 + alpha) * _logits(model, CONTEXT + PROMPT + gen) - alpha * _logits(model, PROMPT + gen)
        gen.append(int(z.argmax()))
    assert list(got) == gen
    plain = generate(model, CONTEXT + PROMPT, N_NEW, "greedy").new_tokens
    assert list(plain) != gen  # the contrast changes the text on this model (the test has teeth)


def test_cad_without_cache_equals_cached(model):
    s = CAD(context=tuple(CONTEXT), alpha=0.5)
    assert generate(model, PROMPT, N_NEW, s, kv_policy=None).new_tokens == generate(model, PROMPT, N_NEW, s).new_tokens


# --------------------------------------------------------------------------- CD


def test_cd_identical_amateur_beta_one_is_greedy(model):
    twin = _f64(tiny_model(n_layers=6, d_vocab=50, n_ctx=64, seed=1))
    register_amateur("twin", twin)
    try:
        cd = generate(model, PROMPT, N_NEW, ContrastiveDecoding(beta=1.0, amateur_model="twin"))
    finally:
        register_amateur("twin", None)
    assert cd.new_tokens == generate(model, PROMPT, N_NEW, "greedy").new_tokens


def _cd_direct(expert_lp: torch.Tensor, amateur_lp: torch.Tensor, beta: float) -> int:
    ok = expert_lp >= expert_lp.max() + math.log(beta)
    score = np.where(ok.numpy(), (expert_lp - amateur_lp).numpy(), -np.inf)
    return int(np.argmax(score))


def test_cd_other_model_matches_direct_formula(model):
    small = _f64(tiny_model(n_layers=2, d_vocab=50, n_ctx=64, seed=7))
    register_amateur("small", small)
    try:
        got = generate(model, PROMPT, N_NEW, ContrastiveDecoding(amateur_model="small")).new_tokens
    finally:
        register_amateur("small", None)
    gen: list[int] = []
    for _ in range(N_NEW):
        e = _logits(model, PROMPT + gen).log_softmax(-1)
        a = _logits(small, PROMPT + gen).log_softmax(-1)
        gen.append(_cd_direct(e, a, 0.1))
    assert list(got) == gen
    assert list(generate(model, PROMPT, N_NEW, "greedy").new_tokens) != gen


def test_cd_early_exit_matches_logit_lens(model):
    layer = 2
    got = generate(model, PROMPT, N_NEW, ContrastiveDecoding(amateur_layer=layer)).new_tokens
    gen: list[int] = []
    for _ in range(N_NEW):
        with torch.no_grad():
            logits, cache = model.run_with_cache(torch.tensor([PROMPT + gen]))
        resid = cache[f"blocks.{layer}.hook_resid_pre"][0, -1]
        rms = resid / torch.sqrt((resid ** 2).mean() + model.cfg.eps)  # the final RMSNorm, by hand
        lens = ((rms * model.ln_final.w) @ model.W_U + model.b_U).detach()
        gen.append(_cd_direct(logits[0, -1].log_softmax(-1), lens.log_softmax(-1), 0.1))
    assert list(got) == gen


def test_cd_masked_heads_matches_direct_formula(model):
    heads = ((0, 1), (3, 2), (5, 0))
    got = generate(model, PROMPT, N_NEW, ContrastiveDecoding(amateur_heads=heads, beta=0.05)).new_tokens
    masks = [HeadMask(l, h) for l, h in heads]
    gen: list[int] = []
    for _ in range(N_NEW):
        e = _logits(model, PROMPT + gen).log_softmax(-1)
        a = _logits(model, PROMPT + gen, masks).log_softmax(-1)
        gen.append(_cd_direct(e, a, 0.05))
    assert list(got) == gen


# --------------------------------------------------------------------------- DoLa


def test_dola_candidate_buckets():
    # HF's buckets: tied embeddings start at 2 (N > 2), 1 (N = 2), 0 (N = 1); untied at 0
    assert candidate_layers(30, "high", tied=True) == [15, 17, 19, 21, 23, 25, 27, 29]
    assert candidate_layers(30, "low", tied=True) == [2, 4, 6, 8, 10, 12, 14]
    assert candidate_layers(30, "low", tied=False) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert candidate_layers(48, "high", tied=True) == list(range(28, 48, 2))
    assert candidate_layers(48, "low", tied=False) == list(range(0, 20, 2))
    assert candidate_layers(2, "low", tied=True) == [1]
    assert candidate_layers(4, "low", tied=True) == [2]
    assert candidate_layers(6, "high", tied=False) == [3, 5]


def test_dola_detects_tied_embeddings():
    tied = tiny_model(n_layers=6, d_vocab=50, n_ctx=64, seed=4)
    assert DoLa(layers="low").candidates(tied) == [0, 2]  # untied: start at the embeddings
    with torch.no_grad():
        tied.W_U.copy_(tied.W_E.T)  # the cfg flag stays False, as in converted models
    assert not tied.cfg.tie_word_embeddings
    assert DoLa(layers="low").candidates(tied) == [2]  # tied: the embedding layer is skipped


def test_dola_final_layer_only_is_greedy(model):
    n = model.cfg.n_layers
    got = generate(model, PROMPT, N_NEW, DoLa(layers=(n,), repetition_penalty=1.0)).new_tokens
    assert got == generate(model, PROMPT, N_NEW, "greedy").new_tokens


def _dola_direct(model, ids, layers, relative_top=0.1, penalty=1.2, norm=False) -> tuple[int, int]:
    """One DoLa step written out in numpy float64 from the HF protocol (``norm``: RMSNorm by
    hand on the premature layers, the non-HF variant)."""
    with torch.no_grad():
        logits, cache = model.run_with_cache(torch.tensor([ids]))
    final = logits[0, -1].double().numpy()
    W_U, b_U = model.W_U.detach().double().numpy(), model.b_U.detach().double().numpy()
    gamma = model.ln_final.w.detach().double().numpy()

    def readin(h):
        return h / np.sqrt((h ** 2).mean() + model.cfg.eps) * gamma if norm else h

    prem = {l: readin(cache[f"blocks.{l}.hook_resid_pre"][0, -1].double().numpy()) @ W_U + b_U for l in layers}

    def log_softmax(x):
        x = x - x.max()
        return x - np.log(np.exp(x).sum())

    lf = log_softmax(final)
    if len(layers) == 1:
        chosen = layers[0]
    else:
        js = []
        for l in layers:
            lp = log_softmax(prem[l])
            m = 0.5 * (np.exp(lf) + np.exp(lp))
            kl_f = np.mean(m * (np.log(m) - lf))
            kl_p = np.mean(m * (np.log(m) - lp))
            js.append(0.5 * (kl_f + kl_p))
        chosen = layers[int(np.argmax(js))]
    lp = log_softmax(prem[chosen])
    keep = lf >= lf.max() + np.log(relative_top)
    score = np.where(keep, lf - np.where(keep, lp, -1e-3), -np.inf)
    for t in set(ids):
        score[t] = score[t] * penalty if score[t] < 0 else score[t] / penalty
    return int(np.argmax(score)), chosen


@pytest.mark.parametrize("layers,expected", [("high", [3, 5]), ("low", [0, 2]), ((1,), [1])])
def test_dola_matches_direct_formula(model, layers, expected):
    strat = DoLa(layers=layers)
    assert strat.candidates(model) == expected  # untied tiny model: start at 0
    gen: list[int] = []
    chosen = []
    for _ in range(N_NEW):
        tok, layer = _dola_direct(model, PROMPT + gen, expected)
        gen.append(tok)
        chosen.append(layer)
    got = generate(model, PROMPT, N_NEW, strat)
    assert list(got.new_tokens) == gen
    if layers == "high":  # the dynamic choice matters here: each fixed layer alone gives another text
        assert len(set(chosen)) > 1
        for l in expected:
            assert list(generate(model, PROMPT, N_NEW, DoLa(layers=(l,))).new_tokens) != gen


def test_dola_premature_norm_variant(model):
    gen: list[int] = []
    for _ in range(N_NEW):
        gen.append(_dola_direct(model, PROMPT + gen, [3, 5], norm=True)[0])
    got = generate(model, PROMPT, N_NEW, DoLa(layers="high", premature_norm=True)).new_tokens
    assert list(got) == gen
    assert got != generate(model, PROMPT, N_NEW, DoLa(layers="high")).new_tokens


def test_dola_differs_from_greedy_and_picks_layers(model):
    ours = generate(model, PROMPT, N_NEW, DoLa(layers="high")).new_tokens
    assert ours != generate(model, PROMPT, N_NEW, "greedy").new_tokens


# --------------------------------------------------------------------------- data and bad input


@pytest.mark.parametrize("strat", [CAD(context="some context", alpha=0.25), ContrastiveDecoding(amateur_layer=3),
                                   ContrastiveDecoding(amateur_heads=((1, 2),), beta=0.2), DoLa(layers=(2, 4))])
def test_round_trip(strat):
    assert STRATEGIES.from_dict(strat.to_dict()) == strat


@pytest.mark.parametrize("make", [
    lambda: CAD(context=""), lambda: CAD(context="   "), lambda: CAD(context=()), lambda: CAD(context="c", alpha=-0.1),
    lambda: ContrastiveDecoding(beta=0.0, amateur_layer=1), lambda: ContrastiveDecoding(beta=1.5, amateur_layer=1),
    lambda: ContrastiveDecoding(), lambda: ContrastiveDecoding(amateur_layer=1, amateur_heads=((0, 0),)),
    lambda: DoLa(layers="middle"), lambda: DoLa(layers=()), lambda: DoLa(relative_top=0),
])
def test_bad_parameters(make):
    with pytest.raises(InputError):
        make()


def test_bad_layers_and_amateur(model):
    with pytest.raises(InputError, match="amateur layer"):
        generate(model, PROMPT, 2, ContrastiveDecoding(amateur_layer=6))
    with pytest.raises(InputError, match="DoLa layer"):
        generate(model, PROMPT, 2, DoLa(layers=(2, 9)))
    with pytest.raises(InputError):
        generate(model, PROMPT, 2, ContrastiveDecoding(amateur_heads=((7, 0),)))
    other = _f64(tiny_model(n_layers=2, d_vocab=60, n_ctx=64, seed=2))
    register_amateur("other-vocab", other)
    try:
        with pytest.raises(InputError, match="tokenizer"):
            generate(model, PROMPT, 2, ContrastiveDecoding(amateur_model="other-vocab"))
    finally:
        register_amateur("other-vocab", None)
    with pytest.raises(InputError, match="(?i)context token ids"):
        generate(model, PROMPT, 2, CAD(context=(99,)))
    with pytest.raises(InputError):
        generate_rows(model, PROMPT, [()], 2, DoLa())


class _CharTokenizer:
    """A tokenizer for the tiny model: each character is its code point mod 50; BOS = 1."""

    bos_token_id = 1
    eos_token_id = None
    padding_side = "right"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 50 for c in text]}

    def decode(self, ids, **kw):
        return "".join(chr(65 + int(i) % 26) for i in ids)


def test_cad_text_context_goes_after_bos(model):
    model.tokenizer = _CharTokenizer()
    try:
        cad = CAD(context="hey")
        ctx = [ord(c) % 50 for c in "hey"]
        assert cad.context_ids(model) == ctx
        assert cad.with_context(model, [1, 5, 6]) == [1, *ctx, 5, 6]  # after the BOS token
        assert cad.with_context(model, [5, 6]) == [*ctx, 5, 6]
        got = generate(model, [1, *PROMPT], 4, cad).new_tokens
        assert got == generate(model, [1, *PROMPT], 4, CAD(context=tuple(ctx))).new_tokens
    finally:
        model.tokenizer = None
