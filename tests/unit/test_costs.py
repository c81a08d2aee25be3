"""analyses.catalog's cost model: per-analysis (tokens, passes) formulas counted by hand,
and the estimate = passes × per-call + tokens × per-token from a cached calibration."""

import numpy as np
import pytest
import torch


from mechscope.analyses import catalog
from tests.tiny import tiny_model


def test_retrieval_grid_cost_counted_by_hand():
    from mechscope.analyses.retrieval import RetrievalParams

    p = RetrievalParams(lengths=(100, 200), depths=(0.0, 1.0), needles=(0,), max_new_tokens=5, batch_size=3,
                        proxy_seqs=0)
    # 4 tests: prompts 100+100+200+200 tokens, 5 decoded tokens each; 4 prefills + ceil(4/3) × 5 decode calls
    assert catalog.cost_of(p) == (600 + 4 * 5, 4 + 2 * 5)


def test_masking_cost_counts_every_configuration():
    from mechscope.analyses.retrieval import MaskingParams

    p = MaskingParams(lengths=(100,), depths=(0.5,), needles=(0,), max_new_tokens=2, batch_size=1, ks=(0, 3),
                      seeds=2, heads=((0, 0), (0, 1), (1, 0)))
    # configurations: k=0 once; k=3 top-3 + 2 random draws; each runs 1 test of 100 + 2 tokens, 1 + 2 calls
    assert catalog.cost_of(p) == (4 * 102, 4 * 3)


def test_isotropy_cost_and_unknown_kind():
    from mechscope.analyses.isotropy import IsotropyParams
    from mechscope.analyses.next_token import NextTokenParams

    assert catalog.cost_of(IsotropyParams(n_texts=10, max_tokens=16, batch_size=4, heads=False)) == (160, 3)
    assert catalog.cost_of(IsotropyParams(n_texts=10, max_tokens=16, batch_size=4, heads=True)) == (160, 6)
    assert catalog.cost_of(NextTokenParams()) is None


def test_estimate_uses_one_cached_calibration(tiny, monkeypatch):
    from mechscope.analyses.isotropy import IsotropyParams

    calls = []
    real = tiny.forward

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(tiny, "forward", counting)
    monkeypatch.setattr(catalog, "_CALIBRATION", {})
    per_call, per_token = catalog.calibrate(tiny)
    assert per_call > 0 and per_token >= 0
    n = len(calls)
    assert n == 8  # four timed forwards of 1 token, four of 64
    catalog.calibrate(tiny)
    assert len(calls) == n  # measured once per process and model
    p = IsotropyParams(n_texts=10, max_tokens=16, batch_size=4, heads=False)
    assert catalog.estimate_seconds(p, tiny) == pytest.approx(3 * per_call + 160 * per_token, rel=1e-12)


# ---------------------------------------------------------------------------------------
# Count tests: the analysis runs for real on a tiny model while its work is counted


class Counter:
    """Counts ``model``'s calls and its block work: each block input (``hook_resid_pre``) of b
    rows × t positions adds b·t / n_layers tokens (a forward over some blocks counts that
    share), and a gradient flowing back through it adds twice that (the backward pass). Hooks
    are registered on the hook points' modules directly, so the analysis' own hook resets
    leave them in place; all are removed on exit."""

    def __init__(self, model, monkeypatch):
        self.model, self.calls, self.fwd, self.bwd = model, 0, 0, 0
        real = model.forward

        def counting(*a, **k):
            self.calls += 1
            return real(*a, **k)

        monkeypatch.setattr(model, "forward", counting)

    def __enter__(self):
        def hook(module, inputs, out):
            n = out.shape[0] * out.shape[1]
            self.fwd += n
            if out.requires_grad:
                out.register_hook(lambda g, n=n: setattr(self, "bwd", self.bwd + n))

        self.handles = [b.hook_resid_pre.register_forward_hook(hook) for b in self.model.blocks]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    @property
    def tokens(self) -> int:
        return round((self.fwd + 2 * self.bwd) / self.model.cfg.n_layers)


