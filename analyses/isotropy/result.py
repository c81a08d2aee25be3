"""The isotropy analysis' Result: scores per cloud, spectra, outlier dimensions, the PCA
drawing (docs/isotropy.md#isoscore)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mechscope.analyses.isotropy.scores import outlier_dimensions
from mechscope.probes.errors import InputError, check_range
from mechscope.probes.results import Result

FINAL_NORM = "ln_final"  # the last block's output after the final norm (Hugging Face's hidden_states[-1])
SCORES = ("isoscore", "isoscore_star", "avg_cosine", "partition", "self_similarity", "isotropy_su")


@dataclass(frozen=True)
class IsotropyResult(Result):
    """Scores per cloud (residual stream at every depth, every head's output, W_E, W_U)."""

    scores: pd.DataFrame  # one row per cloud
    clouds: tuple  # names of the rows of spectrum / dim_var / dim_mean
    spectrum: np.ndarray  # [C, d] covariance eigenvalues, descending
    dim_var: np.ndarray  # [C, d] per-dimension variance
    dim_mean: np.ndarray  # [C, d] per-dimension mean
    pca: np.ndarray  # [L+2, S, 2] sampled tokens projected on each depth's top-2 principal axes
    sample_class: np.ndarray  # [S] token class of each sampled token (object)
    sample_token: np.ndarray  # [S] token string (object)
    n_tokens: int = 0
    n_texts: int = 0

    kind = "isotropy"

    def resid(self) -> pd.DataFrame:
        return self.scores[self.scores["cloud"] == "resid"].reset_index(drop=True)

    def heads(self) -> pd.DataFrame:
        return self.scores[self.scores["cloud"] == "head"].reset_index(drop=True)

    def weights(self) -> pd.DataFrame:
        return self.scores[self.scores["cloud"].isin(["W_E", "W_U"])].reset_index(drop=True)

    def _cloud(self, name) -> int:
        if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
            n_depth = sum(1 for c in self.clouds if c not in ("W_E", "W_U"))
            check_range("depth", int(name), n_depth)
            return int(name)
        if name not in self.clouds:
            raise InputError(f"No cloud {name!r}: choose a depth 0..{len(self.clouds) - 3} or one of "
                             f"{', '.join(map(str, self.clouds))}.")
        return list(self.clouds).index(name)

    def outliers(self, cloud=0, multiple: float | None = None) -> pd.DataFrame:
        i = self._cloud(cloud)
        return outlier_dimensions(self.dim_var[i], self.dim_mean[i], self.params.outlier_multiple if multiple is None else multiple)

    def to_frame(self) -> pd.DataFrame:
        return self.scores

    # -- figures -------------------------------------------------------------------------
    def figure_curves(self):
        import plotly.express as px

        df = self.resid().melt(id_vars=["depth"], value_vars=list(SCORES), var_name="score", value_name="value")
        fig = px.line(df, x="depth", y="value", color="score", markers=True,
                      title="Isotropy of the residual stream by depth (0 = embeddings, l = after block l−1, last = after the final norm)")
        fig.update_layout(yaxis_title="score", xaxis_title="depth")
        return fig

    def figure_heads(self, score: str = "isoscore"):
        import plotly.graph_objects as go

        h = self.heads()
        if h.empty:
            return go.Figure().update_layout(title="No per-head scores (heads=False)")
        if score not in h.columns:
            raise InputError(f"No score {score!r}; choose from {', '.join(c for c in h.columns if c in SCORES + ('isoscore_z',))}.")
        m = h.pivot(index="layer", columns="head", values=score)
        fig = go.Figure(go.Heatmap(z=m.values, x=[f"H{c}" for c in m.columns], y=list(m.index), colorscale="Viridis",
                                   colorbar={"title": score}))
        fig.update_layout(title=f"Per-head output {score}", xaxis_title="head", yaxis_title="layer",
                          yaxis={"autorange": "reversed"})
        return fig

    def figure_spectrum(self, cloud=None):
        import plotly.graph_objects as go

        i = self._cloud(len([c for c in self.clouds if c not in ("W_E", "W_U")]) - 1 if cloud is None else cloud)
        ev = self.spectrum[i]
        out = self.outliers(i)
        fig = go.Figure(go.Scatter(x=np.arange(1, ev.size + 1), y=np.clip(ev, 1e-12, None), mode="lines", name="eigenvalue"))
        fig.update_layout(title=f"Covariance spectrum of {self.clouds[i]} ({len(out)} outlier dimensions: "
                                f"{', '.join(map(str, out['dim'].head(8).tolist()))})",
                          xaxis_title="principal component", yaxis_title="variance", yaxis_type="log")
        return fig

    def figure_outliers(self, cloud=None):
        import plotly.graph_objects as go

        i = self._cloud(len([c for c in self.clouds if c not in ("W_E", "W_U")]) - 1 if cloud is None else cloud)
        var = self.dim_var[i]
        ratio = var / var.mean()
        fig = go.Figure(go.Bar(x=np.arange(var.size), y=ratio, name="variance / mean variance"))
        fig.add_hline(y=self.params.outlier_multiple, line_dash="dot", annotation_text=f"{self.params.outlier_multiple:g}×")
        fig.update_layout(title=f"Per-dimension variance of {self.clouds[i]} (× the average)", xaxis_title="dimension",
                          yaxis_title="variance ratio", yaxis_type="log")
        return fig

    def figure_pca(self, depth: int | None = None):
        import plotly.express as px

        depth = self.pca.shape[0] - 1 if depth is None else depth
        check_range("depth", depth, self.pca.shape[0])
        xy = self.pca[depth]
        df = pd.DataFrame({"PC1": xy[:, 0], "PC2": xy[:, 1], "class": self.sample_class, "token": self.sample_token})
        return px.scatter(df, x="PC1", y="PC2", color="class", hover_data=["token"], opacity=0.6,
                          title=f"{self.clouds[depth]}: sampled tokens on the top-2 principal axes")

    def figure_weights(self):
        import plotly.express as px

        w = self.weights().melt(id_vars=["cloud"], value_vars=list(SCORES[:4]), var_name="score", value_name="value")
        return px.bar(w, x="score", y="value", color="cloud", barmode="group", title="Token embeddings W_E and unembedding W_U")

    def figures(self) -> dict:
        figs = {"curves": self.figure_curves(), "spectrum": self.figure_spectrum(), "outliers": self.figure_outliers(),
                "pca": self.figure_pca()}
        if not self.heads().empty:
            figs["heads"] = self.figure_heads()
        if not self.weights().empty:
            figs["weights"] = self.figure_weights()
        return figs
