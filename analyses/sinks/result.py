"""The sinks analysis' Result: α_k per variant, text, layer and head, hidden sinks,
extreme-token norms and dormancy, with their views and figures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mechscope.analyses.sinks.metrics import dormancy_score, sink_rate
from mechscope.probes.errors import InputError
from mechscope.probes.results import Result


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