def _counted(model, monkeypatch, fn, *args, **kwargs):
    with Counter(model, monkeypatch) as c:
        fn(model, *args, **kwargs)
    return c.tokens, c.calls


def _ragged(n: int, seed: int = 0, lo: int = 5, hi: int = 30, vocab: int = 50) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_streaming_count(monkeypatch):
    """Full forward, the two cached policies as two rows (a prefix chunk, then one token a
    step), and the recomputed windows in batches."""
    from mechscope.analyses.streaming import StreamingParams, streaming_perplexity

    m = tiny_model(n_layers=3)
    ids = tuple(_ragged(1, lo=40, hi=41)[0])
    p = StreamingParams(text=ids, n_tokens=37, n_sink=2, window=6, recompute_every=3, batch_size=4)
    assert catalog.cost_of(p, m) == _counted(m, monkeypatch, streaming_perplexity, p)
    p = StreamingParams(text=ids, n_tokens=37, n_sink=2, window=6, policies=("window", "recompute"))
    assert catalog.cost_of(p, m) == _counted(m, monkeypatch, streaming_perplexity, p)


def test_microscope_count(monkeypatch):
    """Texts cut to total_tokens in all, run longest first in padded batches."""
    from mechscope.analyses.microscope import MicroscopeParams, microscope

    m = tiny_model()
    p = MicroscopeParams(texts=tuple(_ragged(9, seed=1)), total_tokens=150, id_points=100, batch_size=4)
    assert catalog.cost_of(p, m) == _counted(m, monkeypatch, microscope, p)


def test_contextualisation_count(monkeypatch):
    """One forward per picked text for the states, forward + backward of the adapter and
    the control each step, and the scored picks in batches."""
    from mechscope.analyses.contextualisation import ContextParams, contextualisation

    m = tiny_model()
    p = ContextParams(texts=tuple(_ragged(8, seed=2)), prefix=3, steps=3, batch_size=16, max_train=40, max_eval=20)
    tokens, calls = _counted(m, monkeypatch, contextualisation, p)
    assert catalog.cost_of(p, m) == (tokens, calls)
    assert tokens > 3 * 2 * 16 * 3 * 3  # the backward passes were counted


def test_neuron_text_scans_count(monkeypatch):
    """max_activating and neuron_activity stop after the last layer they read."""
    from mechscope.analyses.neurons import max_activating, neuron_activity
    from mechscope.analyses.neurons.activity import ActivityParams, MaxActParams

    m = tiny_model(n_layers=4)
    texts = tuple(_ragged(7, seed=3))
    for p in (MaxActParams(layer=1, neuron=3, texts=texts, batch_size=3),
              MaxActParams(layer=3, neuron=3, texts=texts, batch_size=3),
              ActivityParams(texts=texts, layers=(0, 2), batch_size=2, max_types=16, max_positions=16),
              ActivityParams(texts=texts, batch_size=5, max_types=16, max_positions=16)):
        fn = max_activating if isinstance(p, MaxActParams) else neuron_activity
        assert catalog.cost_of(p, m) == _counted(m, monkeypatch, fn, p)


def test_clamp_count(monkeypatch):
    """Given neurons: a baseline run and, per neuron, its clamp and n_controls control clamps,
    each one batch of every prompt padded to the longest."""
    from mechscope.analyses.neurons import clamp_verification
    from mechscope.analyses.neurons.clamp import ClampParams

    m = tiny_model()
    p = ClampParams(neurons=((0, 2), (1, 4)), prompts=((1, 2, 3), (4, 5, 6, 7, 8)), value=10.0, n_controls=2)
    assert catalog.cost_of(p, m) == _counted(m, monkeypatch, clamp_verification, p)


