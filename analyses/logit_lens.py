"""Logit lens: every layer × position of one prompt decoded through the unembedding.

nostalgebraist (2020); docs/logit_lens.md#logit-lens. The residual stream after block l
(``blocks.l.hook_resid_post``) is decoded in one of two ways:

* ``norm="final"`` (the usual logit lens): through the model's own final norm and
  unembedding, ``unembed(ln_final(h_l))``. At the last layer this *is* the model's forward
  pass, so its logits equal the model's (tested).
* ``norm="raw"`` (LLM-Microscope's variant, Razzhigaev et al. 2025, arXiv 2502.15007): the
  LM head applied directly, ``h_l · W_U + b_U``, without the final norm.

Per layer and position: the top-k tokens and probabilities, the rank and probability of a
chosen target token (default: the model's final top-1 at each position), the KL divergence
KL(p_final ‖ p_l) to the final distribution, and per position the first layer at which the
final answer is already the top-1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import torch

from mechscope.probes.prompts import DEFAULT_PROMPT, normalise_prompt, prompt_ids
from mechscope.probes import hooknames
from mechscope.probes.errors import InputError
from mechscope.probes.models import model_id
from mechscope.probes.readout import logits_from_resid
from mechscope.probes.results import Params, Result, analysis


@dataclass(frozen=True)
class LogitLensParams(Params):
    kind: ClassVar[str] = "logit_lens"
    prompt: str | tuple[int, ...] = field(default=DEFAULT_PROMPT, metadata={"help": "the text (or token ids) to decode"})
    target: str | int | None = field(default=None, metadata={
        "help": "a single token (or id) to track across layers (None: the final top-1 at each position)"})
    norm: Literal["final", "raw"] = field(default="final", metadata={
        "help": "final: final norm + W_U (logit lens); raw: W_U without the norm (LLM-Microscope)"})
    k: int = field(default=5, metadata={"help": "top tokens per cell"})
    pos: int | None = field(default=None, metadata={"help": "position the trajectory figure shows (None: the last)"})
    prepend_bos: bool | None = field(default=None, metadata={"help": "prepend the model's BOS token (None: the model's policy)"})

    def __post_init__(self):
        normalise_prompt(self)
        if self.norm not in ("final", "raw"):
            raise InputError(f"norm must be 'final' or 'raw', not {self.norm!r}.")
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise InputError(f"k must be a positive integer, not {self.k!r}.")
        if isinstance(self.target, str) and self.target == "":
            object.__setattr__(self, "target", None)


@dataclass(frozen=True)
class LogitLensResult(Result):
    """Arrays are [n_layers, n_pos] (top-k ones [n_layers, n_pos, k]); row l = after block l."""

    tokens: list  # the prompt's tokens, readable
    token_ids: list
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    top_tokens: np.ndarray  # readable labels of top_ids [L, T, k]
    target_ids: list  # per position
    target_tokens: list
    target_rank: torch.Tensor  # 1 = top
    target_prob: torch.Tensor
    kl_to_final: torch.Tensor  # nats
    first_top1_layer: list  # per position: first layer whose top-1 is the final top-1 (-1: never)

    kind = "logit_lens"

    def to_frame(self) -> pd.DataFrame:
        L, T, _ = self.top_ids.shape
        return pd.DataFrame({
            "layer": np.repeat(np.arange(L), T),
            "pos": np.tile(np.arange(T), L),
            "input_token": self.tokens * L,
            "top_token": self.top_tokens[:, :, 0].reshape(-1),
            "top_prob": self.top_probs[:, :, 0].reshape(-1).numpy(),
            "target_token": self.target_tokens * L,
            "target_rank": self.target_rank.reshape(-1).numpy(),
            "target_prob": self.target_prob.reshape(-1).numpy(),
            "kl_to_final": self.kl_to_final.reshape(-1).numpy(),
        })

    def figures(self) -> dict:
        import plotly.graph_objects as go

        L, T, _ = self.top_ids.shape
        xlab = [f"{i}:{t!r}" for i, t in enumerate(self.tokens)]
        variant = "final norm + W_U" if self.params.norm == "final" else "raw W_U (LLM-Microscope)"
        heat = go.Figure(go.Heatmap(
            z=self.top_probs[:, :, 0].numpy(), x=xlab, y=list(range(L)), text=self.top_tokens[:, :, 0],
            texttemplate="%{text}", colorscale="Blues", zmin=0, zmax=1, colorbar={"title": "p(top)"},
            hovertemplate="layer %{y}, %{x}<br>top %{text} p=%{z:.3f}<extra></extra>"))
        heat.update_layout(title=f"Logit lens ({variant}): top token and its probability",
                           xaxis_title="position: input token", yaxis_title="layer", height=max(400, 22 * L))
        pos = T - 1 if self.params.pos is None else self.params.pos % T
        traj = go.Figure()
        traj.add_trace(go.Scatter(x=list(range(L)), y=self.target_prob[:, pos].numpy(), name="probability",
                                  mode="lines+markers"))
        traj.add_trace(go.Scatter(x=list(range(L)), y=self.target_rank[:, pos].numpy(), name="rank", yaxis="y2",
                                  mode="lines+markers"))
        traj.update_layout(title=f"Target {self.target_tokens[pos]!r} at position {pos} across layers",
                           xaxis_title="layer", yaxis={"title": "probability"},
                           yaxis2={"title": "rank", "overlaying": "y", "side": "right", "type": "log",
                                   "autorange": "reversed"})
        kl = go.Figure(go.Heatmap(z=self.kl_to_final.numpy(), x=xlab, y=list(range(L)), colorscale="Viridis",
                                  colorbar={"title": "KL (nats)"}))
        kl.update_layout(title="KL(final ‖ layer) per layer and position", xaxis_title="position",
                         yaxis_title="layer")
        return {"top_token_heatmap": heat, "target_trajectory": traj, "kl_to_final": kl}


def decode_resid(model, resid: torch.Tensor, norm: Literal["final", "raw"] = "final") -> torch.Tensor:
    """Alias of :func:`probes.readout.logits_from_resid` with the lens' ``norm`` names."""
    if norm not in ("final", "raw"):
        raise InputError(f"norm must be 'final' or 'raw', not {norm!r}.")
    return logits_from_resid(model, resid, final_norm=norm == "final")


