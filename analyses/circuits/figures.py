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


_COLORS = {"eap": "#1f77b4", "eap_ig": "#d62728", "node_patching": "#2ca02c", "random": "#7f7f7f"}


def faithfulness_curves(curves, curve: str = "cpr", task: str = ""):
    """Faithfulness f(C) against circuit size (percent of edges, log axis) for every method, with
    the bootstrap interval as a band; the random baseline dashed. ``curve``: ``cpr`` (the
    ranking CPR integrates) or ``cmd``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    sub = curves[curves["curve"] == curve]
    for i, (method, d) in enumerate(sub.groupby("method", sort=False)):
        d = d.sort_values("percent")
        color = _COLORS.get(method, f"hsl({(i * 67) % 360},60%,45%)")
        x = d["percent"].tolist()
        fig.add_trace(go.Scatter(x=x + x[::-1], y=d["f_hi"].tolist() + d["f_lo"].tolist()[::-1], fill="toself",
                                 fillcolor=color, opacity=0.15, line={"width": 0}, hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(x=x, y=d["f"], mode="lines+markers", name=method,
                                 line={"color": color, "dash": "dash" if method == "random" else "solid"},
                                 customdata=d[["n_edges", "n_kept"]].to_numpy(),
                                 hovertemplate="%{x}% of edges (%{customdata[0]}; %{customdata[1]} after pruning)"
                                               "<br>f = %{y:.3f}<extra>" + method + "</extra>"))
    fig.add_hline(y=1, line={"color": "black", "width": 1, "dash": "dot"})
    fig.add_hline(y=0, line={"color": "black", "width": 1, "dash": "dot"})
    ranking = sub["ranking"].iloc[0] if len(sub) else ""
    what = f"{'|scores|' if ranking == 'absolute' else 'signed scores'} ({curve.upper()})"
    fig.update_layout(title=f"Faithfulness of the top-x% edge circuits, ranked by {what}" + (f", task {task}" if task else ""),
                      xaxis={"title": "circuit size (% of edges)", "type": "log"},
                      yaxis={"title": "faithfulness (m(C) − m(∅)) / (m(N) − m(∅))"}, height=480)
    return fig


def edge_circuit_graph(circuit, title: str = "Circuit", max_edges: int = 300):
    """An edge circuit (:class:`analyses.circuits.mib.MIBCircuit`) drawn layer by layer: the input
    at the top, each layer's heads and MLP on one row, the logits at the bottom; edges coloured
    by the receiving input (q / k / v / MLP / logits), width by |score| (the strongest
    ``max_edges`` of the kept edges)."""
    import plotly.graph_objects as go

    g = circuit.graph
    H = g.n_heads
    pos = {0: ((H - 1) / 2, -1.0)}
    for l in range(g.n_layers):
        for h in range(H):
            pos[g.fwd_head(l, h)] = (h, l)
        if g.mlp:
            pos[g.fwd_mlp(l)] = (H + 0.5, l + 0.4)
    logits = ((H - 1) / 2, g.n_layers + 0.2)
    owner = {}
    for l in range(g.n_layers):
        for h in range(H):
            for x in "qkv":
                owner[g.bwd_head(l, h, x)] = (g.fwd_head(l, h), x)
        if g.mlp:
            owner[g.bwd_mlp(l)] = (g.fwd_mlp(l), "mlp")
    colors = {"q": "#1f77b4", "k": "#ff7f0e", "v": "#2ca02c", "mlp": "#9467bd", "logits": "#d62728"}
    ii, jj = np.nonzero(circuit.in_graph)
    w = np.abs(circuit.scores[ii, jj])
    order = np.argsort(-w, kind="stable")[:max_edges]
    wmax = w[order].max() if len(order) else 1.0
    fig = go.Figure()
    by_kind: dict = {}
    for o in order:
        i, j = int(ii[o]), int(jj[o])
        x0, y0 = pos[i]
        if j == g.n_backward - 1:
            (x1, y1), kind = logits, "logits"
        else:
            node, kind = owner[j]
            x1, y1 = pos[node]
        xs, ys, ws = by_kind.setdefault(kind, ([], [], []))
        xs += [x0, x1, None]
        ys += [y0, y1, None]
        ws.append(w[o])
    for kind, (xs, ys, ws) in by_kind.items():
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"→ {kind}", hoverinfo="skip",
                                 line={"color": colors[kind], "width": 0.5 + 3 * float(np.mean(ws)) / (wmax or 1)}, opacity=0.6))
    names = g.forward_names
    kept = [i for i in range(g.n_forward) if circuit.nodes[i]]
    fig.add_trace(go.Scatter(x=[pos[i][0] for i in kept] + [logits[0]], y=[pos[i][1] for i in kept] + [logits[1]],
                             mode="markers+text", text=[names[i] for i in kept] + ["logits"], textposition="middle right",
                             marker={"size": 9, "color": "#333"}, name="nodes", hoverinfo="text"))
    fig.update_layout(title=f"{title}: {int(circuit.in_graph.sum())} edges, {len(kept)} nodes",
                      xaxis={"title": "head (MLP at the right)", "zeroline": False},
                      yaxis={"title": "layer", "autorange": "reversed"}, height=max(500, 22 * g.n_layers))
    return fig
