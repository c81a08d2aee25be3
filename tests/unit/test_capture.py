"""probes.capture: reducers see run_with_cache's numbers, ragged batches equal single runs,
early stop, input errors, progress."""

from __future__ import annotations

import pytest
import torch

from mechscope.probes import capture
from mechscope.probes.errors import InputError
from tests.tiny import tiny_model

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.2.mlp.hook_post"]


def _seqs(lengths, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in lengths]


@pytest.fixture(params=[None, 2], ids=["mha", "gqa"])
def model(request):
    # float64: batched, ragged and single runs must agree; in float32 they differ by BLAS rounding
    return tiny_model(n_layers=3, n_key_value_heads=request.param, dtype=torch.float64)


TOL = dict(rtol=1e-10, atol=1e-10)  # float64: eps 2.2e-16, activations of order 10


def test_reducer_sees_run_with_cache_values(model):
    tokens = torch.stack(_seqs([10, 10, 10]))
    seen: dict[str, torch.Tensor] = {}

    def reducer(t, name, batch):
        assert batch.mask.all() and sorted(batch.index) == [0, 1, 2]
        seen[name] = t.detach().clone()[torch.argsort(torch.tensor(batch.index))]

    capture.run(model, tokens, reducers={h: reducer for h in HOOKS}, batch_size=8)
    _, cache = model.run_with_cache(tokens)
    for h in HOOKS:
        torch.testing.assert_close(seen[h], cache[h], **TOL)


def test_ragged_batch_equals_single_sequence_runs(model):
    seqs = _seqs([5, 13, 1, 9, 13, 2])
    batched = capture.run(model, seqs, capture=HOOKS, batch_size=4, return_logits=True)
    for i, s in enumerate(seqs):
        alone = capture.run(model, [s], capture=HOOKS, batch_size=1, return_logits=True)
        _, cache = model.run_with_cache(s[None])
        n = len(s)
        assert batched.logits[i].shape == (n, model.cfg.d_vocab)
        torch.testing.assert_close(batched.logits[i], alone.logits[0], **TOL)
        torch.testing.assert_close(batched.logits[i], model(s[None])[0].detach(), **TOL)
        for h in HOOKS:
            got = batched.activations[h][i]
            if h.endswith("hook_pattern"):
                assert got.shape == (model.cfg.n_heads, n, n)
                torch.testing.assert_close(got.sum(-1), torch.ones(model.cfg.n_heads, n, dtype=got.dtype), **TOL)
            else:
                assert got.shape[0] == n
            torch.testing.assert_close(got, cache[h][0], **TOL)


def test_ragged_reducer_mask_marks_real_tokens(model):
    seqs = _seqs([3, 7, 5])
    masks = {}

    def reducer(t, name, batch):
        for b, i in enumerate(batch.index):
            masks[i] = batch.mask[b].clone()
        assert t.shape[0] == len(batch.index) and t.shape[1] == 7

    capture.run(model, seqs, reducers={"blocks.0.hook_resid_pre": reducer}, batch_size=3)
    for i, s in enumerate(seqs):
        assert masks[i].tolist() == [True] * len(s) + [False] * (7 - len(s))


def test_stops_after_last_requested_layer(model, monkeypatch):
    calls = []
    real = model.blocks[2].forward
    monkeypatch.setattr(model.blocks[2], "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    seqs = _seqs([6, 4])
    out = capture.run(model, seqs, capture=["blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"])
    assert calls == []  # layer 2 never ran
    for i, s in enumerate(seqs):
        _, cache = model.run_with_cache(s[None])
        torch.testing.assert_close(out.activations["blocks.1.hook_resid_post"][i], cache["blocks.1.hook_resid_post"][0],
                                   **TOL)
    calls.clear()
    capture.run(model, seqs, capture=["blocks.2.hook_resid_post"])
    assert calls  # the last layer is needed here
    calls.clear()
    capture.run(model, seqs, capture=["blocks.0.hook_resid_post"], return_logits=True)
    assert calls  # logits need every layer


def test_stop_layer_choice(model):
    assert capture._stop_layer(model, ["blocks.0.hook_resid_post"]) == 1
    assert capture._stop_layer(model, ["blocks.0.attn.hook_z", "blocks.1.hook_resid_pre"]) == 2
    assert capture._stop_layer(model, ["blocks.2.hook_resid_post"]) is None
    assert capture._stop_layer(model, ["hook_embed", "blocks.0.hook_resid_post"]) is None
    assert capture._stop_layer(model, ["ln_final.hook_normalized"]) is None


def test_input_errors(model):
    with pytest.raises(InputError, match="Unknown hook point"):
        capture.run(model, _seqs([4]), capture=["blocks.0.attn.hook_nonsense"])
    with pytest.raises(InputError, match="Unknown hook point"):
        capture.run(model, _seqs([4]), reducers={"blocks.9.hook_resid_post": lambda *a: None})
    with pytest.raises(InputError):
        capture.run(model, [], capture=["blocks.0.hook_resid_post"])
    with pytest.raises(InputError):
        capture.run(model, _seqs([4]), batch_size=0)
    with pytest.raises(InputError):
        capture.run(model, [torch.tensor([1, 2, 999])])  # id outside the vocabulary
    with pytest.raises(InputError):
        capture.run(model, [torch.zeros(model.cfg.n_ctx + 1, dtype=torch.long)])


def test_progress_callback_and_input_order(model):
    seqs = _seqs([2, 9, 4, 7, 3])
    calls = []
    out = capture.run(model, seqs, capture=["blocks.0.hook_resid_post"], batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert [a.shape[0] for a in out.activations["blocks.0.hook_resid_post"]] == [2, 9, 4, 7, 3]


def test_no_hooks_left_behind(model):
    capture.run(model, _seqs([4]), capture=HOOKS)
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())



def test_run_with_cache_applies_interventions_and_removes_them(tiny):
    """The front door's one-pass capture: TransformerLens's cache, interventions only inside."""
    from mechscope.probes.capture import run_with_cache
    from mechscope.probes.interventions import HeadMask

    toks = torch.tensor([[1, 5, 9, 3, 7]])
    logits, cache = run_with_cache(tiny, toks, names=["blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"])
    plain_logits, plain = tiny.run_with_cache(toks)
    assert torch.allclose(logits, plain_logits) and set(cache.keys()) == {"blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"}
    assert torch.allclose(cache["resid_post", 1], plain["resid_post", 1])
    _, masked = run_with_cache(tiny, toks, names=lambda n: n.endswith("hook_pattern"), interventions=[HeadMask(1, 2)])
    pat = masked["pattern", 1][0, 2]
    causal = torch.tril(torch.ones(5, 5)) / torch.arange(1, 6)[:, None]
    assert torch.allclose(pat, causal, atol=1e-6)  # uniform attention over the visible keys
    assert not torch.allclose(plain["pattern", 1][0, 2], causal, atol=1e-3)
    assert all(not hp.fwd_hooks for hp in tiny.hook_dict.values())  # nothing left on the model
