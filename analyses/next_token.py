"""Next-token distribution and single-head attention patterns for one prompt.

The two views the dashboard opens with: what the model predicts after the prompt (top-k of
the softmax over the final position's logits, optionally under interventions), and where
one head of one layer attends (the post-softmax ``hook_pattern``, captured at that layer
only, so the forward pass stops there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from mechscope.probes import capture, hooknames
from mechscope.probes.errors import InputError, check_range
from mechscope.probes.forward import last_logits
from mechscope.probes.interventions import applied
from mechscope.probes.models import model_id
from mechscope.probes.results import Params, Result, analysis
from mechscope.probes.prompts import _prompt_field, normalise_prompt, prompt_ids  # noqa: F401
from mechscope.probes.tokens import check_length, str_tokens

@dataclass(frozen=True)
class NextTokenParams(Params):
    kind: ClassVar[str] = "next_token"
    prompt: str | tuple[int, ...] = _prompt_field()
    k: int = field(default=10, metadata={"help": "how many tokens to list"})
    prepend_bos: bool | None = field(default=None, metadata={"help": "prepend the model's BOS token (None: the model's policy)"})
    interventions: tuple = field(default=(), metadata={"help": "interventions applied during the forward pass"})

    def __post_init__(self):
        normalise_prompt(self)
        object.__setattr__(self, "interventions", tuple(self.interventions))
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise InputError(f"k must be a positive integer, not {self.k!r}.")


@dataclass(frozen=True)
class AttentionPatternParams(Params):
    kind: ClassVar[str] = "attention_pattern"
    prompt: str | tuple[int, ...] = _prompt_field()
    layer: int = field(default=0, metadata={"help": "layer"})
    head: int = field(default=0, metadata={"help": "query head"})
    prepend_bos: bool | None = field(default=None, metadata={"help": "prepend the model's BOS token (None: the model's policy)"})

    def __post_init__(self):
        normalise_prompt(self)


@dataclass(frozen=True)
class NextTokenResult(Result):
    """Top-k of p(next token | prompt) at the prompt's last position."""

    prompt_ids: np.ndarray  # [T] int64
    prompt_tokens: list
    top_ids: np.ndarray  # [k] int64, most probable first
    top_tokens: list
    top_probs: np.ndarray  # [k] float
    top_logprobs: np.ndarray  # [k] float
    entropy: float  # nats, of the full next-token distribution

    kind = "next_token"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "rank": np.arange(1, len(self.top_ids) + 1),
                "token_id": np.asarray(self.top_ids, dtype=np.int64),
                "token": list(self.top_tokens),
                "prob": np.asarray(self.top_probs, dtype=float),
                "logprob": np.asarray(self.top_logprobs, dtype=float),
            }
        )

    def figures(self) -> dict:
        import plotly.graph_objects as go

        labels = [f"{i + 1}. {t!r}" for i, t in enumerate(self.top_tokens)]
        fig = go.Figure(
            go.Bar(
                x=list(np.asarray(self.top_probs, dtype=float))[::-1],
                y=labels[::-1],
                orientation="h",
                hovertemplate="%{y}<br>p = %{x:.4f}<extra></extra>",
            )
        )
        fig.update_layout(
            title=f"Top-{len(self.top_ids)} next tokens ({self.model_id})",
            xaxis_title="probability",
            yaxis_title="token",
            height=max(260, 28 * len(labels) + 120),
            margin=dict(l=10, r=10, t=50, b=40),
        )
        return {"top_k": fig}


