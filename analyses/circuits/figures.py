"""Figures of the circuit analyses: a layer × head heatmap and the circuit graph."""

from __future__ import annotations

import numpy as np
from mechscope.probes.hooknames import head_label


def heatmap(values: np.ndarray, title: str):
    import plotly.graph_objects as go

    L, H = values.shape
    fig = go.Figure(go.Heatmap(z=values, x=[f"H{h}" for h in range(H)], y=[f"L{l}" for l in range(L)],
                               colorscale="RdBu", zmid=0, colorbar={"title": "effect"}))
    fig.update_layout(title=title, yaxis={"autorange": "reversed", "title": "layer"}, xaxis_title="head",
                      height=max(400, 18 * L))
    return fig


def circuit_graph(scores: np.ndarray, edges: np.ndarray | None, effects: np.ndarray | None, codes=None,
                  top: int = 20, top_edges: int = 30):
    """The circuit as a graph: layers top to bottom, the ``top`` heads by score as nodes sized by
    score, the strongest ``top_edges`` edges among them (weighted), hover with codes and patching."""
    import plotly.graph_objects as go

    L, H = scores.shape
    flat = scores.ravel()
    keep = np.argsort(-flat)[:top]
    xy = {int(i): (int(i) % H, int(i) // H) for i in keep}
    fig = go.Figure()
    if edges is not None and len(keep) > 1:
        sub = [(edges[a, b] + edges[b, a], a, b) for ai, a in enumerate(keep) for b in keep[ai + 1:]]
        sub = sorted((s for s in sub if s[0] > 0), reverse=True)[:top_edges]
        wmax = max([s[0] for s in sub], default=1)
        for w, a, b in sub:
            (x0, y0), (x1, y1) = xy[int(a)], xy[int(b)]
            fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", showlegend=False,
                                     line={"width": 0.5 + 4 * w / wmax, "color": "rgba(100,100,160,0.5)"}))
    smax = flat[keep].max() if len(keep) else 1
    hover = []
    for i in keep:
        l, h = int(i) // H, int(i) % H
        t = f"L{l}H{h}<br>score {flat[i]:.3g}"
        if effects is not None:
            t += f"<br>patching effect {effects[l, h]:+.3f}"
        if codes is not None:
            t += f"<br>top codes {codes[int(i)]}"
        hover.append(t)
    fig.add_trace(go.Scatter(x=[xy[int(i)][0] for i in keep], y=[xy[int(i)][1] for i in keep], mode="markers+text",
                             text=[head_label(int(i) // H, int(i) % H) for i in keep], textposition="middle right",
                             hovertext=hover, hoverinfo="text", showlegend=False,
                             marker={"size": [10 + 30 * flat[i] / (smax or 1) for i in keep], "color": "#d62728"}))
    fig.update_layout(title="Circuit (top heads by score; layers top to bottom)", xaxis={"title": "head", "range": [-0.5, H]},
                      yaxis={"title": "layer", "autorange": "reversed", "range": [-0.5, L - 0.5]}, height=600)
    return fig
