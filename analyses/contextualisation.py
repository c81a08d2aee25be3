"""Contextualisation: how much of its prefix a token's hidden states hold (LLM-Microscope,
Razzhigaev et al. 2025, arXiv 2502.15007; docs/logit_lens.md#llm-microscope-metrics).

The paper measures a token's context memory by how well the preceding text can be
reconstructed from that token's representations alone. Here, as there:

1. the states of token t at every layer (the embedding row and the output of each block)
   are standardised per layer (centred and divided by the layer's mean norm, fitted on the
   training positions) and concatenated;
2. a **linear adapter** maps them to one input embedding e_t of the *same, frozen* model;
3. the model, fed ``[e_t, x_{t-k+1}, …, x_{t-1}]`` (teacher forcing), must predict the k
   prefix tokens ``x_{t-k+1}, …, x_t`` — only the adapter is trained (Adam, cross-entropy);
4. on held-out texts, the **reconstruction loss** (mean cross-entropy over the k slots, in
   nats) is the token's contextualisation score: lower = more of its context recoverable.

A control adapter with no input (one trained embedding, same batches and steps) gives the
loss with no information about the token — the decoder's best prior; ``gain`` = control −
loss is what the states add (nats). Texts
are split, not positions, so no evaluated token was seen in training. The paper's exact
adapter and training budget are not published in its code; the choices here are recorded
in the Params (linear adapter, all layers, k, steps, learning rate, seed).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from mechscope.probes import capture, hooknames
from mechscope.probes.errors import InputError
from mechscope.probes.lexical import lexical_class
from mechscope.probes.models import model_id
from mechscope.probes.results import Result, analysis
from mechscope.probes.texts import TextInputs, encode_texts, max_tokens_field


@dataclass(frozen=True)
class ContextParams(TextInputs):
    kind: ClassVar[str] = "contextualisation"
    LEGACY_FIELDS: ClassVar[dict] = {"max_tokens_per_text": "max_tokens"}
    max_tokens: int | None = max_tokens_field(128)
    prefix: int = field(default=8, metadata={"help": "k: prefix tokens reconstructed (x_{t-k+1}..x_t)"})
    eval_fraction: float = field(default=0.25, metadata={"help": "share of the texts held out for scoring"})
    max_train: int = field(default=4096, metadata={"help": "training positions at most"})
    max_eval: int = field(default=1024, metadata={"help": "scored positions at most"})
    steps: int = field(default=300, metadata={"help": "adapter training steps"})
    batch_size: int = field(default=64, metadata={"help": "positions per training step"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    seed: int = field(default=0, metadata={"help": "position sampling and batching seed"})

    def __post_init__(self):
        super().__post_init__()
        if self.prefix < 1:
            raise InputError("prefix must be at least 1 token.")
        if not 0 < self.eval_fraction < 1:
            raise InputError("eval_fraction must lie in (0, 1).")
        for name in ("max_train", "max_eval", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1.")
        if not self.lr > 0:
            raise InputError("lr must be > 0.")


@dataclass(frozen=True)
class ContextResult(Result):
    """Per scored token: reconstruction loss per prefix slot and the control's."""

    loss: np.ndarray  # [n_eval, k] cross-entropy (nats) of slot j = x_{t-k+1+j}; slot k-1 is x_t itself
    control: np.ndarray  # [n_eval, k] the same decoder fed one trained, state-free embedding
    tokens: pd.DataFrame  # one row per scored token: text, pos, token_id, token, class, loss, gain
    train_curve: np.ndarray  # [steps] training loss

    kind = "contextualisation"

    def by_class(self) -> pd.DataFrame:
        return (self.tokens.groupby("token_class")[["loss", "gain"]].agg(["count", "mean"])
                .sort_values(("loss", "mean")).reset_index())

    def by_distance(self) -> pd.DataFrame:
        k = self.loss.shape[1]
        return pd.DataFrame({"distance": np.arange(k)[::-1], "loss": self.loss.mean(0), "control": self.control.mean(0),
                             "gain": (self.control - self.loss).mean(0)}).sort_values("distance").reset_index(drop=True)

    def to_frame(self) -> pd.DataFrame:
        t = self.by_class()
        t.columns = ["token_class", "count", "loss", "_n", "gain"]
        return t.drop(columns="_n")

    def figures(self) -> dict:
        import plotly.graph_objects as go

        d = self.by_distance()
        curve = go.Figure([go.Scatter(x=d["distance"], y=d["loss"], mode="lines+markers", name="from the token's states"),
                           go.Scatter(x=d["distance"], y=d["control"], mode="lines+markers", name="control (no state)")])
        curve.update_layout(title="Prefix reconstruction loss by distance back (0 = the token itself)",
                            xaxis_title="distance back", yaxis_title="cross-entropy (nats)")
        c = self.to_frame()
        bar = go.Figure(go.Bar(x=c["token_class"], y=c["loss"], text=c["count"], hovertemplate="%{x}: %{y:.3f} nats (n=%{text})"))
        bar.update_layout(title="Contextualisation by token class (lower loss = more context stored)",
                          yaxis_title=f"mean reconstruction loss over {self.loss.shape[1]} prefix tokens")
        return {"loss_by_distance": curve, "loss_by_class": bar}


