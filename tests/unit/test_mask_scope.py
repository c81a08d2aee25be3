"""Where heads are masked while decoding: the retrieval-head references (Wu et al.'s
``needle_in_haystack_with_mask.py``, Gema et al.'s DeCoRe) prefill the prompt but its last
token unmasked and mask the heads from the last prompt token on.

Expected values come from a direct computation written here: no KV cache, one forward of
the whole text per step through TransformerLens' own ``run_with_hooks``, with a hook that
sets the masked heads' attention rows to 1/(q+1) over keys 0..q for the query positions
q >= ``first`` only (``first`` = T−1: the references' decode-only masking; 0: every
position). Causality makes the rows before ``first`` those of the plain model.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch

from mechscope.analyses.retrieval import MaskingParams, MaskingResult, random_pool
from mechscope.probes.batched_greedy import greedy_rows
from mechscope.probes.decoding import generate
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import HeadMask, hooks_for
from tests.tiny import tiny_model


def _uniform_rows(heads, first):
    def hook(pattern, hook):
        out = pattern.clone()
        for h in heads:
            for q in range(first, out.shape[-2]):
                out[:, h, q, :] = 0.0
                out[:, h, q, : q + 1] = 1.0 / (q + 1)
        return out

    return hook


def _direct(model, ids, heads, first, grab=None):
    """Last-position logits of ``ids`` (no cache) with ``heads`` uniform on query rows >= first."""
    by_layer = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    hooks = [(f"blocks.{l}.attn.hook_pattern", _uniform_rows(hs, first)) for l, hs in by_layer.items()]
    hooks += grab or []
    with torch.no_grad():
        return model.run_with_hooks(torch.tensor([list(ids)]), fwd_hooks=hooks)[0, -1]


def _direct_greedy(model, prompt, heads, n, first, stops=(), top1=False):
    """Greedy tokens, their log-probs and (optionally) each step's top-1 key per layer/head."""
    ids, toks, lps, tops = list(prompt), [], [], []
    L = model.cfg.n_layers
    for _ in range(n):
        seen = {}

        def grab_top(pattern, hook):
            seen[hook.layer()] = pattern[0, :, -1].argmax(-1)

        grab = [(f"blocks.{l}.attn.hook_pattern", grab_top) for l in range(L)] if top1 else None
        logits = _direct(model, ids, heads, first, grab)
        tok = int(logits.argmax())
        toks.append(tok)
        lps.append(float(logits.log_softmax(-1)[tok]))
        if top1:
            tops.append(torch.stack([seen[l] for l in range(L)]))
        if tok in stops:
            break
        ids.append(tok)
    return toks, lps, tops


def _prompt(n, seed):
    return [int(x) for x in torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(seed))]


HEADS = ((0, 1), (1, 2), (1, 3))


def test_direct_computation_tells_the_two_scopes_apart(tiny64):
    """The check below can fail: on this model decode-only and prompt masking give
    different continuations and log-probs."""
    p = _prompt(14, 0)
    dec = _direct_greedy(tiny64, p, HEADS, 8, first=len(p) - 1)
    full = _direct_greedy(tiny64, p, HEADS, 8, first=0)
    assert dec[0] != full[0]
    assert abs(dec[1][0] - full[1][0]) > 1e-3


@pytest.mark.parametrize("scope", ["decode", "prompt_and_decode"])
def test_generate_masks_where_the_scope_says(tiny64, scope):
    """float64 model: tokens equal the direct computation's; log-probs agree to float32
    rounding (``generate`` reports log-softmax of float32 logits: |lp| < 5, so 8 ulp ≈ 5e-6),
    far below the 1e-3 gap between the two scopes."""
    ivs = [HeadMask(l, h) for l, h in HEADS]
    for seed, n in ((0, 14), (1, 9), (2, 1), (3, 2)):
        p = _prompt(n, seed)
        first = len(p) - 1 if scope == "decode" else 0
        want_toks, want_lps, _ = _direct_greedy(tiny64, p, HEADS, 8, first)
        gen = generate(tiny64, p, max_new_tokens=8, interventions=ivs, intervention_scope=scope, stop_at_eos=False)
        assert list(gen.new_tokens) == want_toks
        np.testing.assert_allclose(gen.logprobs, want_lps, rtol=1e-6, atol=8 * 5 * np.finfo(np.float32).eps)


