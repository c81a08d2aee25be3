"""Attention sinks, hidden sinks and extreme tokens (docs/sinks.md#sink-metric, docs/sinks.md#hidden-sinks, docs/sinks.md#active-and-dormant-heads).

* Gu et al. 2024, "When Attention Sink Emerges in Language Models": importance of key k
  for a head, α_k = (1/(T−k+1)) Σ_{i=k..T} A_{i,k}; Sink_k^ε = 100 · mean over samples,
  layers and heads of 1[α_k > ε] (ε = 0.3, first T = 64 tokens). Computed per *query* head
  (GQA models share K/V between query heads, but each query head has its own pattern).
  Recorded for four versions of every text: as-is without BOS, with BOS prepended, and
  with the first token replaced by "\\n" or by a space.
* Yu et al. 2024 (ACT): key k is a sink when its mean received attention exceeds 0.1;
  sinks after the first are *hidden sinks*. Counted per head, per position and per token.
* Guo et al. 2024, "Active-Dormant Attention Heads": residual-state peaks (residual norm
  by position), value-state drains (value norm by position, per *KV* head — that is what
  ``hook_v`` holds on GQA models), and dormancy. A head's dormancy score on a text is the
  attention mass it puts on the first token, averaged over queries 2..T (query 1 can only
  see itself); it is dormant on that text when the score exceeds ``dormant_threshold``
  (0.9). Aggregated per input domain to show heads that switch.

Everything is reduced inside the hooks (``probes.capture.run`` reducers), layer by layer:
no T×T pattern outlives its layer. The pure functions at the top are what tests check on
hand-built matrices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from mechscope.probes import capture, hooknames
from mechscope.probes.act import column_mean, hidden_sink_mask
from mechscope.probes.errors import InputError
from mechscope.probes.models import model_id
from mechscope.probes.results import Params, Result, analysis
from mechscope.probes.tokens import bos_id, single_token, str_tokens, text_ids

VARIANTS = ("no_bos", "bos", "newline", "space")
DOMAINS = ("prose", "code", "numbers")

# ---------------------------------------------------------------------------------------
# Pure functions


def alpha_from_pattern(pattern: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """α for every key of a causal pattern [..., T, T] → [..., T] (Gu et al. 2024):
    α_k = Σ_{i>=k} A[i,k] / (T − k + 1) (1-based k). ``lengths`` ([B], leading axis =
    batch) restricts each row to its first ``lengths[b]`` queries (right padding)."""
    if pattern.shape[-1] != pattern.shape[-2]:
        raise InputError("alpha_from_pattern needs a square [..., T, T] pattern.")
    return column_mean(pattern, 0, lengths)


def check_eps(eps: float) -> float:
    if not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise InputError(f"ε must lie strictly between 0 and 1, not {eps!r}.")
    return float(eps)


def sink_rate(alpha, eps: float = 0.3) -> np.ndarray:
    """Sink_k^ε = 100 · mean of 1[α_k > ε] over every leading axis of ``alpha`` [..., K]
    (samples, layers, heads). NaN entries (undefined α) are left out."""
    check_eps(eps)
    a = torch.as_tensor(alpha, dtype=torch.float64)
    a = a.reshape(-1, a.shape[-1])
    valid = ~torch.isnan(a)
    hit = (a > eps) & valid
    return (100.0 * hit.sum(0) / valid.sum(0).clamp(min=1)).numpy()


def dormancy_score(alpha_first, lengths) -> np.ndarray:
    """Mean attention on the first token over queries 2..T, from α_1 [N, ...] and lengths [N]:
    (α_1·T − 1)/(T − 1), since query 1 puts all its mass on itself."""
    a = np.asarray(alpha_first, dtype=np.float64)
    n = np.asarray(lengths, dtype=np.float64).reshape((-1,) + (1,) * (a.ndim - 1))
    return (a * n - 1.0) / np.maximum(n - 1.0, 1.0)


# ---------------------------------------------------------------------------------------
# Inputs


def _text_ids(model, text) -> list[int]:
    if isinstance(text, str):
        if not text.strip():
            raise InputError("A text in the set is empty.")
        return text_ids(model, text)
    ids = [int(t) for t in torch.as_tensor(text).reshape(-1)]
    if ids and (max(ids) >= model.cfg.d_vocab or min(ids) < 0):
        raise InputError(f"Token ids must lie in 0..{model.cfg.d_vocab - 1}.")
    return ids


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


def load_text_set(text_set: str = "mixed", n_texts: int | None = None) -> dict[str, list[str]]:
    """Texts by domain from ``data/texts`` ("mixed" = prose, code and numbers). ``n_texts``
    caps the total, taken evenly from the domains."""
    from mechscope.probes import datasets

    names = DOMAINS if text_set == "mixed" else (text_set,)
    sets = {d: list(datasets.load_texts(d)) for d in names}
    if n_texts is not None:
        if n_texts < 1:
            raise InputError("n_texts must be at least 1.")
        per = [n_texts // len(names) + (1 if i < n_texts % len(names) else 0) for i in range(len(names))]
        sets = {d: sets[d][:k] for d, k in zip(names, per) if k}
    return sets


# ---------------------------------------------------------------------------------------
# Result


@dataclass(frozen=True)
class SinkResult(Result):
    """α_k per variant/text/layer/head, hidden sinks, extreme-token norms and dormancy."""

    variants: tuple
    alpha: np.ndarray  # [V, N, L, H, K] α_1..α_K
    lengths: np.ndarray  # [V, N] tokens used per text
    domains: np.ndarray  # [N] domain label per text (object)
    token_ids: np.ndarray  # [N, T] primary variant's tokens, -1 padded
    hidden_counts: np.ndarray  # [N, T] heads (all layers) that mark (text, pos) a hidden sink
    hidden_heads: np.ndarray  # [L, H] hidden-sink events per head (summed over texts, positions)
    token_table: pd.DataFrame  # hidden sinks by token
    resid_norm: np.ndarray | None  # [L, T] mean ||resid_post|| by position (primary variant)
    value_norm: np.ndarray | None  # [L, n_kv_heads, T] mean ||v|| by position
    value_norm_heads: str = "query"  # "kv" on GQA models: value norms are per key/value head

    kind = "sinks"

    # -- derived views -------------------------------------------------------------------
    def sink_rates(self, eps: float | None = None) -> pd.DataFrame:
        eps = self.params.eps if eps is None else eps
        rows = []
        for v, name in enumerate(self.variants):
            rates = sink_rate(self.alpha[v], eps)
            for k, r in enumerate(rates, start=1):
                rows.append({"variant": name, "k": k, "eps": eps, "sink_rate": float(r)})
        return pd.DataFrame(rows)

    def alpha_matrix(self, k: int = 1, variant: str | None = None) -> np.ndarray:
        """Mean α_k over texts, [layers, heads]."""
        v = self._variant(variant)
        if not 1 <= k <= self.alpha.shape[-1]:
            raise InputError(f"k must lie in 1..{self.alpha.shape[-1]}.")
        return np.nanmean(self.alpha[v, :, :, :, k - 1], axis=0)

    def dormancy(self) -> np.ndarray:
        """[N, L, H] dormancy score of the primary variant."""
        return dormancy_score(self.alpha[0, :, :, :, 0], self.lengths[0])

    def dormancy_by_domain(self) -> pd.DataFrame:
        thr = self.params.dormant_threshold
        score = self.dormancy()
        rows = []
        for d in dict.fromkeys(self.domains.tolist()):
            sel = self.domains == d
            frac = (score[sel] > thr).mean(0)
            mean = score[sel].mean(0)
            for layer in range(frac.shape[0]):
                for head in range(frac.shape[1]):
                    rows.append({"domain": d, "layer": layer, "head": head,
                                 "dormant_fraction": float(frac[layer, head]), "mean_score": float(mean[layer, head])})
        return pd.DataFrame(rows)

    def switching_heads(self) -> pd.DataFrame:
        """Heads dormant on most texts of one domain and active on most texts of another."""
        df = self.dormancy_by_domain()
        if df.empty or df["domain"].nunique() < 2:
            return pd.DataFrame(columns=["layer", "head", "dormant_in", "active_in"])
        wide = df.pivot_table(index=["layer", "head"], columns="domain", values="dormant_fraction")
        rows = []
        for (layer, head), r in wide.iterrows():
            dormant = [d for d in wide.columns if r[d] > 0.5]
            active = [d for d in wide.columns if r[d] < 0.5]
            if dormant and active:
                rows.append({"layer": layer, "head": head, "dormant_in": ", ".join(dormant),
                             "active_in": ", ".join(active), **{f"dormant_{d}": r[d] for d in wide.columns}})
        return pd.DataFrame(rows)

    def hidden_sink_positions(self) -> pd.DataFrame:
        """Fraction of texts in which each position (≥ 2) is a hidden sink in ≥ 1 head (only
        texts where ``min_queries`` queries see the position count)."""
        valid = self.token_ids >= 0
        pos = np.arange(self.token_ids.shape[1])[None, :]
        valid &= (np.asarray(self.lengths[0])[:, None] - pos) >= self.params.min_queries
        hit = (self.hidden_counts > 0) & valid
        n = valid.sum(0)
        return pd.DataFrame({"pos": np.arange(self.token_ids.shape[1]), "texts": n,
                             "hidden_sink_fraction": hit.sum(0) / np.maximum(n, 1)})

    def hidden_by_class(self) -> pd.DataFrame:
        """Hidden-sink rate by token class (newline, punctuation, space, number, word)."""
        t = self.token_table
        g = t.groupby("class").agg(occurrences=("occurrences", "sum"), sink_occurrences=("sink_occurrences", "sum"))
        g["sink_fraction"] = g["sink_occurrences"] / g["occurrences"].clip(lower=1)
        return g.reset_index().sort_values("sink_fraction", ascending=False).reset_index(drop=True)

    def _variant(self, variant: str | None) -> int:
        if variant is None:
            return 0
        if variant not in self.variants:
            raise InputError(f"No variant {variant!r} in this result ({', '.join(self.variants)}).")
        return list(self.variants).index(variant)

    def to_frame(self) -> pd.DataFrame:
        return self.sink_rates()

    # -- figures -------------------------------------------------------------------------
    def figure_alpha(self, k: int = 1, variant: str | None = None):
        import plotly.graph_objects as go

        m = self.alpha_matrix(k, variant)
        name = self.variants[self._variant(variant)]
        fig = go.Figure(go.Heatmap(z=m, x=[f"H{h}" for h in range(m.shape[1])], y=list(range(m.shape[0])),
                                   colorscale="Viridis", zmin=0, zmax=1, colorbar={"title": f"α_{k}"}))
        fig.update_layout(title=f"Mean α_{k} by layer × query head ({name})", yaxis_title="layer",
                          xaxis_title="query head", yaxis={"autorange": "reversed"}, height=600)
        return fig

    def figure_sink_rates(self, eps: float | None = None):
        import plotly.express as px

        df = self.sink_rates(eps)
        fig = px.line(df, x="k", y="sink_rate", color="variant", markers=True,
                      title=f"Sink_k^ε (ε = {df['eps'].iloc[0]:g}) by key position k")
        fig.update_yaxes(title="Sink_k^ε (%)", range=[0, 100])
        return fig

    def figures(self) -> dict:
        import plotly.express as px
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        figs = {"alpha_heatmap": self.figure_alpha(1), "sink_rate_by_k": self.figure_sink_rates()}
        hh = self.hidden_heads / max(len(self.domains), 1)
        figs["hidden_sinks_by_head"] = go.Figure(
            go.Heatmap(z=hh, x=[f"H{h}" for h in range(hh.shape[1])], y=list(range(hh.shape[0])), colorscale="Magma",
                       colorbar={"title": "per text"}),
            layout={"title": "Hidden sinks per text, by layer × query head", "yaxis": {"title": "layer", "autorange": "reversed"},
                    "height": 600})
        tt = self.token_table[self.token_table["sink_occurrences"] > 0].head(25)
        if not tt.empty:
            figs["hidden_sink_tokens"] = px.bar(tt, x="token_repr", y="sink_fraction", hover_data=["occurrences", "mean_heads"],
                                                title="Tokens most often hidden sinks (fraction of occurrences, ≥ 1 head)")
        pos = self.hidden_sink_positions().iloc[1:]
        figs["hidden_sink_positions"] = px.bar(pos, x="pos", y="hidden_sink_fraction",
                                               title="Hidden sinks by position (fraction of texts)")
        if self.resid_norm is not None:
            z = np.log10(np.maximum(self.resid_norm, 1e-6))
            f = go.Figure(go.Heatmap(z=z, colorscale="Inferno", colorbar={"title": "log10 ‖x‖"}))
            f.add_vline(x=0, line_dash="dot", line_color="cyan", annotation_text="sink (pos 0)")
            f.update_layout(title="Residual-state norm by layer × position (resid_post, mean over texts)",
                            xaxis_title="position", yaxis_title="layer", height=500)
            figs["residual_norm"] = f
            lines = go.Figure()
            for layer in sorted({0, self.resid_norm.shape[0] // 2, self.resid_norm.shape[0] - 1}):
                lines.add_scatter(y=self.resid_norm[layer], name=f"layer {layer}", mode="lines+markers")
            lines.add_vline(x=0, line_dash="dot", annotation_text="sink")
            lines.update_layout(title="Residual norm by position", xaxis_title="position", yaxis_title="‖resid_post‖",
                                yaxis_type="log")
            figs["residual_norm_lines"] = lines
        if self.value_norm is not None:
            L, G, T = self.value_norm.shape
            z = self.value_norm.reshape(L * G, T) / np.maximum(np.median(self.value_norm.reshape(L * G, T)[:, 1:], axis=1, keepdims=True), 1e-9)
            f = go.Figure(go.Heatmap(z=z, y=[f"L{l}·KV{g}" for l in range(L) for g in range(G)], colorscale="RdBu", zmid=1,
                                     colorbar={"title": "‖v‖ / median"}))
            f.add_vline(x=0, line_dash="dot", annotation_text="sink")
            f.update_layout(title="Value-state norm by position (per KV head, relative to its median)",
                            xaxis_title="position", height=max(400, 6 * L * G), yaxis={"autorange": "reversed"})
            figs["value_norm"] = f
        dd = self.dormancy_by_domain()
        doms = list(dict.fromkeys(dd["domain"]))
        f = make_subplots(rows=1, cols=len(doms), subplot_titles=doms, shared_yaxes=True)
        for i, d in enumerate(doms, start=1):
            m = dd[dd["domain"] == d].pivot(index="layer", columns="head", values="dormant_fraction")
            f.add_trace(go.Heatmap(z=m.values, x=[f"H{h}" for h in m.columns], y=list(m.index), zmin=0, zmax=1,
                                   colorscale="Greys", showscale=i == len(doms)), row=1, col=i)
        f.update_yaxes(autorange="reversed", title_text="layer", col=1)
        f.update_layout(title=f"Dormant fraction of texts by domain (score > {self.params.dormant_threshold:g})", height=600)
        figs["dormancy_by_domain"] = f
        return figs


# ---------------------------------------------------------------------------------------
# The analysis


@dataclass(frozen=True)
class SinkParams(Params):
    """Parameters of :func:`attention_sinks` (defaults: Gu et al.'s ε = 0.3 on the first
    T = 64 tokens; ACT's 0.1 sink threshold; 64 shipped texts, balanced over domains)."""

    kind: ClassVar[str] = "sinks"
    texts: object = field(default=None, metadata={"help": "custom texts (list, or dict domain → list); None: text_set"})
    text_set: str = field(default="mixed", metadata={"help": "shipped text set: prose | code | numbers | mixed"})
    n_texts: int | None = field(default=64, metadata={"help": "texts in all, taken evenly from the domains"})
    max_tokens: int = field(default=64, metadata={"help": "first T tokens of each text"})
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
        object.__setattr__(self, "variants", tuple(self.variants))
        t = self.texts
        if t is not None and not isinstance(t, Mapping):
            object.__setattr__(self, "texts", tuple(x if isinstance(x, str) else tuple(int(i) for i in x) for x in t))


def _as_domains(texts) -> dict[str, list]:
    if isinstance(texts, Mapping):
        out = {str(k): list(v) for k, v in texts.items()}
    else:
        out = {"texts": list(texts)}
    if not any(out.values()):
        raise InputError("The text set is empty.")
    return out


@analysis(SinkParams)
def attention_sinks(model, params: SinkParams, progress: bool | Callable[[int, int], None] = False) -> SinkResult:
    """Sink metric, hidden sinks, extreme tokens and dormancy over a text set.

    ``texts``: a list of texts (or token-id lists), or a dict domain → list; default: the
    shipped ``text_set`` ("mixed" = prose, code, numbers; ``n_texts`` in all). Each text is
    cut to its first ``max_tokens`` tokens and must have at least ``k_max`` of them. The
    first of ``variants`` is the *primary* one (hidden sinks, norms, dormancy).

    Hidden sinks need ``min_queries`` queries per key (default 16): near the end of a text a
    key's mean received attention averages over a handful of queries, so a late key would
    pass ACT's 0.1 threshold by its position alone.
    """
    p = params
    texts, text_set, n_texts, max_tokens, k_max, eps = p.texts, p.text_set, p.n_texts, p.max_tokens, p.k_max, p.eps
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
    if texts is None:
        by_domain = load_text_set(text_set, n_texts)
    else:
        by_domain = _as_domains(texts)
    domains, bases = [], []
    for d, items in by_domain.items():
        for t in items:
            domains.append(d)
            bases.append(_text_ids(model, t))
    if not bases:
        raise InputError("The text set is empty.")
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

        def on_pattern(pattern, site, batch, _v=v, _first=first, hc=hid_counts, hh=hid_heads):
            layer = site.layer
            lens = batch.lengths
            full = bool((lens == pattern.shape[-1]).all())
            a = column_mean(pattern, 0, None if full else lens)  # [B, H, T]
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

        reducers = {hooknames.name("pattern", l): on_pattern for l in range(L)}
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


def enough_queries(lengths: torch.Tensor, n_keys: int, min_queries: int) -> torch.Tensor:
    """[B, K] bool: key k (0-based) of row b is seen by ``lengths[b] − k`` queries; True
    where that is at least ``min_queries``."""
    k = torch.arange(n_keys, device=lengths.device)
    return (lengths[:, None] - k[None, :]) >= min_queries


def token_class(s: str) -> str:
    if "\n" in s:
        return "newline"
    t = s.strip()
    if not t:
        return "space"
    if all(not c.isalnum() for c in t):
        return "punctuation"
    if t.isdigit():
        return "number"
    return "word"


def _token_table(model, token_ids: np.ndarray, counts: np.ndarray, lengths=None, min_queries: int = 1) -> pd.DataFrame:
    """Per distinct token (positions ≥ 2 only — the first is the ordinary sink — and only
    where ``min_queries`` queries see the position, so the token could be judged):
    occurrences, how many are hidden sinks in ≥ 1 head, that fraction, mean heads per
    occurrence; most frequent sinks first."""
    ids = token_ids[:, 1:]
    cnt = counts[:, 1:]
    valid = ids >= 0
    if lengths is not None:
        pos = np.arange(1, token_ids.shape[1])[None, :]
        valid &= (np.asarray(lengths)[:, None] - pos) >= min_queries
    flat_ids, flat_cnt = ids[valid], cnt[valid]
    if flat_ids.size == 0:
        return pd.DataFrame(columns=["token_id", "token_repr", "class", "occurrences", "sink_occurrences",
                                     "sink_fraction", "mean_heads"])
    df = pd.DataFrame({"token_id": flat_ids, "hit": flat_cnt > 0, "heads": flat_cnt})
    g = df.groupby("token_id").agg(occurrences=("hit", "size"), sink_occurrences=("hit", "sum"), mean_heads=("heads", "mean"))
    g = g.reset_index()
    g["sink_fraction"] = g["sink_occurrences"] / g["occurrences"]
    strs = _decode_tokens(model, g["token_id"].tolist())
    g["token_repr"] = [repr(s) for s in strs]
    g["class"] = [token_class(s) for s in strs]
    g = g.sort_values(["sink_occurrences", "sink_fraction"], ascending=False).reset_index(drop=True)
    return g[["token_id", "token_repr", "class", "occurrences", "sink_occurrences", "sink_fraction", "mean_heads"]]


def _decode_tokens(model, ids: list[int]) -> list[str]:
    return str_tokens(model, ids) if model.tokenizer is not None else [f"<{i}>" for i in ids]
