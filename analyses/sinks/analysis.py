"""The sinks analysis: every text in four first-token versions, reduced inside the hooks
(Gu et al. 2024; Yu et al. 2024; Guo et al. 2024 — docs/sinks.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import numpy as np

from mechscope.analyses.sinks.metrics import _token_table, check_eps, enough_queries
from mechscope.analyses.sinks.result import SinkResult
from mechscope.probes import capture, hooknames
from mechscope.probes.attention_reductions import column_mean_reducers
from mechscope.probes.act import hidden_sink_mask
from mechscope.probes.errors import InputError
from mechscope.probes.models import model_id
from mechscope.probes.results import analysis
from mechscope.probes.texts import TextInputs, encode_texts, max_tokens_field, n_texts_field, texts_field
from mechscope.probes.tokens import bos_id, single_token

VARIANTS = ("no_bos", "bos", "newline", "space")


def variant_ids(model, base: Sequence[int], variant: str, max_tokens: int) -> list[int]:
    """The first ``max_tokens`` tokens of a text in one of the four first-token versions."""
    base = list(base)
    if variant == "no_bos":
        return base[:max_tokens]
    if variant == "bos":
        b = bos_id(model)
        if b is None:
            raise InputError("This model has no BOS token to prepend.")
        return [b] + base[: max_tokens - 1]
    if variant in ("newline", "space"):
        if model.tokenizer is None:
            raise InputError(f"Replacing the first token by a {variant} needs a tokenizer.")
        tok = single_token(model, "\n" if variant == "newline" else " ")
        return [tok] + base[1:max_tokens]
    raise InputError(f"Unknown first-token variant {variant!r}: choose from {', '.join(VARIANTS)}.")


@dataclass(frozen=True)
class SinkParams(TextInputs):
    """Parameters of :func:`attention_sinks` (defaults: Gu et al.'s ε = 0.3 on the first
    T = 64 tokens; ACT's 0.1 sink threshold; 64 shipped texts, balanced over domains)."""

    kind: ClassVar[str] = "sinks"
    texts: tuple | dict | None = texts_field(positional=True)  # attention_sinks(model, texts)
    n_texts: int | None = n_texts_field(64, "texts taken from text_set (mixed: balanced over its domains; None: all)")
    max_tokens: int | None = max_tokens_field(64, "first T tokens of each text")
    k_max: int = field(default=8, metadata={"help": "report α_k and Sink_k for k = 1..K"})
    eps: float = field(default=0.3, metadata={"help": "ε of Sink_k^ε"})
    variants: tuple[str, ...] = field(default=VARIANTS, metadata={"help": "first-token variants (the first is primary)"})
    sink_threshold: float = field(default=0.1, metadata={"help": "ACT's hidden-sink threshold on mean received attention"})
    min_queries: int = field(default=16, metadata={
        "help": "a key can be a hidden sink only when at least this many queries see it"})
    dormant_threshold: float = field(default=0.9, metadata={"help": "dormancy threshold"})
    norms: bool = field(default=True, metadata={"help": "also residual and value norms by position"})
    batch_size: int = field(default=16, metadata={"help": "texts per forward pass"})

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "variants", tuple(self.variants))