def test_generate_decode_scope_keeps_the_plain_prompt_cache(tiny64):
    """Layer 1's keys and values of the prompt but its last token (the cache entries later
    steps read) equal the plain model's; the last prompt token's are those of the masked
    direct computation (layer 0's masked head changed them)."""
    p = _prompt(13, 4)
    T = len(p)
    passes = []

    def grab(tensor, site, batch):
        passes.append((str(site), batch.q_offset, tensor[0].clone()))

    reducers = {"blocks.1.attn.hook_k": grab, "blocks.1.attn.hook_v": grab}
    generate(tiny64, p, max_new_tokens=3, interventions=[HeadMask(0, 1), HeadMask(0, 3)], intervention_scope="decode",
             reducers=reducers, stop_at_eos=False)
    with torch.no_grad():
        _, plain = tiny64.run_with_cache(torch.tensor([p]))
    masked = {}

    def keep(t, hook):
        masked[hook.name] = t[0].clone()

    _direct(tiny64, p, ((0, 1), (0, 3)), T - 1, [("blocks.1.attn.hook_k", keep), ("blocks.1.attn.hook_v", keep)])
    for point in ("hook_k", "hook_v"):
        name = f"blocks.1.attn.{point}"
        got = torch.cat([t for n, off, t in passes if name in n and off < T])  # the prompt's positions
        assert got.shape[0] == T
        torch.testing.assert_close(got[: T - 1], plain[name][0, : T - 1], rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(got[T - 1], masked[name][T - 1], rtol=1e-6, atol=1e-12)
        assert (got[T - 1] - plain[name][0, T - 1]).abs().max() > 1e-3  # the mask matters at T − 1


def test_generate_decode_scope_needs_a_cache(tiny64):
    with pytest.raises(InputError, match="KV cache"):
        generate(tiny64, [1, 2, 3], max_new_tokens=2, interventions=[HeadMask(0, 0)], kv_policy=None,
                 intervention_scope="decode")
    with pytest.raises(InputError, match="scope"):
        generate(tiny64, [1, 2, 3], max_new_tokens=2, interventions=[HeadMask(0, 0)], intervention_scope="prompt")


@pytest.mark.parametrize("prefill_rows", [1, 2])
def test_greedy_rows_decode_scope_equals_the_direct_computation(prefill_rows):
    """Rows of different lengths (1 and 2 tokens included), per-row masks and a mask for
    all rows, on a float64 GQA model: tokens and integer top-1 positions equal the direct
    computation with the masks on query rows >= T−1."""
    m = tiny_model(n_key_value_heads=2, dtype=torch.float64, seed=3)
    prompts = [_prompt(n, 10 + i) for i, n in enumerate((11, 4, 16, 1, 2, 16, 7))]
    row_masks = [[(0, 1)], [(1, 2), (1, 3)], [], [(0, 0), (1, 1)], [(1, 0)], [(0, 2), (1, 1), (1, 3)], [(1, 2)]]
    common = (1, 0)
    stops = (_direct_greedy(m, prompts[0], [common] + row_masks[0], 3, len(prompts[0]) - 1)[0][2],)
    lists = [hooks_for(m, [HeadMask(l, h) for l, h in rm]) for rm in row_masks]
    outs = greedy_rows(m, prompts, 6, interventions=[HeadMask(*common)], row_hooks=lists, top1=True,
                       stop_tokens=stops, prefill_rows=prefill_rows, intervention_scope="decode")
    for p, rm, o in zip(prompts, row_masks, outs):
        toks, _, tops = _direct_greedy(m, p, [common] + rm, 6, len(p) - 1, stops=stops, top1=True)
        assert list(o.new_tokens) == toks
        assert torch.equal(o.top1, torch.stack(tops))
    assert len(outs[0].new_tokens) == 3  # the stop token ended that row early


def test_greedy_rows_prompt_and_decode_scope_equals_the_direct_computation():
    m = tiny_model(dtype=torch.float64, seed=4)
    prompts = [_prompt(n, 20 + n) for n in (9, 13, 5)]
    outs = greedy_rows(m, prompts, 5, interventions=[HeadMask(0, 2), HeadMask(1, 1)])
    for p, o in zip(prompts, outs):
        assert list(o.new_tokens) == _direct_greedy(m, p, ((0, 2), (1, 1)), 5, 0)[0]


# ---------------------------------------------------------------------------------------
# DeCoRe


def _entropy(logprobs):
    p = logprobs.exp()
    return float(-(p * logprobs).sum())


def _direct_decore(model, prompt, heads, alpha, n, first_of):
    """argmax[(1+α) log p_base − α log p_masked], both from independent uncached forwards."""
    ids, out, alphas = list(prompt), [], []
    for _ in range(n):
        base = _direct(model, ids, (), 0).log_softmax(-1)
        masked = _direct(model, ids, heads, first_of(len(prompt))).log_softmax(-1)
        a = _entropy(base) if alpha is None else alpha
        alphas.append(a)
        tok = int(torch.argmax((1 + a) * base - a * masked))
        out.append(tok)
        ids.append(tok)
    return out, alphas


def test_decore_masks_where_the_scope_says(tiny64):
    """DeCoRe's contrast computed by hand from two forwards per step: by default the masked
    model has the heads masked from the last prompt token on (the prompt prefilled unmasked,
    as the reference); ``prompt_and_decode`` masks every position. With and without a KV
    cache for the base model."""
    from mechscope.probes.decore import DeCoRe

    cases = []
    for seed in (5, 6):
        p = _prompt(12, seed)
        for alpha in (0.5, None):
            cases.append((p, alpha, _direct_decore(tiny64, p, HEADS, alpha, 6, lambda T: T - 1)[0],
                          _direct_decore(tiny64, p, HEADS, alpha, 6, lambda T: 0)[0]))
    assert any(dec != full for _, _, dec, full in cases)  # the scope changes some choice on this model
    for p, alpha, dec, _ in cases:  # the default
        for kv_policy in ("full", None):
            got = generate(tiny64, p, max_new_tokens=6, strategy=DeCoRe(HEADS, alpha=alpha), kv_policy=kv_policy,
                           stop_at_eos=False).new_tokens
            assert list(got) == dec
    for p, alpha, _, full in cases:
        got = generate(tiny64, p, max_new_tokens=6, strategy=DeCoRe(HEADS, alpha=alpha, mask_scope="prompt_and_decode"),
                       stop_at_eos=False).new_tokens
        assert list(got) == full


def test_decore_prefills_the_prompt_once(tiny64):
    """One forward over the prompt but its last token; then one-token passes only (the base
    and the masked branch each feed the newest token), as the reference does."""
    from mechscope.probes.decore import DeCoRe

    p = _prompt(12, 8)
    sizes = []

    def embed(t, hook):
        sizes.append(t.shape[1])

    with tiny64.hooks(fwd_hooks=[("hook_embed", embed)]):
        gen = generate(tiny64, p, max_new_tokens=5, strategy=DeCoRe(HEADS, alpha=1.0), stop_at_eos=False)
    assert len(gen.new_tokens) == 5
    assert sizes == [len(p) - 1] + [1] * (5 + 5)  # base: the last prompt token + 4 new ones; masked: 5 passes


def test_decore_defaults_and_round_trip():
    from mechscope.probes.decoding import STRATEGIES
    from mechscope.probes.decore import DEFAULT_HEADS, DeCoRe

    assert DEFAULT_HEADS == 50  # aryopg/DeCoRe configs/decoder/decore_entropy.yaml
    s = DeCoRe(((3, 1),))
    assert s.mask_scope == "decode"
    t = DeCoRe(((3, 1), (5, 2)), alpha=0.5, mask_scope="prompt_and_decode")
    assert STRATEGIES.from_dict(t.to_dict()) == t
    with pytest.raises(InputError, match="scope"):
        DeCoRe(((0, 0),), mask_scope="prompt")


# ---------------------------------------------------------------------------------------
# the masking curves: parameters, the random pool, old results


def test_masking_params_default_to_the_reference():
    p = MaskingParams()
    assert p.mask_scope == "decode" and p.random_outside_top == 100
    with pytest.raises(InputError):
        MaskingParams(mask_scope="everywhere")
    with pytest.raises(InputError):
        MaskingParams(random_outside_top=-1)


def test_random_pool_outside_the_top_100():
    ranked = [(l, h) for l in range(30) for h in range(9)][::-1]  # 270 heads, some order
    pool, text = random_pool(ranked, 30, 9, 40, 100, detected=True)
    assert len(pool) == 170 and set(pool) == set(ranked[100:]) and pool == ranked[100:]
    assert "top 100" in text
    # too few heads (8): outside the top max(k) instead
    small = [(1, 3), (0, 2), (1, 0), (0, 0), (0, 1), (0, 3), (1, 1), (1, 2)]
    pool, text = random_pool(small, 2, 4, 2, 100, detected=True)
    assert pool == small[2:] and "too few heads" in text
    # heads above the threshold are never drawn
    pool, _ = random_pool(small, 2, 4, 2, 0, n_above=3, detected=True)
    assert pool == small[3:]
    # a given ranking shorter than 100: every given head is left out; (layer, head) order
    pool, text = random_pool(small[:3], 30, 9, 2, 100)
    assert len(pool) == 267 and not set(pool) & set(small[:3]) and pool == sorted(pool)
    assert "only 3 ranked heads given" in text


def _legacy(doc: dict, result_fields: tuple, param_fields: tuple) -> dict:
    for f in result_fields:
        doc["fields"].pop(f)
    for f in param_fields:
        doc["fields"]["params"]["$object"].pop(f)
    return doc


def test_old_masking_results_load_as_measured(tmp_path):
    """Results saved before the scope and pool were recorded masked the prompt too and drew
    outside the top max(k): they load (and re-run) that way."""
    import pandas as pd

    from mechscope.probes.results import Result

    new = MaskingResult(model_id="m", params=MaskingParams(ks=(0, 2), heads=((0, 0), (1, 1))),
                        curves=pd.DataFrame([{"k": 0, "which": "random", "seed": 0, "accuracy": 1.0}]),
                        ranked_heads=((0, 0), (1, 1)), mask_scope="decode", random_pool="outside the top 2 ranked heads")
    path = new.save(tmp_path / "new")
    back = Result.load(path)
    assert back.mask_scope == "decode" and back.params.mask_scope == "decode" and back.params.random_outside_top == 100
    meta = path / "result.json"
    doc = json.loads(meta.read_text())
    assert doc["fields"]["params"]["$object"]["mask_scope"] == "decode"
    meta.write_text(json.dumps(_legacy(doc, ("mask_scope", "random_pool"), ("mask_scope", "random_outside_top"))))
    old = Result.load(path)
    assert old.mask_scope == "prompt_and_decode" and old.params.mask_scope == "prompt_and_decode"
    assert old.params.random_outside_top == 0
    assert "max(k)" in old.random_pool


def test_old_niah_results_load_as_measured(tmp_path):
    import pandas as pd

    from mechscope.analyses.niah import NiahParams, NiahResult
    from mechscope.probes.results import Result

    new = NiahResult(model_id="m", params=NiahParams(interventions=(HeadMask(0, 1),)), tests=pd.DataFrame({"correct": [True]}),
                     prompt_format="plain", mask_scope="decode")
    path = new.save(tmp_path / "niah")
    assert Result.load(path).params.mask_scope == "decode"
    doc = json.loads((path / "result.json").read_text())
    (path / "result.json").write_text(json.dumps(_legacy(doc, ("mask_scope",), ("mask_scope",))))
    old = Result.load(path)
    assert old.mask_scope == "prompt_and_decode" and old.params.mask_scope == "prompt_and_decode"
    with pytest.raises(InputError, match="KV cache"):
        NiahParams(interventions=(HeadMask(0, 1),), kv_policy="none")
    assert dataclasses.replace(NiahParams(), kv_policy="full").mask_scope == "decode"
