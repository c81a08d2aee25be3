"""Every analysis the workbench knows, for loading and re-running saved results.

``load_result(dir)`` imports each module of the ``analyses`` and ``saes`` packages (our own
code, a fixed set) so that every result kind, parameter kind and intervention kind is
registered, then reads the folder through :meth:`probes.results.Result.load`, which
resolves names through those registries only — a ``result.json`` naming anything else
(``os``, a test module) is refused with a clear message.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path

from mechscope.probes.results import ANALYSES, Result, result_kinds

PACKAGES = ("mechscope.analyses", "mechscope.saes")


@functools.lru_cache(maxsize=1)
def import_all() -> tuple[str, ...]:
    """Import every analysis module once; returns their names."""
    names = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_"):
                continue
            importlib.import_module(f"{package}.{info.name}")
            names.append(f"{package.removeprefix('mechscope.')}.{info.name}")
    return tuple(names)


def load_result(directory: str | Path) -> Result:
    import_all()
    return Result.load(directory)


def kinds() -> list[str]:
    """Result kinds that can be loaded."""
    import_all()
    return result_kinds()


def analyses() -> list[str]:
    """Analysis kinds that can be (re-)run."""
    import_all()
    return sorted(ANALYSES)


# ---------------------------------------------------------------------------------------
# Cost model: how long an analysis takes on this machine, before it runs
#
# Each heavy analysis registers ``cost(params, model=None) -> (tokens, passes)``: the tokens its
# forward passes process in all (a backward pass counts twice the forward's tokens) and how many
# model calls it makes (a decoding step is one call of one token per row). Formulas that need
# the model (its tokenizer for text lengths, its shape) return None without one. Time on this machine is
# ``passes × per_call + tokens × per_token``, both measured once per process and model by
# :func:`calibrate` (a 1-token and a 64-token timed forward).

COSTS: dict = {}  # Params kind -> cost(params, model=None) -> (tokens, passes)


def cost(kind: str):
    """Register the ``(tokens, passes)`` formula of the analysis whose Params kind is ``kind``."""

    def register(fn):
        COSTS[kind] = fn
        return fn

    return register


def cost_of(params, model=None) -> tuple[int, int] | None:
    """``(tokens, passes)`` of running ``params`` on ``model`` (None: no formula for its kind,
    or its formula needs the model and none is given). Fractional tokens are rounded."""
    import_all()
    fn = COSTS.get(getattr(params, "kind", None))
    if fn is None:
        return None
    c = fn(params, model)
    if c is None:
        return None
    tokens, passes = c
    return int(round(tokens)), int(passes)


_CALIBRATION: dict = {}


def calibrate(model) -> tuple[float, float]:
    """``(seconds per model call, seconds per token)`` of ``model`` on its device, from the
    median of three timed forwards of 1 and of 64 tokens (measured once per process and
    model, under the model's lock)."""
    import statistics
    import time

    import torch

    from mechscope.probes.interventions import applied
    from mechscope.probes.models import model_id

    key = (id(model), model_id(model), str(model.cfg.device))
    if key not in _CALIBRATION:
        def timed(n: int) -> float:
            x = torch.ones((1, n), dtype=torch.long, device=model.cfg.device)
            times = []
            for _ in range(4):
                t0 = time.perf_counter()
                model(x, return_type=None)
                times.append(time.perf_counter() - t0)
            return statistics.median(times[1:])

        with applied(model), torch.no_grad():
            one, many = timed(1), timed(64)
        _CALIBRATION[key] = (one, max(many - one, 0.0) / 63)
    return _CALIBRATION[key]


def estimate_seconds(params, model) -> float | None:
    """Estimated seconds of running ``params`` on ``model`` here (None: no cost formula)."""
    c = cost_of(params, model)
    if c is None:
        return None
    per_call, per_token = calibrate(model)
    tokens, passes = c
    return passes * per_call + tokens * per_token


def _ceil(a: int, b: int) -> int:
    return -(-a // max(b, 1))


def _texts(n, default: int = 64) -> int:
    return default if n is None else int(n)


def _tokens(n, default: int = 256) -> int:
    return default if n is None else int(n)


def _grid(p) -> tuple[int, int, int]:
    """(tests, prompt tokens, decode calls) of a NIAH grid decoded ``batch_size`` rows at a time."""
    from mechscope.probes.niah import load_needles

    needles = len(p.needles) or len(load_needles())
    per_len = len(p.depths) * needles
    tests = len(p.lengths) * per_len
    prompt = sum(p.lengths) * per_len
    batch = getattr(p, "batch_size", 1)
    calls = _ceil(tests, batch) * p.max_new_tokens + tests
    return tests, prompt + tests * p.max_new_tokens, calls


@cost("retrieval_heads")
def _cost_retrieval(p, model=None):
    tests, tokens, calls = _grid(p)
    return tokens + p.proxy_seqs * 2 * 50, calls + p.proxy_seqs


@cost("retrieval_masking")
def _cost_masking(p, model=None):
    tests, tokens, calls = _grid(p)
    configs = sum(1 if k == 0 else 1 + p.seeds for k in p.ks) + (0 if p.heads else 1)
    return tokens * configs, calls * configs


@cost("kv_curve")
def _cost_kv_curve(p, model=None):
    tests, tokens, calls = _grid(p)
    rows = tests * 2 * len(p.kv_heads)  # RazorAttention and the uniform cache at every m
    per_row = tokens / max(tests, 1)
    detect = (tokens, calls) if not p.heads else (0, 0)
    return per_row * rows + detect[0], _ceil(rows, p.rows) * (p.max_new_tokens + 1) + detect[1]


@cost("duo_gates")
def _cost_duo(p, model=None):
    mean_len = (p.min_length + p.max_length) / 2
    return p.steps * mean_len * 4, p.steps * 2  # full branch forward + gated forward and backward


@cost("isotropy")
def _cost_isotropy(p, model=None):
    n = _texts(p.n_texts)
    return n * _tokens(p.max_tokens), _ceil(n, p.batch_size) * (2 if p.heads else 1)


@cost("whitening")
def _cost_whitening(p, model=None):
    n = _texts(p.n_texts)
    return 2 * n * _tokens(p.max_tokens), 2 * _ceil(n, p.batch_size)


@cost("decoding_isotropy")
def _cost_decoding_isotropy(p, model=None):
    n = 4 if p.texts is None and p.n_texts is None else _texts(p.n_texts, len(p.texts or ()) or 4)
    steps = 3 * n * p.max_new_tokens  # greedy, sampling and contrastive search
    return n * _tokens(p.max_tokens, 32) * 3 + steps * (1 + p.k), steps


@cost("sinks")
def _cost_sinks(p, model=None):
    n = _texts(p.n_texts)
    v = max(len(p.variants), 1)
    return n * _tokens(p.max_tokens) * v, _ceil(n, p.batch_size) * v


# ---------------------------------------------------------------------------------------
# Formulas that read the model: text lengths, layer counts, matrix products
#
# A forward that runs only some blocks (``start_at_layer`` / ``stop_at_layer``) counts its
# tokens times the fraction of blocks it runs; a matrix product outside the model (decoding
# neurons through the unembedding, training a small SAE) counts as the tokens whose forward
# takes as many multiply-adds (:func:`_work_per_token`).


def _layers(model) -> int:
    return int(model.cfg.n_layers)


def _work_per_token(model) -> int:
    """Multiply-adds of one token's forward: every block's weight matrices (``W_*``; grouped-query
    K/V once per group) and the unembedding."""
    blocks = sum(p.numel() for n, p in model.named_parameters()
                 if n.startswith("blocks.") and n.rsplit(".", 1)[-1].lstrip("_").startswith("W_"))
    return int(blocks) + int(model.cfg.d_model) * int(model.cfg.d_vocab)


def _stop_fraction(model, layer: int) -> float:
    """Share of the blocks run by a capture stopped after block ``layer`` (``probes.capture``)."""
    stop = layer + 1
    return 1.0 if stop >= _layers(model) else stop / _layers(model)


def _batched(lengths, batch_size: int, fraction: float = 1.0, sort: bool = True) -> tuple[float, int]:
    """(tokens, calls) of right-padded batches of ``batch_size`` sequences (longest first, as
    ``probes.capture.run`` orders them, when ``sort``)."""
    lengths = sorted(lengths, reverse=True) if sort else list(lengths)
    tokens = sum(len(lengths[i:i + batch_size]) * max(lengths[i:i + batch_size])
                 for i in range(0, len(lengths), batch_size))
    return tokens * fraction, _ceil(len(lengths), batch_size)


def _text_lengths(p, model) -> list[int]:
    """Token lengths of ``p``'s texts as the analysis encodes them; without a model, ``n_texts``
    (64) texts of ``max_tokens`` (256) tokens."""
    if model is None:
        return [_tokens(p.max_tokens)] * _texts(p.n_texts)
    from mechscope.probes.texts import encode_texts

    return [len(s) for s in encode_texts(model, p.selected(), p.max_tokens)]


def _sequence_lengths(model, seqs) -> list[int]:
    from mechscope.probes.capture import _as_sequences

    return [len(s) for s in _as_sequences(model, list(seqs))]


@cost("streaming_ppl")
def _cost_streaming(p, model=None):
    if p.text is not None and not isinstance(p.text, str):
        n = len(p.text)
    elif model is not None and getattr(model, "tokenizer", None) is not None:
        from mechscope.probes import datasets
        from mechscope.probes.tokens import text_ids

        n = len(text_ids(model, p.text if p.text is not None else datasets.load_long_text(p.long_text)))
    else:
        n = p.n_tokens
    n = min(n, p.n_tokens)
    cap = p.n_sink + p.window
    if n <= cap + 1:
        return 0, 0
    tokens, calls = 0.0, 0
    if "full" in p.policies or "recompute" in p.policies:  # one forward of the text (to the context)
        tokens += min(n, model.cfg.n_ctx) if model is not None else n
        calls += 1
    rows = len([q for q in ("window", "sink_window") if q in p.policies])
    if rows:  # both cached policies as rows of one batch: the first cap tokens at once, then one token a step
        first = min(cap, n - 1)
        tokens += rows * (first + (n - 1 - first))
        calls += 1 + (n - 1 - first)
    if "recompute" in p.policies:  # a window of cap + 1 tokens at every recompute_every-th position
        k = len(range(cap, n - 1, p.recompute_every))
        tokens += k * (cap + 1)
        calls += _ceil(k, p.batch_size)
    return tokens, calls


@cost("microscope")
def _cost_microscope(p, model=None):
    lengths, total = [], 0
    for n in _text_lengths(p, model):
        if total >= p.total_tokens:
            break
        n = min(n, p.total_tokens - total)
        lengths.append(n)
        total += n
    return _batched(lengths, p.batch_size)


@cost("contextualisation")
def _cost_contextualisation(p, model=None):
    """The picks are drawn as the analysis draws them (same seed), so the texts read are exact."""
    import torch

    k = p.prefix
    lengths = _text_lengths(p, model)
    usable = [i for i, n in enumerate(lengths) if n >= k]
    if len(usable) < 2:
        return 0, 0
    n_eval = min(len(usable) - 1, max(1, round(len(usable) * p.eval_fraction)))
    g = torch.Generator().manual_seed(p.seed)
    picked = []
    for texts, n_max in ((usable[:-n_eval], p.max_train), (usable[-n_eval:], p.max_eval)):
        cand = [i for i in texts for _ in range(k - 1, lengths[i])]
        picked.append([cand[j] for j in torch.randperm(len(cand), generator=g)[:n_max].tolist()])
    tr, ev = picked
    # every block's state at the picks: one forward per text with a pick, for each split
    states = sum(lengths[i] for i in set(tr)) + sum(lengths[i] for i in set(ev))
    calls = len(set(tr)) + len(set(ev))
    b = min(p.batch_size, len(tr))
    train = p.steps * 2 * b * k * 3  # adapter and control: forward + backward (twice the forward) of b × k
    evaluate = 2 * len(ev) * k
    return states + train + evaluate, calls + 2 * p.steps + 2 * _ceil(len(ev), p.batch_size)


@cost("max_activating")
def _cost_max_activating(p, model=None):
    frac = 1.0 if model is None else _stop_fraction(model, p.layer)
    return _batched(_text_lengths(p, model), p.batch_size, frac)


@cost("neuron_activity")
def _cost_neuron_activity(p, model=None):
    frac = 1.0 if model is None else _stop_fraction(model, max(p.layers) if p.layers else _layers(model) - 1)
    return _batched(_text_lengths(p, model), p.batch_size, frac)


def _decode_cost(model, n_layers: int, chunk_size: int) -> tuple[float, int]:
    """[neurons × d_model] × [d_model × vocab] in chunks, as equivalent tokens; one call a chunk."""
    rows = n_layers * int(model.cfg.d_mlp)
    return rows * int(model.cfg.d_model) * int(model.cfg.d_vocab) / _work_per_token(model), _ceil(rows, chunk_size)


@cost("neuron_decode")
def _cost_neuron_decode(p, model=None):
    if model is None:
        return None
    return _decode_cost(model, len(p.layers) if p.layers is not None else _layers(model), p.chunk_size)


@cost("clamp_verification")
def _cost_clamp(p, model=None):
    """Upper bound where the neurons are chosen: ``n`` of them (fewer when fewer qualify)."""
    if model is None:
        return None
    prompts = [q for q in p.prompts if (q.strip() if isinstance(q, str) else len(q) > 0)]
    if not prompts:
        return 0, 0
    tokens = calls = 0
    if p.neurons is None:
        layers = _layers(model) - (p.min_layer or 0)
        tokens, calls = _decode_cost(model, layers, 1024)
        n_pairs = p.n
    else:
        n_pairs = len(p.neurons)
    lengths = _sequence_lengths(model, prompts)
    runs = 1 + n_pairs * (1 + p.n_controls)  # the baseline, then each neuron and its controls
    return tokens + runs * len(lengths) * max(lengths), calls + runs


# Circuits. A task's prompts are selected as positive (the model right on the clean prompt)
# from the first max(16, 2n) pairs; the formulas take the first n of those as the ones used
# (exact when they are positive; the rare second pass over the whole task, taken when fewer
# than n are positive, is not counted).


def _task_lengths(model, task: str) -> list[int]:
    from mechscope.analyses.circuits import tasks

    return [int(n) for n in tasks.task_pairs(model, tasks.load_circuit_task(task)).lengths]


def _chunk_tokens(lengths, batch_size: int) -> list[tuple[int, int]]:
    """(rows, padded length) of each chunk of ``batch_size`` pairs, in order."""
    return [(len(lengths[i:i + batch_size]), max(lengths[i:i + batch_size])) for i in range(0, len(lengths), batch_size)]


def _circuit_pairs(p, model) -> tuple[list[int], float, int]:
    """(token lengths of the n pairs used, tokens and calls of the selection)."""
    lengths = _task_lengths(model, p.task)
    m = min(len(lengths), max(16, 2 * p.n_prompts))
    chunks = _chunk_tokens(lengths[:m], 16)
    return lengths[:min(p.n_prompts, m)], 2 * sum(b * t for b, t in chunks), 2 * len(chunks)


def _patch_cost(model, lengths, batch_size: int) -> tuple[float, int]:
    """``probes.attribution.patch_nodes`` over every layer: per chunk, the source and target
    runs, then per layer l one forward from l on over (heads + 1 MLP) copies of the chunk."""
    L, H = _layers(model), int(model.cfg.n_heads)
    nb = H if model.cfg.attn_only else H + 1
    tokens = calls = 0
    for b, t in _chunk_tokens(lengths, batch_size):
        tokens += 2 * b * t + nb * b * t * (L + 1) / 2  # Σ_l (L − l) / L = (L + 1) / 2
        calls += 2 + L
    return tokens, calls


def _head_vectors_cost(lengths, batch_size: int = 16) -> tuple[float, int]:
    chunks = _chunk_tokens(lengths, batch_size)
    return sum(b * t for b, t in chunks), len(chunks)


def _sae_train_cost(model, p, n_pairs: int) -> float:
    """Full-batch SAE steps on the head vectors, as equivalent tokens: per step, every row
    (training prompt × head) is encoded and decoded (2 · d · latents multiply-adds) forward and
    twice that backward."""
    n = 2 * n_pairs if not p.n_train else min(p.n_train, 2 * n_pairs)
    d = int(model.cfg.d_head) if (p.isometric and not p.shared) else int(model.cfg.d_model)
    rows = n * _layers(model) * int(model.cfg.n_heads)
    return p.epochs * rows * 2 * d * p.n_latents * 3 / _work_per_token(model)


@cost("circuit_patch")
def _cost_circuit_patch(p, model=None):
    if model is None:
        return None
    lengths, tokens, calls = _circuit_pairs(p, model)
    t, c = _patch_cost(model, lengths, p.batch_size)
    return tokens + t * len(p.directions), calls + c * len(p.directions)


@cost("circuit_discover")
def _cost_circuit_discover(p, model=None):
    if model is None:
        return None
    lengths, tokens, calls = _circuit_pairs(p, model)
    t, c = _head_vectors_cost(lengths)
    return tokens + 2 * t + _sae_train_cost(model, p, len(lengths)), calls + 2 * c