@analysis(SinkParams)
def attention_sinks(model, params: SinkParams, progress: bool | Callable[[int, int], None] = False) -> SinkResult:
    """Sink metric, hidden sinks, extreme tokens and dormancy over a text set.

    ``texts``: a list of texts (or token-id lists), or a dict domain → list; default: the
    first ``n_texts`` of the shipped ``text_set`` (``probes.texts``; "mixed" = prose, code,
    numbers, balanced), taken domain by domain. Each text (no BOS: the ``bos`` variant adds
    it) is cut to its first ``max_tokens`` tokens and must have at least ``k_max`` of them. The
    first of ``variants`` is the *primary* one (hidden sinks, norms, dormancy).

    Hidden sinks need ``min_queries`` queries per key (default 16): near the end of a text a
    key's mean received attention averages over a handful of queries, so a late key would
    pass ACT's 0.1 threshold by its position alone.
    """
    p = params
    max_tokens, k_max, eps = p.max_tokens, p.k_max, p.eps
    variants, sink_threshold, dormant_threshold, norms = p.variants, p.sink_threshold, p.dormant_threshold, p.norms
    batch_size, min_queries = p.batch_size, p.min_queries
    if not isinstance(min_queries, int) or min_queries < 1:
        raise InputError(f"min_queries must be a positive integer, not {min_queries!r}.")
    check_eps(eps)
    if not 0 < sink_threshold < 1:
        raise InputError(f"The hidden-sink threshold must lie in (0, 1), not {sink_threshold!r}.")
    if not 0 < dormant_threshold < 1:
        raise InputError(f"The dormancy threshold must lie in (0, 1), not {dormant_threshold!r}.")
    if not isinstance(k_max, int) or k_max < 1:
        raise InputError(f"k must be a positive integer, not {k_max!r}.")
    if not isinstance(max_tokens, int) or max_tokens < k_max:
        raise InputError(f"max_tokens ({max_tokens}) must be at least k ({k_max}).")
    if max_tokens > model.cfg.n_ctx:
        raise InputError(f"max_tokens ({max_tokens}) exceeds the model's n_ctx ({model.cfg.n_ctx}).")
    variants = tuple(variants)
    if not variants:
        raise InputError("Choose at least one first-token variant.")
    for v in variants:
        if v not in VARIANTS:
            raise InputError(f"Unknown first-token variant {v!r}: choose from {', '.join(VARIANTS)}.")
    items = p.selected(grouped=True)  # domain by domain: dormancy is aggregated per domain
    domains = [t.domain for t in items]
    bases = [ids.tolist() for ids in encode_texts(model, items, max_tokens, prepend_bos=False)]
    for i, b in enumerate(bases):
        if len(b) < k_max:
            raise InputError(f"Text {i} has {len(b)} tokens, fewer than k = {k_max}: use a smaller k or longer texts.")

    cfg = model.cfg
    L, H, N = cfg.n_layers, cfg.n_heads, len(bases)
    G = cfg.n_key_value_heads or cfg.n_heads
    alpha = np.full((len(variants), N, L, H, k_max), np.nan, dtype=np.float32)
    lengths = np.zeros((len(variants), N), dtype=np.int64)
    total = len(variants) * N
    done_before = 0
    primary: dict = {}

    for v, variant in enumerate(variants):
        seqs = [variant_ids(model, b, variant, max_tokens) for b in bases]
        lengths[v] = [len(s) for s in seqs]
        T = max(len(s) for s in seqs)
        first = v == 0
        hid_counts = np.zeros((N, T), dtype=np.int32)
        hid_heads = np.zeros((L, H), dtype=np.int64)
        r_sum = np.zeros((L, T)); r_cnt = np.zeros(T)
        v_sum = np.zeros((L, G, T))

        def on_alpha(layer, a, batch, _v=v, _first=first, hc=hid_counts, hh=hid_heads):
            lens = batch.lengths  # a: [B, H, T], the column mean over each text's real queries
            kk = min(k_max, a.shape[-1])
            alpha[_v, batch.index, layer, :, :kk] = a[..., :kk].float().cpu().numpy()
            if _first:
                seen = enough_queries(lens, a.shape[-1], min_queries)  # [B, T]
                hidden = hidden_sink_mask(a, sink_threshold) & seen[:, None, :]  # [B, H, T]
                hc[batch.index, : a.shape[-1]] += hidden.sum(1).int().cpu().numpy()
                hh[layer] += hidden.sum((0, 2)).cpu().numpy()

        def on_resid(x, site, batch):
            layer = site.layer
            m = batch.mask.to(x.dtype)
            r_sum[layer, : x.shape[1]] += (x.norm(dim=-1) * m).sum(0).cpu().numpy()
            if layer == 0:
                r_cnt[: x.shape[1]] += m.sum(0).cpu().numpy()

        def on_v(x, site, batch):
            layer = site.layer
            m = batch.mask.to(x.dtype)[:, :, None]
            v_sum[layer, :, : x.shape[1]] += (x.norm(dim=-1) * m).sum(0).T.cpu().numpy()

        reducers = column_mean_reducers(model, on_alpha)  # from q and k: attention stays fused
        if first and norms:
            reducers.update({hooknames.name("resid_post", l): on_resid for l in range(L)})
            reducers.update({hooknames.name("v", l): on_v for l in range(L)})
        prog = progress
        if callable(progress):
            prog = lambda d, t, _o=done_before: progress(_o + d, total)  # noqa: E731
        capture.run(model, seqs, reducers=reducers, batch_size=batch_size, progress=prog, desc=f"sinks ({variant})")
        done_before += N
        if first:
            tok = np.full((N, T), -1, dtype=np.int64)
            for i, s in enumerate(seqs):
                tok[i, : len(s)] = s
            primary = dict(token_ids=tok, hidden_counts=hid_counts, hidden_heads=hid_heads,
                           resid_norm=(r_sum / np.maximum(r_cnt, 1)).astype(np.float32) if norms else None,
                           value_norm=(v_sum / np.maximum(r_cnt, 1)).astype(np.float32) if norms else None)

    token_table = _token_table(model, primary["token_ids"], primary["hidden_counts"], lengths[0], min_queries)
    return SinkResult(model_id=model_id(model), params=params, variants=variants, alpha=alpha, lengths=lengths,
                      domains=np.array(domains, dtype=object), **primary, token_table=token_table,
                      value_norm_heads="kv" if G != H else "query")