def test_neuron_decode_counted_by_hand():
    """Not a forward: neurons × d_model × vocab multiply-adds, as the tokens whose forward takes
    as many (every block matrix and the unembedding per token); one call per chunk."""
    from mechscope.analyses.neurons.decode import DecodeParams

    m = tiny_model(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50)
    # per block: W_Q, W_K, W_V 32×32 each, W_O 32×32, W_in and W_gate 32×64, W_out 64×32
    per_token = 2 * (4 * 32 * 32 + 3 * 32 * 64) + 32 * 50
    assert catalog._work_per_token(m) == per_token
    assert catalog._work_per_token(tiny_model(n_layers=1, n_key_value_heads=2)) == 2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64 + 32 * 50
    assert catalog.cost_of(DecodeParams(layers=(1,), chunk_size=40), m) == (round(64 * 32 * 50 / per_token), 2)
    assert catalog.cost_of(DecodeParams(), m) == (round(128 * 32 * 50 / per_token), 1)
    assert catalog.cost_of(DecodeParams()) is None  # the formula needs the model's shape


def _planted_task(monkeypatch, model, lengths):
    """The circuit task loader replaced by planted pairs of the given lengths (every clean
    prompt right on the planted model)."""
    from mechscope.analyses.circuits import tasks
    from mechscope.probes import attribution as attr

    rng = np.random.default_rng(0)
    clean, corrupt, ans, dis = [], [], [], []
    for n in lengths:
        seq = [int(x) for x in rng.choice((4, 5, 6, 7), size=n)]
        pos = int(rng.integers(0, n))
        a, b = int(rng.choice([0, 1])), int(rng.choice([2, 3]))
        c, k = seq.copy(), seq.copy()
        c[pos], k[pos] = a, b
        clean.append(c), corrupt.append(k), ans.append([a]), dis.append([b])
    pairs = attr.make_pairs(model, clean, corrupt, ans, dis)
    monkeypatch.setattr(tasks, "load_circuit_task", lambda name: [])
    monkeypatch.setattr(tasks, "task_pairs", lambda model, records: pairs)
    return pairs


def test_circuit_patch_and_discover_count(monkeypatch):
    """Selection over the first max(16, 2n) pairs in chunks of 16, then per direction the
    source and target runs and one forward per layer from that layer on (patching), or the
    head outputs of both sides (discovery; its SAE steps are matrix products, checked by hand)."""
    from mechscope.analyses.circuits import circuit_discover, circuit_patch
    from mechscope.analyses.circuits.params import CircuitDiscoverParams, CircuitPatchParams
    from tests.unit.test_circuits import planted_model

    m = planted_model()
    lengths = [5, 9, 7, 12, 6, 8, 10, 4] * 3
    pairs = _planted_task(monkeypatch, m, lengths)
    clean, _ = __import__("mechscope.probes.attribution", fromlist=["x"]).baseline_metrics(m, pairs)
    assert (clean > 0).all()  # every pair positive: the formula's selection is exact
    p = CircuitPatchParams(n_prompts=10, batch_size=3)
    assert catalog.cost_of(p, m) == _counted(m, monkeypatch, circuit_patch, p)
    p = CircuitPatchParams(n_prompts=5, batch_size=4, directions=("noising",))
    assert catalog.cost_of(p, m) == _counted(m, monkeypatch, circuit_patch, p)
    p = CircuitDiscoverParams(n_prompts=9, n_latents=8, epochs=3, n_train=6)
    tokens, calls = _counted(m, monkeypatch, circuit_discover, p)
    per_token = 2 * 4 * 8 * 4 * 4 + 8 * 8  # 2 layers × 4 heads × (W_Q, W_K, W_V, W_O 8×4), unembedding
    sae = 3 * (6 * 8) * 2 * 8 * 8 * 3 / per_token  # epochs × (prompts × heads) rows × 2 d m × (fwd + bwd)
    assert catalog.cost_of(p, m) == (round(tokens + sae), calls)
