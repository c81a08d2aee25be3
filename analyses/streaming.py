"""Streaming perplexity: StreamingLLM's comparison (Xiao et al. 2023; docs/sinks.md#streamingllm).

Per-token negative log-likelihood of a long text under four attention regimes, all with the
same budget of C = S + W cached tokens where bounded:

(a) ``full``: full attention, one forward pass (up to n_ctx tokens);
(b) ``window``: a real KV cache keeping the C most recent tokens (window attention);
(c) ``sink_window``: a real KV cache keeping the first S tokens + the W most recent
    (StreamingLLM; positions re-assigned inside the cache);
(d) ``recompute``: sliding-window recomputation — token t+1 is predicted by a fresh forward
    pass over tokens t−C..t (the same C+1 tokens of attention span as (b), (c)).

(b) and (c) are teacher-forced one token at a time through ``probes.kv_policies``. (d) is
exact but costs C+1 tokens of forward pass per scored token, so by default it scores every
``recompute_every``-th position past the cache (an evenly spaced subsample); the summary
also compares all four policies on exactly those positions. Positions before the cache
fills are identical under (b), (c), (d) and (a) (nothing is evicted), so (d) reuses (a).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import pandas as pd
import torch

from mechscope.probes.errors import InputError
from mechscope.probes.interventions import applied
from mechscope.probes.kv_policies import SinkWindow, WindowOnly, stream_logprobs
from mechscope.probes.models import model_id
from mechscope.probes.readout import logits_from_resid
from mechscope.probes.results import Params, Result, analysis
from mechscope.probes.tokens import text_ids

POLICIES = ("full", "window", "sink_window", "recompute")


@dataclass(frozen=True)
class StreamingResult(Result):
    """Per-token NLL [4, N−1] (NaN where a policy did not score that position)."""

    policies: tuple
    nll: np.ndarray
    cache_size: int
    source: str = "custom"  # the long text's name, or "custom"
    n_scored: int = 0  # tokens actually scored (≤ n_tokens)
    window_only_cache: int = 0  # the window-only baseline's cache (= S + W, equal memory)

    kind = "streaming_ppl"

    def summary(self) -> pd.DataFrame:
        n = self.nll.shape[1]
        t = np.arange(n)
        past = t >= self.cache_size
        common = past & ~np.isnan(self.nll).any(0)
        rows = []
        for i, p in enumerate(self.policies):
            x = self.nll[i]
            row = {"policy": p}
            for label, sel in (("all", np.ones(n, bool)), ("past_cache", past), ("common_past_cache", common)):
                v = x[sel & ~np.isnan(x)]
                row[f"ppl_{label}"] = float(np.exp(v.mean())) if v.size else float("nan")
                row[f"n_{label}"] = int(v.size)
            rows.append(row)
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        return self.summary()

    def curves(self, bin_size: int = 64) -> pd.DataFrame:
        """Perplexity in consecutive bins of positions, per policy."""
        n = self.nll.shape[1]
        rows = []
        for i, p in enumerate(self.policies):
            for start in range(0, n, bin_size):
                v = self.nll[i, start : start + bin_size]
                v = v[~np.isnan(v)]
                if v.size:
                    rows.append({"policy": p, "position": start + bin_size / 2, "ppl": float(np.exp(v.mean())), "n": v.size})
        return pd.DataFrame(rows)

    def figures(self) -> dict:
        import plotly.express as px

        df = self.curves(max(16, self.cache_size // 4))
        fig = px.line(df, x="position", y="ppl", color="policy", log_y=True, markers=True,
                      title=f"Streaming perplexity by position (cache {self.cache_size} tokens; "
                            f"S = {self.params.n_sink}, W = {self.params.window})")
        fig.add_vline(x=self.cache_size, line_dash="dot", annotation_text="cache full")
        fig.update_layout(xaxis_title="token position", yaxis_title="perplexity (bin)")
        return {"streaming_ppl": fig}


@dataclass(frozen=True)
class StreamingParams(Params):
    """Parameters of :func:`streaming_perplexity`. Defaults: StreamingLLM's S = 4 sinks and
    a 256-token cache (W = 252), 2,048 tokens of the shipped long text."""

    kind: ClassVar[str] = "streaming_ppl"
    text: str | tuple[int, ...] | None = field(default=None, metadata={"help": "custom text or ids (None: long_text)"})
    long_text: str = field(default="paradise_lost", metadata={"help": "shipped long text"})
    n_tokens: int = field(default=2048, metadata={"help": "tokens of the text to score"})
    n_sink: int = field(default=4, metadata={"help": "S, sink tokens kept"})
    window: int = field(default=252, metadata={"help": "W, recent tokens kept"})
    recompute_every: int = field(default=8, metadata={"help": "score every N-th position past the cache by recomputation"})
    policies: tuple[str, ...] = field(default=POLICIES, metadata={"help": "policies to run"})
    batch_size: int = field(default=8, metadata={"help": "windows per recomputation pass"})

    def __post_init__(self):
        object.__setattr__(self, "policies", tuple(self.policies))
        if self.text is not None and not isinstance(self.text, str):
            object.__setattr__(self, "text", tuple(int(t) for t in self.text))


@analysis(StreamingParams)
def streaming_perplexity(model, params: StreamingParams, progress: Callable[[int, int], None] | None = None) -> StreamingResult:
    """NLL of the first ``n_tokens`` tokens of ``text`` (default: the shipped long text)
    under the four policies. The cache holds C = ``n_sink`` + ``window`` tokens."""
    text, long_text, n_tokens, n_sink, window = params.text, params.long_text, params.n_tokens, params.n_sink, params.window
    recompute_every, policies, batch_size = params.recompute_every, params.policies, params.batch_size
    policies = tuple(policies)
    for p in policies:
        if p not in POLICIES:
            raise InputError(f"Unknown streaming policy {p!r}: choose from {', '.join(POLICIES)}.")
    sw = SinkWindow(n_sink, window)  # validates S <= W
    wo = WindowOnly(sw.max_cache_len)
    sw.validate(model)
    if not isinstance(recompute_every, int) or recompute_every < 1:
        raise InputError("recompute_every must be a positive integer.")
    source = "custom" if text is not None else long_text
    if text is None:
        from mechscope.probes import datasets

        text = datasets.load_long_text(long_text)
    if isinstance(text, str):
        ids = text_ids(model, text)
    else:
        ids = [int(t) for t in text]
    ids = ids[:n_tokens]
    cap = sw.max_cache_len
    if len(ids) <= cap + 1:
        raise InputError(f"The text ({len(ids)} tokens) must be longer than the cache ({cap}) + 1 to test streaming.")
    n = len(ids)
    nll = np.full((len(POLICIES), n - 1), np.nan, dtype=np.float64)
    t_all = torch.tensor(ids)
    work = {"full": 1, "window": n - cap, "sink_window": 0, "recompute": len(range(cap, n - 1, recompute_every))}
    total = sum(work[p] for p in policies if p != "sink_window") or 1
    done = [0]

    def tick(k=1):
        done[0] += k
        if progress is not None:
            progress(min(done[0], total), total)

    if "full" in policies or "recompute" in policies:
        m = min(n, model.cfg.n_ctx)
        with applied(model), torch.no_grad():
            logits = model(t_all[None, :m].to(model.cfg.device))[0].float()
        lp = logits[:-1].log_softmax(-1).gather(-1, t_all[1:m, None].to(logits.device))[:, 0].cpu().double()
        full = -lp.numpy()
        del logits
        if "full" in policies:
            nll[0, : m - 1] = full
        if "recompute" in policies:
            nll[3, :cap] = full[:cap]
        tick()
    cached = [p for p in ("window", "sink_window") if p in policies]
    if cached:
        pols = [wo if p == "window" else sw for p in cached]
        start = done[0]
        lp = stream_logprobs(model, ids, pols, progress=lambda d, t: progress and progress(min(start + max(d - cap, 0), total), total))
        done[0] = start + (n - cap)
        for p, row in zip(cached, lp):
            nll[POLICIES.index(p)] = -row.double().numpy()
    if "recompute" in policies:
        positions = list(range(cap, n - 1, recompute_every))
        with applied(model), torch.no_grad():
            for s in range(0, len(positions), batch_size):
                chunk = positions[s : s + batch_size]
                win = torch.stack([t_all[t - cap : t + 1] for t in chunk]).to(model.cfg.device)
                resid = model(win, stop_at_layer=model.cfg.n_layers)[:, -1:]  # last position only
                logits = logits_from_resid(model, resid)[:, 0].float()
                lp = logits.log_softmax(-1).gather(-1, torch.tensor([ids[t + 1] for t in chunk], device=logits.device)[:, None])[:, 0]
                nll[3, chunk] = -lp.double().cpu().numpy()
                tick(len(chunk))
    return StreamingResult(model_id=model_id(model), params=params, policies=POLICIES, source=source, n_scored=n,
                           window_only_cache=wo.window, nll=nll.astype(np.float32), cache_size=cap)
