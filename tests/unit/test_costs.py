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
    leave them in place, and again at every model call, so they run after the analysis' own
    hooks (a replaced block input, such as EAP-IG's interpolated embedding, is the one
    counted); all are removed on exit."""

    def __init__(self, model, monkeypatch):
        self.model, self.calls, self.fwd, self.bwd = model, 0, 0, 0
        self.handles = None
        real = model.forward

        def counting(*a, **k):
            self.calls += 1
            if self.handles is not None:  # last in line: count what the blocks receive after every hook
                self._register()
            return real(*a, **k)

        monkeypatch.setattr(model, "forward", counting)

    def _hook(self, module, inputs, out):
        n = out.shape[0] * out.shape[1]
        self.fwd += n
        if out.requires_grad:
            out.register_hook(lambda g, n=n: setattr(self, "bwd", self.bwd + n))

    def _register(self):
        for h in self.handles or ():
            h.remove()
        self.handles = [b.hook_resid_pre.register_forward_hook(self._hook) for b in self.model.blocks]

    def __enter__(self):
        self._register()
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = None

    @property
    def work(self) -> float:
        return (self.fwd + 2 * self.bwd) / self.model.cfg.n_layers

    @property
    def tokens(self) -> int:
        return round(self.work)


def _counted(model, monkeypatch, fn, *args, **kwargs):
    with Counter(model, monkeypatch) as c:
        fn(model, *args, **kwargs)
    return c.tokens, c.calls


def _counted_work(model, monkeypatch, fn, *args, **kwargs):
    """(unrounded tokens, calls): for sums with matrix products counted by hand."""
    with Counter(model, monkeypatch) as c:
        fn(model, *args, **kwargs)
    return c.work, c.calls


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


# ---------------------------------------------------------------------------------------
# SAEs: a tiny SAE at block 0 of a 3-block model, saved as a folder


def _tiny_sae_folder(tmp_path, d_in: int = 32, d_sae: int = 48, layer: int = 0):
    from tests.unit.test_saes import _save, _topk_sae

    return str(_save(_topk_sae(d_in, d_sae, 4, f"blocks.{layer}.hook_resid_post"), tmp_path))


def test_sae_eval_count(monkeypatch, tmp_path):
    """Per SAE and set of N rows × T tokens: the mean over the first 64 rows stopped after the
    hook (batches of 16), then six full forwards per batch; the encode + decode of every token
    (2 · d_in · d_sae multiply-adds) is a matrix product, added by hand."""
    from mechscope.saes.evals import SaeEvalParams, sae_eval

    m = tiny_model(n_layers=3)
    sae = _tiny_sae_folder(tmp_path)
    texts = tuple(_ragged(9, seed=4, lo=6, hi=16))
    p = SaeEvalParams(texts=texts, n_texts=5, max_tokens=8, saes=(sae,), batch_size=2)
    tokens, calls = _counted_work(m, monkeypatch, sae_eval, p)
    n = min(5, sum(len(t) >= 8 for t in texts))
    assert calls == 1 + 6 * -(-n // 2)
    assert catalog.cost_of(p, m) == (round(tokens + n * 8 * 2 * 32 * 48 / catalog._work_per_token(m)), calls)


def test_sae_features_count(monkeypatch, tmp_path):
    """The texts longest first in padded batches, stopped after the SAE's block; every token
    but each text's first encoded (d_in · d_sae, by hand)."""
    from mechscope.saes.features import SaeFeaturesParams, sae_features

    m = tiny_model(n_layers=3)
    sae = _tiny_sae_folder(tmp_path)
    texts = tuple(_ragged(7, seed=5))
    p = SaeFeaturesParams(texts=texts, sae=sae, k=2, batch_size=3)
    tokens, calls = _counted_work(m, monkeypatch, sae_features, p)
    encode = sum(len(t) - 1 for t in texts) * 32 * 48 / catalog._work_per_token(m)
    assert catalog.cost_of(p, m) == (round(tokens + encode), calls)


