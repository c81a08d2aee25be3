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
# Analyses that can run for minutes but have no formula yet (their time is mostly outside the
# model's forward passes, or depends on which heads come out on top): the dashboard runs them
# in the background without an estimate.
HEAVY_WITHOUT_FORMULA = {"circuit_compare", "sae_absorption"}


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
    blocks = sum(p.numel() for block in model.blocks for n, p in block.named_parameters()
                 if n.rsplit(".", 1)[-1].lstrip("_").startswith("W_"))
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


# SAEs. A forward that reads an SAE's hook stops after the hook's block where the analysis
# asks for no logits; the SAE's own products (encoding d_in × d_sae, decoding d_sae × d_in per
# token) count as equivalent tokens. The SAE's hook and widths come from its cfg.json (None
# for an SAE-Lens release: its shape is not known before it is loaded).


def _sae_shape(name: str) -> tuple[int | None, int, int] | None:
    """(layer of the hook, d_in, d_sae) of a shipped SAE or SAE folder, from its cfg.json."""
    import json

    from mechscope.saes.store import CFG, layer_of_hook, resolve

    if str(name).strip().startswith("sae-lens:"):
        return None
    path, _ = resolve(name)
    cfg = json.loads((path / CFG).read_text())
    hook = (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name", "")
    return layer_of_hook(hook), int(cfg["d_in"]), int(cfg["d_sae"])


def _sae_names(names) -> list[str]:
    from mechscope.saes.store import shipped_names

    return list(names) or shipped_names()


def _hook_fraction(model, layer) -> float:
    return 1.0 if layer is None else _stop_fraction(model, layer)


def _eval_sets(p, model) -> list[tuple[int, int]] | None:
    """(rows, tokens per row) of each eval set of ``sae_eval`` (None: no corpus is built)."""
    import json

    from mechscope.saes import evals

    if p.texts is not None or p.text_set:
        n = sum(1 for k in _text_lengths(p, model) if k >= p.max_tokens)
        return [(min(n, p.n_texts), p.max_tokens)]
    if p.source == "corpus":
        from mechscope.data.sae_corpus import default_out

        manifest = default_out() / "manifest.json"
        if not manifest.exists():
            return None
        info = json.loads(manifest.read_text())["files"]["heldout"]
        return [(min(p.n_texts, int(info["rows"])), int(info["ctx"]))]
    return [evals.domain_rows(d, p.n_texts).shape for d in (list(p.domains) or evals.eval_domains())]


@cost("sae_eval")
def _cost_sae_eval(p, model=None):
    """Per SAE and eval set of N rows × T tokens: the mean activation over the first 64 rows
    (batches of 16, stopped after the hook), then per batch the clean forward (which encodes
    and decodes every token) and five spliced ones (SAE, zero; from position 1: SAE, zero, mean)."""
    if model is None:
        return None
    sets = _eval_sets(p, model)
    shapes = [_sae_shape(n) for n in _sae_names(p.saes)]
    if sets is None or any(s is None for s in shapes):
        return None
    tokens = calls = 0
    for layer, d_in, d_sae in shapes:
        for n, t in sets:
            m = min(n, 64)
            tokens += m * t * _hook_fraction(model, layer) + 6 * n * t + n * t * 2 * d_in * d_sae / _work_per_token(model)
            calls += _ceil(m, 16) + 6 * _ceil(n, p.batch_size)
    return tokens, calls


@cost("sae_features")
def _cost_sae_features(p, model=None):
    """The texts longest first in padded batches, stopped after the SAE's hook; every real
    token but the first of each text encoded."""
    if model is None:
        return None
    shape = _sae_shape(p.sae)
    if shape is None:
        return None
    layer, d_in, d_sae = shape
    lengths = _text_lengths(p, model)
    tokens, calls = _batched(lengths, p.batch_size, _hook_fraction(model, layer))
    return tokens + sum(n - 1 for n in lengths) * d_in * d_sae / _work_per_token(model), calls


@cost("sae_steer_verify")
def _cost_sae_steer(p, model=None):
    """Every latent's decoder direction through the unembedding (chunks of 1024 latents), then
    the neutral prompts as one padded batch with logits: once plain, once per steered latent."""
    if model is None:
        return None
    from mechscope.probes.readout import NEUTRAL_PROMPTS

    shape = _sae_shape(p.sae)
    if shape is None:
        return None
    _, d_in, d_sae = shape
    lengths = _sequence_lengths(model, NEUTRAL_PROMPTS)
    runs = 1 + min(p.n, d_sae)
    decode = d_sae * d_in * int(model.cfg.d_vocab) / _work_per_token(model)
    return decode + runs * len(lengths) * max(lengths), _ceil(d_sae, 1024) + runs


@cost("sae_geometry")
def _cost_sae_geometry(p, model=None):
    """Weights only (decoder covariances, crystal search: not counted) unless ``lobes``: then
    the texts in padded batches, stopped after the deepest SAE's hook, and each SAE encoding
    the full co-occurrence windows."""
    if not p.lobes:
        return 0, 0
    if model is None:
        return None
    shapes = [_sae_shape(n) for n in _sae_names(p.saes)]
    if any(s is None for s in shapes):
        return None
    layers = [s[0] for s in shapes]
    frac = 1.0 if any(l is None for l in layers) else _stop_fraction(model, max(layers))
    lengths = _text_lengths(p, model)
    tokens, calls = _batched(lengths, p.batch_size, frac)
    windowed = sum((n - 1) // p.window * p.window for n in lengths)
    encode = sum(windowed * d_in * d_sae for _, d_in, d_sae in shapes) / _work_per_token(model)
    return tokens + encode, calls


@cost("logit_lens")
def _cost_logit_lens(p, model=None):
    """One forward of the prompt; every block's residual (and the final one again) through
    the unembedding."""
    if model is None:
        return None
    from mechscope.probes.prompts import prompt_ids

    t = len(prompt_ids(model, p.prompt, p.prepend_bos))
    lens = (_layers(model) + 1) * t * int(model.cfg.d_model) * int(model.cfg.d_vocab) / _work_per_token(model)
    return t + lens, 1


# Generation: a prompt of P tokens prefilled (in the policy's chunks; the prefix and the last
# token apart when interventions act on decoding only), then one call of one token per new
# token after the first. Stopping at EOS or a stop token ends it earlier: the formulas are
# exact when every step runs, an upper bound otherwise.


def _generate_cost(p_len: int, n_new: int, policy=None, strategy=None, split: bool = False,
                   side_prompt: int | None = None, model=None) -> tuple[float, int]:
    """Upper bound of one ``probes.decoding.generate`` call: ``policy`` None recomputes the
    whole text every step; a strategy with a side branch (CAD, contrastive decoding, DeCoRe)
    adds its prefill (``side_prompt`` tokens) and one token a step, in calls of its own
    where it cannot ride along; contrastive search adds its k candidates a step."""
    if n_new <= 0:
        return 0, 0
    if policy is None:
        return n_new * p_len + n_new * (n_new - 1) / 2, n_new
    chunk = getattr(policy, "prefill_chunk", None) or max(p_len, 1)
    if split and p_len > 1:
        tokens, calls = p_len, _ceil(p_len - 1, chunk) + 1
    else:
        tokens, calls = p_len, _ceil(p_len, chunk)
    tokens, calls = tokens + (n_new - 1), calls + (n_new - 1)
    name = getattr(strategy, "name", None)
    if name in ("cad", "contrastive_decoding", "decore"):
        side = p_len if side_prompt is None else side_prompt
        tokens += side + (n_new - 1)
        calls += _ceil(side, chunk) + 1 + (n_new - 1)
    elif name == "contrastive":
        k = min(int(getattr(strategy, "k", 1)), int(model.cfg.d_vocab) if model is not None else 10 ** 9)
        tokens += k * (n_new - 1)
        calls += k * (n_new - 1)
    return tokens, calls


def _side_prompt(model, strategy, prompt: list[int]) -> int:
    if getattr(strategy, "name", None) == "cad":
        return len(strategy.with_context(model, prompt))
    return len(prompt)


@cost("playground")
def _cost_playground(p, model=None):
    """Baseline and intervened continuations, then the baseline's tokens scored on both sides.
    Greedy or sampling under a full cache: both rows in one pass per step and one batched
    teacher-forced pass of 2 × (P + N); otherwise each generation apart (see
    :func:`_generate_cost`); exact unless a row stops at EOS."""
    if model is None:
        return None
    from mechscope.probes.decoding import FullCache, Greedy
    from mechscope.probes.prompts import prompt_ids

    prompt = [int(i) for i in prompt_ids(model, p.prompt, p.prepend_bos)]
    P, N, strat, policy = len(prompt), p.max_new_tokens, p.strategy, p.kv_policy
    full = isinstance(policy, FullCache)
    split = bool(getattr(strat, "wants_prefix_cache", False))
    side = _side_prompt(model, strat, prompt)

    def gen(s, pol):
        return _generate_cost(P, N, pol, s, split and pol is not None and s is strat, side, model)

    if p.strategy_side == "intervened":
        base_len = side if hasattr(strat, "with_context") else P
        b = _generate_cost(base_len, N, FullCache(), Greedy())
        s = gen(strat, policy)
        return b[0] + 2 * s[0], b[1] + 2 * s[1]
    if full and not hasattr(strat, "hooks") and not getattr(strat, "needs_model", False):
        return 2 * (P + N - 1) + 2 * (P + N), N + 1
    b, i = gen(strat, FullCache()), gen(strat, policy)
    tokens, calls = b[0] + i[0], b[1] + i[1]
    if policy is None or full:
        return tokens + 2 * (P + N), calls + 1
    forced = _generate_cost(P, N, policy)
    return tokens + (P + N) + forced[0], calls + 1 + forced[1]


@cost("niah")
def _cost_niah(p, model=None):
    """One greedy generation per test, its prompt taken as the grid length (upper bound:
    stops at a newline or EOS)."""
    from mechscope.probes.decoding import FullCache
    from mechscope.probes.niah import load_needles

    needles = len(p.needles) or len(load_needles())
    policy = None if p.kv_policy == "none" else (FullCache() if p.kv_policy == "full" else p.kv_policy)
    split = bool(p.interventions) and p.mask_scope == "decode"
    tokens = calls = 0
    for n in p.lengths:
        t, c = _generate_cost(int(n), p.max_new_tokens, policy, None, split)
        tokens += t * len(p.depths) * needles
        calls += c * len(p.depths) * needles
    return tokens, calls


def _act_batches(model, pairs, batch_size: int) -> list[tuple[int, int]]:
    from mechscope.analyses import act

    return [tuple(e.tokens.shape) for e in act._encode(model, pairs, batch_size)]


@cost("act")
def _cost_act(p, model=None):
    """Held-out: every (prompt, choice) row in padded batches of 60, plain and with ACT. A
    search first reads the attention of every calibration text (batches of 32, longest first),
    scores the calibration rows plainly, and per candidate head runs the blocks from its
    layer on (the residual entering each layer computed once). Which heads are candidates
    (those with hidden sinks) depends on the texts: the bound takes every head of the searched
    layers (greedy: the ``max_candidates`` earliest), each layer's residual once, and a
    held-out pass with ACT."""
    if model is None:
        return None
    from mechscope.analyses import act

    L, H = _layers(model), int(model.cfg.n_heads)

    def full(batches):
        return sum(b * t for b, t in batches), len(batches)

    held, _, _ = act._choice_pairs(act._load("heldout", p.task, p.max_items))
    t, c = full(_act_batches(model, held, 60))
    tokens, calls = t * (2 if p.heads is None or p.heads else 1), c * (2 if p.heads is None or p.heads else 1)
    if p.heads is not None:
        return tokens, calls
    calib = act._load("calib", p.task, p.max_items)
    if p.search == "reference":
        pairs = act._choice_pairs(calib)[0]
        layers = list(range(2, L - 1)) if p.layers is None else sorted(set(p.layers))
        cands = [l for l in layers for _ in range(H)]
        batch = 60
    else:
        pairs = [(it["prompt"], it["answer"]) for it in calib]
        layers = list(range(L)) if p.layers is None else sorted(set(p.layers))
        cands = [l for l in layers for _ in range(H)][:p.max_candidates]
        batch = 50
    t, c = _batched(_sequence_lengths(model, [a + b for a, b in pairs]), 32)  # hidden-sink rates
    tokens, calls = tokens + t, calls + c
    batches = _act_batches(model, pairs, batch)
    t, c = full(batches)
    tokens, calls = tokens + t, calls + c
    for l in sorted(set(cands)):  # the residual entering layer l (the embedding alone: no model call)
        if l > 0:
            tokens, calls = tokens + t * l / L, calls + c
    for l in cands:
        tokens, calls = tokens + t * (L - l) / L, calls + c
    return tokens, calls


@cost("circuit_edges")
def _cost_circuit_edges(p, model=None):
    return None if model is None else _edges_cost(p, model)


def _edges_cost(p, model, n_masks: int | None = None) -> tuple[float, int]:
    """Selection over the first max(16, 2·want) pairs (want = n_prompts + n_eval when held
    out), the split as :func:`analyses.circuits.edges._split` makes it; per attribution batch
    of ``batch_size`` pairs, EAP / EAP-IG run the clean and corrupted node outputs (clean only
    under mean ablation) and a forward and backward per integration step; node patching is
    ``patch_nodes``. The evaluation runs each batch's ablated outputs (patching), then every
    distinct circuit, as many stacked as fit the buffer. The circuits that coincide (one
    top-n set for two sizes or rankings) are evaluated once, which depends on the scores:
    the bound counts the full model, the empty circuit and every (method, ranking, draw,
    size) apart."""
    from mechscope.probes.edge_attribution import EdgeGraph

    lengths = _task_lengths(model, p.task)
    want = p.n_prompts + (p.n_eval if p.held_out else 0)
    m = min(len(lengths), max(16, 2 * want))
    chunks = _chunk_tokens(lengths[:m], 16)
    tokens, calls = 2 * sum(b * t for b, t in chunks), 2 * len(chunks)
    k = min(want, m)
    if p.held_out:
        n_eval = min(p.n_eval, k // 2)
        n_attr = min(p.n_prompts, k - n_eval)
        attr_len, eval_len = lengths[:n_attr], lengths[n_attr:n_attr + n_eval]
    else:
        attr_len = eval_len = lengths[:k]
    patching = p.ablation == "patching"
    attr_chunks, eval_chunks = _chunk_tokens(attr_len, p.batch_size), _chunk_tokens(eval_len, p.batch_size)
    if not patching:  # the node means of both sets
        for ch in (attr_chunks, eval_chunks):
            tokens, calls = tokens + sum(b * t for b, t in ch), calls + len(ch)
    graph = EdgeGraph.from_model(model)
    sizes = len(p.percentages)
    bound = 2 + 2 * sizes * bool(p.circuit_file)
    for name in p.methods:
        steps = {"eap": 1, "eap_ig": p.ig_steps}.get(name)
        if steps is not None:
            for b, t in attr_chunks:
                tokens += b * t * ((2 if patching else 1) + 3 * steps)
                calls += (2 if patching else 1) + steps
        elif name == "node_patching":
            t, c = _patch_cost(model, attr_len, p.batch_size)
            tokens, calls = tokens + t, calls + c
        bound += 2 * sizes * (p.n_random if name == "random" else 1)
    n_masks = bound if n_masks is None else n_masks
    per_row_bytes = graph.n_forward * int(model.cfg.d_model) * _dtype_bytes(model)
    max_bytes = (256 if str(model.cfg.device) == "cpu" else 4096) * 2 ** 20
    for b, t in eval_chunks:
        n_c = max(1, min(n_masks, max_bytes // max(1, t * per_row_bytes * b)))
        tokens += b * t * (n_masks + (1 if patching else 0))
        calls += _ceil(n_masks, n_c) + (1 if patching else 0)
    return tokens, calls


def _dtype_bytes(model) -> int:
    import torch

    return torch.empty(0, dtype=model.cfg.dtype).element_size()