@contextlib.contextmanager
def _frozen(model):
    """Model parameters out of autograd for the duration (restored even on error)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _states(model, seqs, picks) -> torch.Tensor:
    """[n, L+1, d] float32: the embedding row and every block's output at the picked
    (text, position) pairs."""
    L = model.cfg.n_layers
    names = [hooknames.name("resid_pre", 0)] + [hooknames.name("resid_post", l) for l in range(L)]
    by_text: dict[int, list[tuple[int, int]]] = {}
    for row, (i, pos) in enumerate(picks):
        by_text.setdefault(i, []).append((row, pos))
    out = torch.empty(len(picks), L + 1, model.cfg.d_model)
    dev = model.cfg.device
    with torch.no_grad():
        for i, rows in by_text.items():
            _, cache = capture.run_with_cache(model, seqs[i][None].to(dev), names=names)
            pos = torch.tensor([p for _, p in rows])
            idx = torch.tensor([r for r, _ in rows])
            for j, n in enumerate(names):
                out[idx, j] = cache[n][0, pos].float().cpu()
            del cache
    return out


def _picks(seqs, text_ids, k: int, n_max: int, g: torch.Generator) -> list[tuple[int, int]]:
    cand = [(i, p) for i in text_ids for p in range(k - 1, len(seqs[i]))]
    order = torch.randperm(len(cand), generator=g)[:n_max].tolist()
    return sorted(cand[j] for j in order)


def _decoder_input(model, e: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """Residual input [B, k, d]: e, then the embeddings of prefix[:, :-1] (positions added
    for models with learned position embeddings)."""
    rest = model.embed(prefix[:, :-1])
    x = torch.cat([e[:, None, :].to(rest.dtype), rest], 1)
    if model.cfg.positional_embedding_type == "standard":
        x = x + model.pos_embed(prefix)
    return x


def _slot_loss(model, e: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """[B, k] cross-entropy of each prefix token given [e, earlier prefix tokens]."""
    logits = model(_decoder_input(model, e, prefix), start_at_layer=0, return_type="logits")
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), prefix.flatten(), reduction="none").view(prefix.shape)


@analysis(ContextParams)
def contextualisation(model, params: ContextParams, progress=None) -> ContextResult:
    """Train a linear adapter from a token's all-layer states to an input embedding from
    which the frozen model reconstructs the token's k-token prefix; score held-out tokens by
    the reconstruction loss (see the module docstring)."""
    p = params
    k = p.prefix
    seqs = [x.cpu() for x in encode_texts(model, p.selected(), p.max_tokens)]
    usable = [i for i, s in enumerate(seqs) if len(s) >= k]
    if len(usable) < 2:
        raise InputError(f"Need at least 2 texts of ≥ {k} tokens (prefix) to train and score; got {len(usable)}.")
    n_eval_texts = min(len(usable) - 1, max(1, round(len(usable) * p.eval_fraction)))
    train_texts, eval_texts = usable[:-n_eval_texts], usable[-n_eval_texts:]
    g = torch.Generator().manual_seed(p.seed)
    tr_picks = _picks(seqs, train_texts, k, p.max_train, g)
    ev_picks = _picks(seqs, eval_texts, k, p.max_eval, g)
    dev = model.cfg.device

    def prefixes(picks):
        return torch.stack([seqs[i][pos - k + 1: pos + 1] for i, pos in picks]).long()

    X_tr, X_ev = _states(model, seqs, tr_picks), _states(model, seqs, ev_picks)
    mu = X_tr.mean(0, keepdim=True)
    scale = (X_tr - mu).norm(dim=-1).mean(0, keepdim=True)[..., None].clamp(min=1e-8)
    feats = lambda X: ((X - mu) / scale).flatten(1)  # noqa: E731
    F_tr, F_ev = feats(X_tr).to(dev), feats(X_ev).to(dev)
    P_tr, P_ev = prefixes(tr_picks).to(dev), prefixes(ev_picks).to(dev)

    d = model.cfg.d_model
    W = torch.zeros(F_tr.shape[1], d, device=dev, requires_grad=True)
    b = model.W_E.detach().float().mean(0).clone().to(dev).requires_grad_(True)
    c = b.detach().clone().requires_grad_(True)  # the control: an embedding that sees no state
    opt, opt_c = torch.optim.Adam([W, b], lr=p.lr), torch.optim.Adam([c], lr=p.lr)
    curve = np.empty(p.steps)
    with _frozen(model), torch.enable_grad():
        for step in range(p.steps):
            idx = torch.randint(0, len(F_tr), (min(p.batch_size, len(F_tr)),), generator=g).to(dev)
            for o, emb in ((opt, F_tr[idx] @ W + b), (opt_c, c.expand(len(idx), -1))):
                loss = _slot_loss(model, emb, P_tr[idx]).mean()
                o.zero_grad()
                loss.backward()
                o.step()
                if o is opt:
                    curve[step] = loss.item()
            if callable(progress):
                progress(step + 1, p.steps)
    with torch.no_grad():
        rows, ctrl = [], []
        for s in range(0, len(F_ev), p.batch_size):
            e = F_ev[s: s + p.batch_size] @ W + b
            rows.append(_slot_loss(model, e, P_ev[s: s + p.batch_size]).cpu())
            ctrl.append(_slot_loss(model, c.expand_as(e), P_ev[s: s + p.batch_size]).cpu())
    loss_m, ctrl_m = torch.cat(rows).numpy(), torch.cat(ctrl).numpy()
    from mechscope.probes.tokens import str_tokens

    ids = [int(seqs[i][pos]) for i, pos in ev_picks]
    toks = str_tokens(model, ids)
    frame = pd.DataFrame({
        "text": [i for i, _ in ev_picks], "pos": [pos for _, pos in ev_picks], "token_id": ids, "token": toks,
        "token_class": [lexical_class(t) for t in toks],
        "loss": loss_m.mean(1), "gain": (ctrl_m - loss_m).mean(1),
    })
    return ContextResult(model_id=model_id(model), params=params, loss=loss_m, control=ctrl_m, tokens=frame,
                         train_curve=curve)