def test_sae_steer_count(monkeypatch, tmp_path):
    """The neutral prompts as one padded batch, plain and per steered latent; the logit
    effects (d_sae × d_in × vocab, one chunk) by hand."""
    from mechscope.probes import readout
    from mechscope.saes.steering import SteerVerifyParams, steer_verification

    m = tiny_model(n_layers=3)
    sae = _tiny_sae_folder(tmp_path)
    monkeypatch.setattr(readout, "NEUTRAL_PROMPTS", _ragged(4, seed=6, lo=3, hi=9))
    p = SteerVerifyParams(sae=sae, n=3)
    tokens, calls = _counted_work(m, monkeypatch, steer_verification, p)
    assert calls == 4
    decode = 48 * 32 * 50 / catalog._work_per_token(m)
    assert catalog.cost_of(p, m) == (round(tokens + decode), calls + 1)


def test_sae_geometry_count(monkeypatch, tmp_path):
    """Weights only: nothing runs the model. With lobes: the texts in padded batches stopped
    after the deepest SAE's block; each SAE encodes the full windows (by hand)."""
    from mechscope.saes.geometry import SaeGeometryParams, cooccurrence
    from mechscope.saes.store import load_sae

    m = tiny_model(n_layers=3)
    a, b = _tiny_sae_folder(tmp_path / "a"), _tiny_sae_folder(tmp_path / "b", d_sae=40, layer=1)
    texts = tuple(_ragged(6, seed=7, lo=5, hi=20))
    assert catalog.cost_of(SaeGeometryParams(saes=(a, b)), m) == (0, 0)
    assert catalog.cost_of(SaeGeometryParams(saes=(a, b))) == (0, 0)
    p = SaeGeometryParams(saes=(a, b), lobes=True, texts=texts, window=4, batch_size=4)
    saes = {n: load_sae(n, model=m) for n in (a, b)}
    tokens, calls = _counted_work(m, monkeypatch, cooccurrence, saes, p)
    windowed = sum((len(t) - 1) // 4 * 4 for t in texts)
    encode = windowed * 32 * (48 + 40) / catalog._work_per_token(m)
    assert catalog.cost_of(p, m) == (round(tokens + encode), calls)


# ---------------------------------------------------------------------------------------
# logit lens, generation, ACT


def test_logit_lens_count(monkeypatch):
    """One forward; (n_layers + 1) × T positions through the unembedding (by hand)."""
    from mechscope.analyses.logit_lens import LogitLensParams, logit_lens

    m = tiny_model(n_layers=3)
    p = LogitLensParams(prompt=tuple(range(1, 12)))
    tokens, calls = _counted_work(m, monkeypatch, logit_lens, p)
    lens = 4 * 11 * 32 * 50 / catalog._work_per_token(m)
    assert catalog.cost_of(p, m) == (round(tokens + lens), calls)


def test_playground_count(monkeypatch):
    """Greedy under a full cache: both rows per step and one batched teacher-forced pass;
    without a cache each generation recomputes its text; a strategy scored on the
    intervened side only: the greedy baseline and the strategy twice (decoding, forced).
    No tokenizer, so no EOS: every step runs."""
    from mechscope.analyses.playground import PlaygroundParams, compare_generations
    from mechscope.probes.cad import CAD
    from mechscope.probes.decoding import Sample
    from mechscope.probes.interventions import HeadMask

    m = tiny_model(n_layers=3)
    prompt = tuple(_ragged(1, seed=8, lo=9, hi=10)[0])
    for p in (PlaygroundParams(prompt=prompt, max_new_tokens=6, interventions=(HeadMask(1, 2),)),
              PlaygroundParams(prompt=prompt, max_new_tokens=5, interventions=(HeadMask(0, 1),), kv_policy=None),
              PlaygroundParams(prompt=prompt, max_new_tokens=4, strategy=Sample(temperature=0.7, seed=1),
                               strategy_side="intervened")):
        assert catalog.cost_of(p, m) == _counted(m, monkeypatch, compare_generations, p)
    # CAD's with-context branch rides along as a second row where it can: the formula's
    # separate side calls bound it
    p = PlaygroundParams(prompt=prompt, max_new_tokens=4, strategy=CAD(context=(3, 4, 5, 6)), strategy_side="intervened")
    tokens, calls = _counted(m, monkeypatch, compare_generations, p)
    bound = catalog.cost_of(p, m)
    assert bound[0] >= tokens and bound[1] >= calls and tokens > 3 * (9 + 3)


def _act_items(n: int, seed: int, choices: int = 2):
    rows = _ragged(n * (1 + choices), seed=seed, lo=2, hi=7)
    out = []
    for i in range(n):
        prompt, *cands = rows[i * (1 + choices):(i + 1) * (1 + choices)]
        out.append({"prompt": prompt, "answer": cands[0], "choices": cands})
    return out


def test_act_count(monkeypatch):
    """Given heads: the held-out (prompt, choice) rows in padded batches of 60, plain and with
    ACT (exact). A search reads the attention of every calibration text, scores the
    calibration rows, and runs each candidate head from its layer on: which heads have hidden
    sinks depends on the texts, so the formula (every head of the searched layers) bounds it."""
    from mechscope.analyses import act

    m = tiny_model(n_layers=4)
    items = {"calib": _act_items(6, seed=9), "heldout": _act_items(4, seed=10)}
    monkeypatch.setattr(act, "_load", lambda split, task, max_items=None: items[split][:max_items])
    p = act.ACTParams(heads=((1, 0), (2, 3)), n_boot=20)
    assert catalog.cost_of(p, m) == _counted(m, monkeypatch, act.act_calibration, p)
    for p in (act.ACTParams(n_boot=20, threshold=0.02), act.ACTParams(n_boot=20, search="greedy", max_candidates=3,
                                                                     threshold=0.02, min_hidden_rate=0.0)):
        tokens, calls = _counted(m, monkeypatch, act.act_calibration, p)
        bound = catalog.cost_of(p, m)
        assert bound[0] >= tokens and bound[1] >= calls
        assert calls > 1 + 2 * 1  # a search ran


def test_circuit_edges_count(monkeypatch):
    """Selection, the attribution batches (EAP: clean and corrupted node outputs, one forward
    and backward; EAP-IG: one per step; node patching as patch_nodes) and the evaluation of
    the distinct circuits stacked into forwards. How many circuits are distinct depends on the
    scores: with the run's own count the formula is exact, and the formula's own (every
    method, ranking, draw and size apart) bounds it."""
    from mechscope.analyses.circuits.edges import EdgeCircuitParams, circuit_edges
    from tests.unit.test_circuits import planted_model

    from mechscope.analyses.circuits import edges, tasks

    m = planted_model()
    _planted_task(monkeypatch, m, [5, 9, 7, 12, 6, 8, 10, 4] * 3)
    monkeypatch.setattr(edges, "load_circuit_task", tasks.load_circuit_task)
    monkeypatch.setattr(edges, "task_pairs", tasks.task_pairs)
    for p in (EdgeCircuitParams(n_prompts=5, n_eval=4, ig_steps=3, batch_size=3, n_random=2, n_boot=10,
                                n_boot_jaccard=3, percentages=(1.0, 10.0, 50.0, 100.0)),
              EdgeCircuitParams(n_prompts=4, n_eval=3, methods=("eap_ig",), ablation="mean", ig_steps=2, batch_size=2,
                                n_boot=10, n_boot_jaccard=3, held_out=False)):
        with Counter(m, monkeypatch) as c:
            result = circuit_edges(m, p)
        n_masks = int(result.summary["n_circuits"].iloc[0])
        assert catalog._edges_cost(p, m, n_masks) == pytest.approx((c.work, c.calls), rel=1e-12)
        bound = catalog.cost_of(p, m)
        assert bound[0] >= c.tokens and bound[1] >= c.calls


def test_niah_counted_by_hand():
    """Per test: the prompt (the grid length) at once under a full cache, then one call per
    new token after the first (an upper bound: a newline or EOS stops it); the prefix and the
    last prompt token apart when interventions act on decoding only; no cache: the text
    recomputed at every step."""
    from mechscope.analyses.niah import NiahParams
    from mechscope.probes.interventions import HeadMask

    p = NiahParams(lengths=(100, 200), depths=(0.0, 0.5, 1.0), needles=(0, 1), max_new_tokens=4)
    assert catalog.cost_of(p) == (6 * (100 + 3) + 6 * (200 + 3), 12 * 4)
    p = p.replace(interventions=(HeadMask(0, 1),))
    assert catalog.cost_of(p) == (6 * (100 + 3) + 6 * (200 + 3), 12 * 5)
    p = NiahParams(lengths=(100,), depths=(0.5,), needles=(0,), max_new_tokens=3, kv_policy="none")
    assert catalog.cost_of(p) == (100 + 101 + 102, 3)
