"""Results of retrieval-head detection and of the masking check."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mechscope.probes.niah import grid_figure
from mechscope.analyses.retrieval.agreement import head_agreement, spearman
from mechscope.analyses.retrieval.params import MaskingParams
from mechscope.probes.results import Result
from mechscope.probes.hooknames import head_label

#: the pool rule of results saved before the pool was recorded
_LEGACY_POOL = "outside the top max(k) ranked heads and the heads above the threshold"


@dataclass(frozen=True)
class RetrievalResult(Result):
    """``test_scores[i]`` is test i's [L, H] score; ``head_scores`` the mean over counted tests."""

    tests: pd.DataFrame
    test_scores: np.ndarray  # [N, L, H]
    head_scores: np.ndarray  # [L, H]
    induction: np.ndarray  # [L, H] (empty when skipped)
    prompt_format: str
    complete: bool = True

    kind = "retrieval_heads"

    def counted(self) -> pd.Series:
        """Tests that count (Wu et al.: ROUGE-1 recall of the answer part > threshold): the
        ``correct`` column; frames saved with a ``counted`` column (and ``correct`` then meaning
        a key-word recall) keep their ``counted``."""
        return self.tests["counted" if "counted" in self.tests else "correct"].astype(bool)

    @property
    def n_counted(self) -> int:
        return int(self.counted().sum()) if len(self.tests) else 0

    @property
    def fraction_above(self) -> float:
        return float((self.head_scores > self.params.threshold).mean())

    def ranked(self) -> list[tuple[int, int, float]]:
        """(layer, head, score) by descending score (ties: lower layer, then head, first)."""
        L, H = self.head_scores.shape
        flat = [(int(l), int(h), float(self.head_scores[l, h])) for l in range(L) for h in range(H)]
        return sorted(flat, key=lambda r: (-r[2], r[0], r[1]))

    def retrieval_heads(self, threshold: float | None = None) -> list[tuple[int, int]]:
        t = self.params.threshold if threshold is None else threshold
        return [(l, h) for l, h, s in self.ranked() if s > t]

    def top(self, k: int) -> list[tuple[int, int]]:
        return [(l, h) for l, h, _ in self.ranked()[:k]]

    def needle_scores(self) -> dict[int, np.ndarray]:
        """Per needle: mean [L, H] over its counted tests."""
        out = {}
        for n in sorted(self.tests["needle"].unique()) if len(self.tests) else []:
            sel = ((self.tests["needle"] == n) & self.counted()).to_numpy()
            if sel.any():
                out[int(n)] = self.test_scores[sel].mean(0)
        return out

    def stability(self, k: int = 10) -> pd.DataFrame:
        """Pairwise agreement of the per-needle maps: Jaccard of the top-k sets and of the
        sets above the threshold, Spearman of the 270 scores."""
        per = self.needle_scores()
        rows = []
        keys = list(per)
        for i, a in enumerate(keys):
            for b in keys[i + 1 :]:
                rows.append({"a": f"needle {a}", "b": f"needle {b}", **head_agreement(per[a], per[b], k, self.params.threshold)})
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        out = {"tests": len(self.tests), "counted": self.n_counted, "fraction_above": self.fraction_above,
               "n_above": int((self.head_scores > self.params.threshold).sum()),
               "accuracy": float(self.tests["correct"].mean()) if len(self.tests) else float("nan"),
               "prompt_format": self.prompt_format, "complete": self.complete}
        if self.induction.size:
            out["spearman_induction"] = spearman(self.head_scores, self.induction)
        return out

    def to_frame(self) -> pd.DataFrame:
        L, H = self.head_scores.shape
        return pd.DataFrame([{"layer": l, "head": h, "score": float(self.head_scores[l, h]),
                              "induction": float(self.induction[l, h]) if self.induction.size else float("nan"),
                              "retrieval_head": bool(self.head_scores[l, h] > self.params.threshold)}
                             for l in range(L) for h in range(H)])

    def figures(self) -> dict:
        import plotly.graph_objects as go

        L, H = self.head_scores.shape
        hover = np.full((L, H), self.n_counted)
        heat = go.Figure(go.Heatmap(
            z=self.head_scores, x=[f"H{h}" for h in range(H)], y=list(range(L)), colorscale="Viridis",
            customdata=hover, colorbar={"title": "score"},
            hovertemplate="layer %{y}, head %{x}<br>retrieval score %{z:.3f}<br>counted tests %{customdata}<extra></extra>"))
        s = self.summary()
        heat.update_layout(title=f"Retrieval score ({s['counted']} counted of {s['tests']} tests; "
                                 f"{100 * s['fraction_above']:.1f}% of heads > {self.params.threshold:g})",
                           xaxis_title="head", yaxis_title="layer")
        figs = {"retrieval_scores": heat,
                "niah_grid": grid_figure(self.tests, f"NIAH accuracy, {self.prompt_format} prompt")}
        if self.induction.size:
            figs["proxy"] = go.Figure(go.Scatter(
                x=self.induction.ravel(), y=self.head_scores.ravel(), mode="markers",
                text=[head_label(l, h) for l in range(L) for h in range(H)],
                hovertemplate="%{text}<br>induction %{x:.3f}<br>retrieval %{y:.3f}<extra></extra>"))
            figs["proxy"].update_layout(title=f"Induction proxy vs retrieval score (Spearman "
                                              f"{s.get('spearman_induction', float('nan')):.2f})",
                                        xaxis_title="induction score", yaxis_title="retrieval score")
        return figs


