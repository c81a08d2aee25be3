"""Interventions: each does exactly what it says on a tiny model, hooks always go away,
bad indices attach nothing, and threads sharing a model never see each other's hooks."""

from __future__ import annotations

import threading

import pytest
import torch

from mechscope.probes import capture
from mechscope.probes.decoding import generate
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import AttentionEdit, HeadMask, NeuronClamp, SteeringVector, applied
from tests.tiny import tiny_model

TOKENS = torch.tensor([[3, 17, 8, 42, 5, 11, 29, 0, 13]])


def _no_hooks(model) -> bool:
    return all(not hp._forward_hooks for hp in model.hook_dict.values())


def _acts(model, hooks, interventions=()):
    out = capture.run(model, TOKENS, capture=hooks, interventions=interventions, return_logits=True)
    return {h: out.activations[h][0] for h in hooks}, out.logits[0]


@pytest.fixture(params=[None, 2], ids=["mha", "gqa"])
def model(request):
    # float64, so "what the hook does by hand" can be compared at float64 precision; parts an
    # intervention leaves alone are compared for bitwise equality (the very same operations ran)
    return tiny_model(n_layers=3, n_key_value_heads=request.param, dtype=torch.float64)


F64 = dict(rtol=1e-12, atol=1e-12)


def test_uniform_head_mask_gives_uniform_causal_rows(model):
    hooks = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    base, _ = _acts(model, hooks)
    masked, _ = _acts(model, hooks, [HeadMask(1, 2, "uniform")])
    t = TOKENS.shape[1]
    expected = torch.tril(torch.ones(t, t, dtype=torch.float64)) / torch.arange(1, t + 1)[:, None]  # 1/(i+1) on keys ≤ i
    torch.testing.assert_close(masked["blocks.1.attn.hook_pattern"][2], expected, **F64)
    assert not torch.allclose(base["blocks.1.attn.hook_pattern"][2], expected, atol=1e-3)  # it was not uniform
    for h in (0, 1, 3):  # other heads of the layer, and the layer before, are untouched
        torch.testing.assert_close(masked["blocks.1.attn.hook_pattern"][h], base["blocks.1.attn.hook_pattern"][h], rtol=0, atol=0)
    torch.testing.assert_close(masked["blocks.0.attn.hook_pattern"], base["blocks.0.attn.hook_pattern"], rtol=0, atol=0)


def test_zero_head_mask_zeroes_z(model):
    base, base_logits = _acts(model, ["blocks.1.attn.hook_z"])
    masked, logits = _acts(model, ["blocks.1.attn.hook_z"], [HeadMask(1, 0, "zero")])
    z, z0 = masked["blocks.1.attn.hook_z"], base["blocks.1.attn.hook_z"]
    assert torch.count_nonzero(z[:, 0]) == 0 and torch.count_nonzero(z0[:, 0]) > 0
    torch.testing.assert_close(z[:, 1:], z0[:, 1:], rtol=0, atol=0)
    assert (logits - base_logits).abs().max() > 1e-3


def test_neuron_clamp_value_and_scale(model):
    hook = "blocks.1.mlp.hook_post"
    base, _ = _acts(model, [hook])
    clamped, _ = _acts(model, [hook], [NeuronClamp(1, 7, value=3.5)])
    scaled, _ = _acts(model, [hook], [NeuronClamp(1, 7, scale=-2.0)])
    b = base[hook]
    assert torch.all(clamped[hook][:, 7] == 3.5)
    torch.testing.assert_close(scaled[hook][:, 7], -2.0 * b[:, 7], **F64)
    keep = [i for i in range(model.cfg.d_mlp) if i != 7]
    torch.testing.assert_close(clamped[hook][:, keep], b[:, keep], rtol=0, atol=0)
    torch.testing.assert_close(scaled[hook][:, keep], b[:, keep], rtol=0, atol=0)


def test_steering_vector_adds_scaled_vector(model):
    hook = "blocks.0.hook_resid_post"
    vec = torch.linspace(-1, 1, model.cfg.d_model, dtype=torch.float64)
    base, _ = _acts(model, [hook, "blocks.0.hook_resid_pre"])
    steered, _ = _acts(model, [hook, "blocks.0.hook_resid_pre"], [SteeringVector.from_tensor(0, vec, scale=3.0)])
    torch.testing.assert_close(steered[hook], base[hook] + 3.0 * vec, **F64)
    torch.testing.assert_close(steered["blocks.0.hook_resid_pre"], base["blocks.0.hook_resid_pre"], rtol=0, atol=0)


def _to_first_and_self(pattern, q_offset):
    """Half the mass on key 0, half on the query's own absolute position."""
    q, k = pattern.shape[-2:]
    out = torch.zeros_like(pattern)
    pos = torch.arange(q) + q_offset
    out[..., torch.arange(q), pos] += 0.5
    out[..., 0] += 0.5
    return out


class _Recorder:
    """A greedy strategy that keeps every step's logits."""

    name = "recorder"

    def __init__(self):
        self.logits = []

    def select(self, state):
        self.logits.append(state.logits.clone())
        return int(state.logits.argmax())