@analysis(LogitLensParams)
def logit_lens(model, params: LogitLensParams) -> LogitLensResult:
    """Decode every layer × position of ``prompt`` (text or token ids).

    ``target``: a token (string that must be one token, or an id) whose rank/probability is
    tracked at every position; default the model's final top-1 at each position. ``pos``
    only picks the position the trajectory figure shows (default the last).
    """
    from mechscope.probes.capture import run
    from mechscope.probes.tokens import single_token, str_tokens

    norm, k, pos = params.norm, params.k, params.pos
    V = model.cfg.d_vocab
    if not 1 <= k <= V:
        raise InputError(f"k must lie in 1..{V}.")
    ids = prompt_ids(model, params.prompt, params.prepend_bos)
    T = len(ids)
    if pos is not None and not -T <= pos < T:
        raise InputError(f"pos {pos} is out of range: the prompt has {T} tokens.")
    L = model.cfg.n_layers
    names = [hooknames.name("resid_post", layer) for layer in range(L)]
    tgt_id = None if params.target is None else single_token(model, params.target)
    out = run(model, [ids], capture=names)
    resid = torch.stack([out.activations[n][0] for n in names])  # [L, T, d]
    with torch.no_grad():
        logp = torch.log_softmax(logits_from_resid(model, resid, final_norm=norm == "final").float(), dim=-1)
        final = torch.log_softmax(logits_from_resid(model, resid[-1:], final_norm=True).float(), dim=-1)[0]
    final_top = final.argmax(-1)  # [T]
    tgt = final_top if tgt_id is None else torch.full((T,), tgt_id, dtype=torch.long)
    tp, ti = torch.topk(logp.exp(), k, dim=-1)
    tlogp = logp.gather(-1, tgt[None, :, None].expand(L, T, 1))[..., 0]
    rank = (logp > tlogp[..., None]).sum(-1) + 1
    pf = final.exp()
    kl = (pf[None] * (final[None] - logp)).sum(-1).clamp(min=0)
    is_top = logp.argmax(-1) == final_top[None]  # [L, T]
    first = [int(torch.nonzero(is_top[:, t])[0]) if is_top[:, t].any() else -1 for t in range(T)]
    labels = str_tokens(model, ti.reshape(-1))
    return LogitLensResult(
        model_id=model_id(model), params=params,
        tokens=str_tokens(model, ids), token_ids=[int(i) for i in ids],
        top_ids=ti.to(torch.int32), top_probs=tp, top_tokens=np.array(labels, dtype=object).reshape(L, T, k),
        target_ids=[int(i) for i in tgt], target_tokens=str_tokens(model, tgt),
        target_rank=rank.to(torch.int32), target_prob=tlogp.exp(), kl_to_final=kl, first_top1_layer=first,
    )