@analysis(NextTokenParams)
def next_token(model, params: NextTokenParams) -> NextTokenResult:
    """The ``k`` most probable next tokens after ``prompt`` (text or ids).

    One forward pass under the model's lock with the interventions applied; only the last
    position is unembedded (:func:`probes.forward.last_logits`), so memory does not grow with
    the prompt by T × d_vocab logits. Probabilities are the softmax of those logits.
    """
    ids = prompt_ids(model, params.prompt, params.prepend_bos)
    check_length(len(ids), model.cfg.n_ctx)
    k = min(params.k, model.cfg.d_vocab)
    with applied(model, params.interventions), torch.no_grad():
        last = last_logits(model, ids[None].to(model.cfg.device))[0]
    logprobs = last.to("cpu").float().log_softmax(-1)
    top = torch.topk(logprobs, k)
    top_ids = top.indices.to(torch.long)
    probs = logprobs.exp()
    entropy = float(-(probs * logprobs).nan_to_num(0.0).sum())
    return NextTokenResult(
        model_id=model_id(model),
        params=params,
        prompt_ids=ids.numpy().astype(np.int64),
        prompt_tokens=str_tokens(model, ids),
        top_ids=top_ids.numpy().astype(np.int64),
        top_tokens=str_tokens(model, top_ids),
        top_probs=top.values.exp().numpy().astype(np.float64),
        top_logprobs=top.values.numpy().astype(np.float64),
        entropy=entropy,
    )


@dataclass(frozen=True)
class AttentionPatternResult(Result):
    """One head's post-softmax attention pattern A[q, k] over the prompt."""

    tokens: list
    pattern: np.ndarray  # [T, T] float, rows sum to 1 over k <= q

    kind = "attention_pattern"

    @property
    def layer(self) -> int:
        return int(self.params.layer)

    @property
    def head(self) -> int:
        return int(self.params.head)

    def to_frame(self) -> pd.DataFrame:
        t = len(self.tokens)
        q, kk = np.tril_indices(t)
        return pd.DataFrame(
            {
                "query_pos": q,
                "key_pos": kk,
                "query_token": [self.tokens[i] for i in q],
                "key_token": [self.tokens[i] for i in kk],
                "weight": np.asarray(self.pattern)[q, kk].astype(float),
            }
        )

    def figures(self) -> dict:
        import plotly.graph_objects as go

        t = len(self.tokens)
        pat = np.asarray(self.pattern, dtype=float).copy()
        pat[np.triu_indices(t, 1)] = np.nan  # future keys are not visible: leave them blank
        labels = [f"{i}:{tok!r}" for i, tok in enumerate(self.tokens)]
        hover = [[f"q {labels[i]}<br>k {labels[j]}" for j in range(t)] for i in range(t)]
        fig = go.Figure(
            go.Heatmap(
                z=pat,
                x=list(range(t)),
                y=list(range(t)),
                colorscale="Blues",
                zmin=0.0,
                zmax=1.0,
                customdata=hover,
                hovertemplate="%{customdata}<br>weight %{z:.3f}<extra></extra>",
                colorbar=dict(title="weight"),
            )
        )
        ticks = dict(tickmode="array", tickvals=list(range(t)), ticktext=labels)
        fig.update_layout(
            title=f"Attention pattern, layer {self.layer} head {self.head} ({self.model_id})",
            xaxis=dict(title="key", **ticks),
            yaxis=dict(title="query", autorange="reversed", **ticks),
            height=max(360, 18 * t + 160),
            margin=dict(l=10, r=10, t=50, b=10),
        )
        return {"attention": fig}


@analysis(AttentionPatternParams)
def attention_pattern(model, params: AttentionPatternParams) -> AttentionPatternResult:
    """Head ``head`` of layer ``layer``: ``blocks.{layer}.attn.hook_pattern`` over ``prompt``.

    Only that hook is captured, so the forward pass stops after ``layer``. With grouped-query
    attention TransformerLens expands the key/value heads, so ``head`` is a query head.
    """
    layer, head = params.layer, params.head
    check_range("layer", layer, model.cfg.n_layers)
    check_range("head", head, model.cfg.n_heads)
    ids = prompt_ids(model, params.prompt, params.prepend_bos)
    name = hooknames.name("pattern", layer)
    out = capture.run(model, [ids], capture=[name])
    pattern = out.activations[name][0][head].float().numpy().astype(np.float64)
    return AttentionPatternResult(
        model_id=model_id(model),
        params=params,
        tokens=str_tokens(model, ids),
        pattern=pattern,
    )