def test_attention_edit_sees_correct_q_offset_under_kv_cache(model):
    offsets = []

    def edit(pattern, q_offset):
        offsets.append((q_offset, pattern.shape[-2], pattern.shape[-1]))
        return _to_first_and_self(pattern, q_offset)

    iv = [AttentionEdit(1, edit, heads=(1, 3))]
    prompt = TOKENS[0].tolist()
    cached, plain = _Recorder(), _Recorder()
    g1 = generate(model, prompt, 6, strategy=cached, interventions=iv, kv_policy="full")
    with_cache = list(offsets)
    offsets.clear()
    g2 = generate(model, prompt, 6, strategy=plain, interventions=iv, kv_policy=None)
    p = len(prompt)
    assert with_cache == [(0, p, p)] + [(p + i, 1, p + i + 1) for i in range(5)]
    assert all(o == 0 for o, _, _ in offsets)
    assert g1.new_tokens == g2.new_tokens
    for a, b in zip(cached.logits, plain.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the edit is real: the pattern of an edited head is what the function made
    acts, _ = _acts(model, ["blocks.1.attn.hook_pattern"], iv)
    pat = acts["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(pat[1], _to_first_and_self(pat[1][None], 0)[0], rtol=0, atol=0)
    base, _ = _acts(model, ["blocks.1.attn.hook_pattern"])
    torch.testing.assert_close(pat[0], base["blocks.1.attn.hook_pattern"][0], rtol=0, atol=0)


def test_hooks_removed_after_normal_exit_and_exception(model):
    ivs = [HeadMask(0, 1), NeuronClamp(1, 3, value=1.0), SteeringVector.from_tensor(2, torch.ones(model.cfg.d_model))]
    with applied(model, ivs):
        assert model.hook_dict["blocks.0.attn.hook_attn_scores"]._forward_hooks
        assert model.hook_dict["blocks.1.mlp.hook_post"]._forward_hooks
    assert _no_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with applied(model, ivs):
            assert model.hook_dict["blocks.2.hook_resid_post"]._forward_hooks
            raise RuntimeError("boom")
    assert _no_hooks(model)
    with pytest.raises(ZeroDivisionError):  # an exception inside a hook, mid-forward
        capture.run(model, TOKENS, reducers={"blocks.0.hook_resid_post": lambda *a: 1 / 0}, interventions=ivs)
    assert _no_hooks(model)
    assert model_lock_free(model)


def model_lock_free(model) -> bool:
    from mechscope.probes.models import model_lock

    result = []
    t = threading.Thread(target=lambda: result.append(model_lock(model).acquire(timeout=2)))
    t.start()
    t.join()
    return result == [True]


@pytest.mark.parametrize(
    "bad",
    [
        HeadMask(3, 0),
        HeadMask(0, 4),
        HeadMask(-1, 0),
        HeadMask(0, 0, "sideways"),
        NeuronClamp(0, 64, value=0.0),
        NeuronClamp(0, 1),
        NeuronClamp(0, 1, value=1.0, scale=2.0),
        SteeringVector(0, (1.0, 2.0)),
        SteeringVector(7, tuple([0.0] * 32)),
        AttentionEdit(0, lambda p, o: p, heads=(9,)),
        AttentionEdit(5, lambda p, o: p),
    ],
    ids=lambda iv: type(iv).__name__,
)
def test_out_of_range_is_input_error_and_attaches_nothing(model, bad):
    with pytest.raises(InputError) as exc:
        with applied(model, [HeadMask(0, 0), bad]):  # a valid one first: it must not stay attached
            pytest.fail("block entered")
    assert "\n" not in str(exc.value)
    assert _no_hooks(model)


def test_threads_never_see_each_others_hooks():
    model = tiny_model(n_layers=2, dtype=torch.float64)
    clamp = [NeuronClamp(1, 5, value=25.0)]
    seqs = [TOKENS[0]]
    expected_plain = capture.run(model, seqs, return_logits=True).logits[0]
    expected_clamped = capture.run(model, seqs, return_logits=True, interventions=clamp).logits[0]
    assert (expected_plain - expected_clamped).abs().max() > 1e-1  # the clamp changes logits
    errors: list[str] = []
    start = threading.Barrier(2)

    def worker(interventions, expected, label):
        start.wait()
        for i in range(40):
            got = capture.run(model, seqs, return_logits=True, interventions=interventions).logits[0]
            # float64: runs agree to ~1e-15 whatever the threads; the other thread's clamp moves logits by > 0.1
            if not torch.allclose(got, expected, rtol=1e-9, atol=1e-9):
                errors.append(f"{label} iteration {i} saw the other thread's hooks")

    threads = [
        threading.Thread(target=worker, args=(clamp, expected_clamped, "clamped")),
        threading.Thread(target=worker, args=((), expected_plain, "baseline")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _no_hooks(model)


def test_threads_without_lock_would_interfere():
    """Control for the thread test: hooks are model-global, so without the lock a plain
    forward running while another thread's block is open sees its clamp."""
    model = tiny_model(n_layers=2)
    plain = model(TOKENS).detach()
    inside = threading.Event()
    release = threading.Event()

    def holder():
        with applied(model, [NeuronClamp(1, 5, value=25.0)]):
            inside.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    inside.wait(5)
    unlocked = model(TOKENS).detach()  # deliberately bypasses the lock
    release.set()
    t.join()
    assert (unlocked - plain).abs().max() > 1e-1
