"""DuoAttention gates (probes/duo.py, analyses/duo_attention.py, probes/passkey.py):
α = 1 is the unmodified model, α = 0 is pure sinks + window attention (checked against
RazorAttention's eviction and a hand computation), only the gates get gradients, training
follows the objective written out independently (tests/duo_objective.py: MSE of the final
hidden states on the answer tail + λ·mean|α|, AdamW) step for step and moves each gate
against its gradient, a gate whose head must reach a far token is the one that training
keeps open while a head whose streaming output equals its full output closes at the L1
term's pace, the passkey generator is deterministic and exact in length, and bad input gets
one clear message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope.analyses.duo_attention import (
    DuoParams,
    gate_overlap,
    gate_score_spearman,
    grouped_max,
    reference_lr_factor,
    retrieval_kv_heads,
    train_gates,
)
from mechscope.probes.passkey import make_sample
from mechscope.probes.duo import final_hidden, gate_hooks, streaming_mask, z_capture_hooks
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import applied
from mechscope.probes.razor import RazorAttention
from tests import duo_objective
from tests.tiny import copy_model, tiny_model

IDS = [3, 17, 5, 9, 22, 41, 8, 13, 30, 2, 11, 7, 19, 4, 28, 33, 1, 45, 12, 6]


def _gated(model, gates, S, W, branch, ids=IDS):
    tokens = torch.tensor([ids])
    ref: list = []
    if branch == "reference":
        with applied(model, extra_hooks=z_capture_hooks(model, ref)), torch.no_grad():
            final_hidden(model, tokens)
    with applied(model, extra_hooks=gate_hooks(model, gates, S, W, branch, ref or None)), torch.no_grad():
        return final_hidden(model, tokens)


def test_streaming_mask_hand_built():
    # 6 keys, 3 queries (positions 3, 4, 5), 1 sink, window 2 (the query and the key before it)
    want = torch.tensor([[1, 0, 1, 1, 0, 0],
                         [1, 0, 0, 1, 1, 0],
                         [1, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(streaming_mask(3, 6, 1, 2), want)


def test_final_hidden_is_what_the_unembedding_reads(tiny64):
    tokens = torch.tensor([IDS])
    with torch.no_grad():
        logits = tiny64(tokens)
        h = final_hidden(tiny64, tokens)
    torch.testing.assert_close(tiny64.unembed(h), logits, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("branch", ["shared", "reference"])
def test_gate_one_everywhere_is_the_unmodified_model(branch):
    model = tiny_model(n_key_value_heads=2, dtype=torch.float64)
    with torch.no_grad():
        plain = final_hidden(model, torch.tensor([IDS]))
    got = _gated(model, torch.ones(2, 2, dtype=torch.float64), 1, 3, branch)
    torch.testing.assert_close(got, plain, rtol=1e-12, atol=1e-12)
    # not vacuous: α = 0 with the same window changes the output
    other = _gated(model, torch.zeros(2, 2, dtype=torch.float64), 1, 3, branch)
    assert (other - plain).abs().max().item() > 1e-3


@pytest.mark.parametrize("branch", ["shared", "reference"])
def test_gate_zero_is_sinks_plus_window_attention(branch):
    model = tiny_model(n_key_value_heads=2, dtype=torch.float64)
    S, W = 2, 4
    got = _gated(model, torch.zeros(2, 2, dtype=torch.float64), S, W, branch)
    # RazorAttention with no retrieval heads and no compensation evicts all but S sinks and the W − 1
    # keys before the query (its window excludes the query itself)
    razor = RazorAttention((), n_sink=S, window=W - 1, compensation=False, buffer="fixed")
    with applied(model, extra_hooks=razor.hooks(model)), torch.no_grad():
        want = final_hidden(model, torch.tensor([IDS]))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_mixed_gates_follow_the_formula_per_kv_head():
    """Layer 0 only, one KV head open (α=0.3) and one closed: hook_z of each query head equals
    α·full + (1−α)·streaming computed by hand from q, k, v (GQA broadcast)."""
    model = tiny_model(n_layers=1, n_key_value_heads=2, dtype=torch.float64)
    S, W, a = 1, 3, 0.3
    gates = torch.tensor([[a, 0.0]], dtype=torch.float64)
    got = {}
    names = ["hook_rot_q", "hook_rot_k", "hook_v", "hook_z"]
    grab = [(f"blocks.0.attn.{n}", (lambda t, hook=None, n=n: got.__setitem__(n, t.detach().clone()))) for n in names]
    with applied(model, extra_hooks=gate_hooks(model, gates, S, W, "shared") + grab), torch.no_grad():
        final_hidden(model, torch.tensor([IDS]))
    q, k, v = got["hook_rot_q"][0], got["hook_rot_k"][0], got["hook_v"][0]
    d = q.shape[-1]
    for h in range(4):
        kv = h // 2
        alpha = a if kv == 0 else 0.0
        for t in range(len(IDS)):
            s = (k[: t + 1, kv] @ q[t, h]) / d ** 0.5
            full = torch.softmax(s, 0) @ v[: t + 1, kv]
            keep = [j for j in range(t + 1) if j < S or t - j < W]
            stream = torch.softmax(s[keep], 0) @ v[keep, kv]
            torch.testing.assert_close(got["hook_z"][0, t, h], alpha * full + (1 - alpha) * stream, rtol=1e-10, atol=1e-12)


def test_gradients_reach_only_the_gates():
    model = tiny_model(n_key_value_heads=2)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    gates = torch.nn.Parameter(torch.full((2, 2), 0.7))
    with applied(model, extra_hooks=gate_hooks(model, gates, 1, 3, "shared")):
        for p in model.parameters():
            p.requires_grad_(False)
        final_hidden(model, torch.tensor([IDS]), checkpoint=True).pow(2).sum().backward()
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
    assert gates.grad is not None and gates.grad.abs().min().item() > 0
    # the training loop: one step leaves no gradient on any model parameter and restores the flags
    train_gates(model, [(IDS, 10)], n_sink=1, window=3, lr=0.02, reg_weight=0.05)
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


@pytest.mark.parametrize("branch", ["shared", "reference"])
def test_only_the_far_reaching_head_keeps_its_gate(branch):
    """copy_model: head 0 reads the token 10 positions back, head 1 has zero weights. A window of 3
    hides that token, so the distillation loss can only fall by keeping head 0's gate open; head 1's
    gate changes nothing but the L1 penalty, which closes it."""
    model = copy_model(d_vocab=20, n_ctx=32, offset=10)
    rng = np.random.default_rng(0)
    samples = [(rng.integers(0, 20, 30).tolist(), 12) for _ in range(30)]
    gates, log, complete = train_gates(model, samples, n_sink=0, window=3, lr=0.1, reg_weight=0.05, full_branch=branch,
                                       checkpoint=False)
    assert complete and gates.shape == (1, 2)
    assert gates[0, 0].item() > 0.9
    # head 1's output is zero with or without the window: only λ·mean|α| moves its gate, by a
    # constant gradient λ/2, so AdamW lowers it by lr·(schedule factor)·g/(g + ε) every step
    # (Σ factors over 30 steps = 3.5 + 19 + 2.5 = 25: far below 0, clamped)
    assert gates[0, 1].item() == 0.0
    short, _, _ = train_gates(model, samples[:3], n_sink=0, window=3, lr=0.1, reg_weight=0.05, full_branch=branch,
                              checkpoint=False)
    g = 0.05 / 2
    assert short[0, 1].item() == pytest.approx(1 - 3 * 0.1 * g / (g + 1e-8), abs=1e-6)  # 3 steps of factor 1


SAMPLES = [(IDS, 10), ([int(x) for x in np.random.default_rng(1).integers(0, 50, 20)], 12),
           ([int(x) for x in np.random.default_rng(2).integers(0, 50, 20)], 12)]


@pytest.mark.parametrize("branch", ["shared", "reference"])
def test_training_follows_the_objective_written_out(branch):
    """Three AdamW steps from α = 0.6 equal the same steps on the objective written out
    independently (gradients by autograd through it), to float32 precision of the gates; the
    tolerance is fine enough to see the L1 term (the λ = 0 trajectory differs by far more)."""
    model = tiny_model(n_key_value_heads=2, dtype=torch.float64)
    got, log, complete = train_gates(model, SAMPLES, n_sink=1, window=3, lr=0.05, reg_weight=0.05,
                                     full_branch=branch, init=0.6, checkpoint=False)
    want, grads = duo_objective.train(model, SAMPLES, 1, 3, lr=0.05, reg_weight=0.05, branch=branch, init=0.6)
    assert complete and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    no_l1, _ = duo_objective.train(model, SAMPLES, 1, 3, lr=0.05, reg_weight=0.0, branch=branch, init=0.6)
    assert (no_l1 - want).abs().max().item() > 1e-4
    # the logged loss terms are the objective's at the gates each step started from
    assert log.reg[0] == pytest.approx(0.6, abs=1e-7)


@pytest.mark.parametrize("branch", ["shared", "reference"])
def test_one_step_moves_each_gate_against_its_gradient(branch):
    """One step from α = 0.6 with λ set so that the L1 term outweighs the distillation
    gradient on some gates and not on others: each gate moves by lr against the sign of the
    objective's gradient (AdamW's first step is lr·g/(|g| + ε)), opening some and closing others."""
    model = tiny_model(n_key_value_heads=2, dtype=torch.float64)
    a0 = torch.full((2, 2), 0.6, dtype=torch.float64)
    g_distill = duo_objective.gradient(model, IDS, 10, a0, 1, 3, branch, reg_weight=0.0)
    lam = float(g_distill.abs().median()) * a0.numel() * 1.01  # λ/n just above the median |∂ distill / ∂α|
    g = duo_objective.gradient(model, IDS, 10, a0, 1, 3, branch, reg_weight=lam)
    assert (g > 0).any() and (g < 0).any() and g.abs().min().item() > 1e-4
    got, _, _ = train_gates(model, [(IDS, 10)], n_sink=1, window=3, lr=0.05, reg_weight=lam, full_branch=branch,
                            init=0.6, checkpoint=False)
    torch.testing.assert_close(got.double() - a0, -0.05 * torch.sign(g), rtol=1e-6, atol=1e-6)


def test_reference_lr_schedule():
    f = [reference_lr_factor(s, 10) for s in range(10)]
    assert f == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5])
    assert reference_lr_factor(0, 100) == pytest.approx(0.1)  # floor 0.1 during warm-up


def test_passkey_sample_is_exact_and_deterministic():
    tok = lambda text: [ord(c) for c in text]  # noqa: E731  (one token per character)
    hay = tuple(range(1000, 3000))
    a = make_sample(tok, hay, 600, 2, 3, np.random.default_rng(5))
    b = make_sample(tok, hay, 600, 2, 3, np.random.default_rng(5))
    assert a == b and len(a.ids) == 600
    text_tail = "".join(chr(i) for i in a.ids[a.answer_start:])
    for key in a.passkeys:
        assert len(key.split()) == 3
        assert key in text_tail  # the answers are in the supervised tail
    for start, key in zip(a.needle_starts, a.passkeys):  # each needle sits where it says, with its passkey
        needle = "".join(chr(i) for i in a.ids[start:start + 120])
        assert key in needle.split(".")[0]
    assert list(a.depths) == sorted(a.depths)


def test_overlap_hand_counts():
    assert retrieval_kv_heads([(17, 3), (17, 4), (18, 6), (23, 2)], 3) == {(17, 1), (18, 2), (23, 0)}
    gates = np.zeros((30, 3))
    gates[17, 1] = gates[5, 0] = 0.9
    o = gate_overlap(gates, {(17, 1), (18, 2)}, 0.5)
    assert (o["n_duo"], o["both"]) == (2, 1)
    assert o["jaccard"] == pytest.approx(1 / 3) and o["precision"] == 0.5 and o["recall"] == 0.5
    scores = np.arange(12, dtype=float).reshape(2, 6)
    assert grouped_max(scores, 3).tolist() == [[2, 5], [8, 11]]
    assert gate_score_spearman(np.array([[0.1, 0.2], [0.3, 0.4]]), scores, 3) == pytest.approx(1.0)


def test_bad_input_gets_one_clear_message(tiny_gqa):
    with pytest.raises(InputError, match="shape"):
        gate_hooks(tiny_gqa, torch.ones(2, 4), 1, 3)
    with pytest.raises(InputError, match="window"):
        gate_hooks(tiny_gqa, torch.ones(2, 2), 1, 0)
    with pytest.raises(InputError, match="full_branch"):
        gate_hooks(tiny_gqa, torch.ones(2, 2), 1, 3, "both")
    with pytest.raises(InputError, match="hook_z"):
        gate_hooks(tiny_gqa, torch.ones(2, 2), 1, 3, "reference")
    for bad in (dict(steps=0), dict(min_length=900, max_length=800), dict(lr=0.0), dict(reg_weight=-1.0),
                dict(n_sink=-1), dict(threshold=1.5), dict(full_branch="x")):
        with pytest.raises(InputError):
            DuoParams(**bad)
    with pytest.raises(InputError, match="cannot hold"):
        make_sample(lambda t: [ord(c) for c in t], tuple(range(500)), 100, 2, 8, np.random.default_rng(0))
    from mechscope.analyses.duo_attention import duo_gates

    with pytest.raises(InputError, match="tokenizer"):
        duo_gates(tiny_gqa, steps=1)


def test_split_mse_all_full_is_zero_and_none_full_is_the_streaming_model():
    from mechscope.analyses.duo_attention import split_mse

    model = tiny_model(n_key_value_heads=2, dtype=torch.float64)
    samples = [(IDS, 8)]
    everything = {(l, k) for l in range(2) for k in range(2)}
    assert split_mse(model, samples, everything, 1, 3) == 0.0
    with torch.no_grad():
        plain = final_hidden(model, torch.tensor([IDS]))[:, 8:]
    stream = _gated(model, torch.zeros(2, 2, dtype=torch.float64), 1, 3, "shared")[:, 8:]
    want = float((stream - plain).pow(2).mean(-1).mean())
    assert split_mse(model, samples, set(), 1, 3) == pytest.approx(want, rel=1e-12) and want > 0


def test_interrupt_keeps_the_gates_reached_so_far():
    model = tiny_model(n_key_value_heads=2)
    samples = [(IDS, 10)] * 5

    def interrupt(done, total):
        if done == 2:
            raise KeyboardInterrupt

    gates, log, complete = train_gates(model, samples, 1, 3, lr=0.1, reg_weight=0.05, progress=interrupt)
    assert not complete and len(log.distill) == 2 and (gates < 1).all()
    assert all(p.requires_grad for p in model.parameters())  # flags restored after the interrupt
    assert not any(hp.fwd_hooks or hp._forward_hooks for hp in model.hook_dict.values())  # no hook left behind
    finished: list[int] = []  # a time budget: stop() is asked before every step
    _, log, complete = train_gates(model, samples, 1, 3, lr=0.1, reg_weight=0.05, stop=lambda: len(finished) >= 3,
                                   progress=lambda done, total: finished.append(done))
    assert not complete and len(log.distill) == 3
