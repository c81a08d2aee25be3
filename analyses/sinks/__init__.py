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
no T×T pattern outlives its layer.

One job per module; this package re-exports their public names: ``metrics`` (the pure
functions tests check on hand-built matrices, and the per-token table), ``result``
(:class:`SinkResult`, its views and figures), ``analysis`` (:class:`SinkParams`,
:func:`attention_sinks`, the first-token variants).
"""

from __future__ import annotations

from mechscope.analyses.sinks.metrics import (  # noqa: F401
    alpha_from_pattern,
    check_eps,
    dormancy_score,
    enough_queries,
    sink_rate,
    token_class,
)
from mechscope.analyses.sinks.result import SinkResult  # noqa: F401
from mechscope.analyses.sinks.analysis import VARIANTS, SinkParams, attention_sinks, variant_ids  # noqa: F401