@dataclass(frozen=True)
class MaskingResult(Result):
    """``mask_scope``: where the heads were masked; ``random_pool``: which heads the random
    draws came from. Results saved before these were recorded masked the prompt too and drew
    outside the top max(k) (their params are set to match, so a re-run repeats them)."""

    curves: pd.DataFrame  # k, which ("retrieval" / "random"), seed, accuracy (recall of the answer part > threshold), mean_recall, heads
    ranked_heads: tuple
    complete: bool = True
    mask_scope: str = "prompt_and_decode"
    random_pool: str = _LEGACY_POOL

    kind = "retrieval_masking"

    def __post_init__(self):
        if not isinstance(self.params, MaskingParams):
            return
        fix = {}
        if self.params.mask_scope != self.mask_scope:
            fix["mask_scope"] = self.mask_scope
        if self.random_pool == _LEGACY_POOL and self.params.random_outside_top:
            fix["random_outside_top"] = 0
        if fix:
            object.__setattr__(self, "params", self.params.replace(**fix))

    def to_frame(self) -> pd.DataFrame:
        return self.curves

    def summary(self) -> pd.DataFrame:
        if self.curves.empty:
            return pd.DataFrame(columns=["k", "which", "mean", "std", "min", "max", "n"])
        g = self.curves.groupby(["k", "which"])["accuracy"]
        return g.agg(["mean", "std", "min", "max", "count"]).rename(columns={"count": "n"}).reset_index()

    def figures(self) -> dict:
        import plotly.graph_objects as go

        s = self.summary()
        fig = go.Figure()
        for which, colour in (("retrieval", "crimson"), ("random", "steelblue")):
            part = s[s["which"] == which]
            if part.empty:
                continue
            fig.add_trace(go.Scatter(
                x=part["k"], y=part["mean"], mode="lines+markers", name=f"{which} heads masked",
                line={"color": colour},
                error_y={"type": "data", "array": part["std"].fillna(0), "visible": which == "random"},
                hovertemplate="k %{x}<br>accuracy %{y:.2f}<extra></extra>"))
            if which == "random":
                fig.add_trace(go.Scatter(x=list(part["k"]) + list(part["k"])[::-1],
                                         y=list(part["max"]) + list(part["min"])[::-1], fill="toself",
                                         line={"width": 0}, fillcolor="rgba(70,130,180,0.15)", name="random: min–max",
                                         hoverinfo="skip"))
        where = "decoding only" if self.mask_scope == "decode" else "prompt and decoding"
        fig.update_layout(title=f"NIAH accuracy with k heads masked ({self.params.mode}, masked during {where}; "
                                f"{self.params.seeds} random draws {self.random_pool})",
                          xaxis_title="k (heads masked)", yaxis_title="NIAH accuracy", yaxis_range=[-0.02, 1.02])
        return {"masking_curves": fig}
