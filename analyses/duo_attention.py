"""DuoAttention gates (Xiao et al. 2024; docs/retrieval.md#duoattention): which KV heads need the full
context (retrieval heads) and which do with sinks + a recent window (streaming heads).

Training, as in mit-han-lab/duo-attention (``duo_attn/train.py``): every KV head gets a gate
α (init 1); the gated model (:mod:`probes.duo`) is distilled towards the unmodified model
on synthetic multi-passkey retrieval samples (:mod:`probes.passkey`):

    loss = mean over supervised positions of mean_d (h_gated − h_full)²  +  λ · mean |α|

(h: final hidden states after the final norm; supervised positions: the question-and-answer
tail), AdamW on the gates only (weight decay 0), the reference's learning-rate schedule
(linear warm-up over the first fifth of the steps, linear decay over the last fifth, floor
0.1), gates clamped to [0, 1] before every step. Heads with α ≥ ``threshold`` (0.5) are
retrieval heads. Reference settings: λ = 0.05, lr 0.1 (its default; 0.02 for its released patterns), sinks 128,
window 256, 2,000 steps on 1k–32k-token contexts, 10 passkeys of 32 words; the defaults
here are scaled to the embedded 135M model on a CPU (every choice is in the Params).

Overlap with Wu et al.'s retrieval heads (``analyses.retrieval``): given query heads (e.g.
those scoring > 0.1), a KV head is a retrieval KV head when any of its query heads is one
(GQA grouping); reported as Jaccard, precision and recall of the gate set at the KV-head
level. :func:`gate_score_spearman` ranks gates against the grouped max of the per-query-head
scores when a saved retrieval-heads result is at hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal, Sequence

import numpy as np
import pandas as pd
import torch

from mechscope.probes.passkey import PasskeySample, passkey_samples
from mechscope.probes.duo import FULL_BRANCHES, check_window, final_hidden, gate_hooks, z_capture_hooks
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import applied
from mechscope.probes.locks import model_lock
from mechscope.probes.models import model_id
from mechscope.probes.razor import kv_group, n_kv_heads
from mechscope.probes.results import Params, Result, analysis

THRESHOLD = 0.5


# ---------------------------------------------------------------------------------------
# training (pure: token samples in, gates out)


def reference_lr_factor(step: int, steps: int) -> float:
    """The reference's LambdaLR factor: min(1, max((s+1)/(N/5), 0.1), max((N−s)/(N/5), 0.1))."""
    fifth = max(steps // 5, 1)
    return min(1.0, max((step + 1) / fifth, 0.1), max((steps - step) / fifth, 0.1))


@dataclass
class TrainLog:
    distill: list[float] = field(default_factory=list)
    reg: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)


def distill_loss(h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over positions of the mean squared difference over d_model (the reference's
    ``(a − b).pow(2).mean(-1).sum() / n_labels``), in float32 or wider."""
    dt = torch.promote_types(h.dtype, torch.float32)
    return (h.to(dt) - target.to(dt)).pow(2).mean(-1).mean()


def train_gates(model, samples: Sequence[tuple[Sequence[int], int]], n_sink: int, window: int, lr: float,
                reg_weight: float, full_branch: str = "reference", init: float = 1.0, checkpoint: bool = True,
                progress: Callable[[int, int], None] | None = None,
                stop: Callable[[], bool] | None = None) -> tuple[torch.Tensor, TrainLog, bool]:
    """Train one gate per KV head, one step per ``(ids, answer_start)`` sample. Only the
    gates receive gradients (the model's parameters are frozen for the duration and
    restored). Returns (gates [layers, KV heads] clamped to [0, 1], the log, complete);
    KeyboardInterrupt (or ``stop()`` turning true between steps, e.g. a time budget) stops
    early with ``complete=False`` and the gates reached so far."""
    check_window(n_sink, window)
    if full_branch not in FULL_BRANCHES:
        raise InputError(f"full_branch must be one of {', '.join(FULL_BRANCHES)}, not {full_branch!r}.")
    if not samples:
        raise InputError("Give at least one training sample.")
    device = model.cfg.device
    gates = torch.nn.Parameter(torch.full((model.cfg.n_layers, n_kv_heads(model)), float(init), device=device,
                                          dtype=torch.float32))
    opt = torch.optim.AdamW([gates], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: reference_lr_factor(s, len(samples)))
    log, complete = TrainLog(), True
    lock = model_lock(model)
    with lock:
        flags = [(p, p.requires_grad) for p in model.parameters()]
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            for i, (ids, start) in enumerate(samples):
                if stop is not None and stop():
                    complete = False
                    break
                tokens = torch.as_tensor(list(ids), dtype=torch.long, device=device)[None]
                if not 0 <= start < tokens.shape[1]:
                    raise InputError(f"Sample {i}: answer_start {start} outside its {tokens.shape[1]} tokens.")
                with torch.no_grad():
                    gates.clamp_(0.0, 1.0)
                    ref_z: list[torch.Tensor] = []
                    capture = z_capture_hooks(model, ref_z) if full_branch == "reference" else []
                    with applied(model, extra_hooks=capture):
                        target = final_hidden(model, tokens)[:, start:]
                # backward inside the block: checkpointed blocks re-run their hooks there
                with applied(model, extra_hooks=gate_hooks(model, gates, n_sink, window, full_branch, ref_z or None)):
                    h = final_hidden(model, tokens, checkpoint=checkpoint)[:, start:]
                    d = distill_loss(h, target)
                    reg = gates.abs().mean()
                    (d + reg_weight * reg).backward()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                log.distill.append(float(d.detach()))
                log.reg.append(float(reg.detach()))
                log.lengths.append(int(tokens.shape[1]))
                del ref_z, target, h
                if progress is not None:
                    progress(i + 1, len(samples))
        except KeyboardInterrupt:
            complete = False
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
    with torch.no_grad():
        gates.clamp_(0.0, 1.0)
    return gates.detach().cpu(), log, complete


def split_mse(model, samples: Sequence[tuple[Sequence[int], int]], full_kv: set[tuple[int, int]], n_sink: int,
              window: int) -> float:
    """Deployment check of a binary split: KV heads in ``full_kv`` attend fully, every other one
    to sinks + window only (gates 1 / 0); the mean distillation MSE of the final hidden states
    on the supervised tails against the unmodified model."""
    gates = torch.zeros(model.cfg.n_layers, n_kv_heads(model), device=model.cfg.device)
    for l, k in full_kv:
        gates[l, k] = 1.0
    out = []
    with torch.no_grad():
        for ids, start in samples:
            tokens = torch.as_tensor(list(ids), dtype=torch.long, device=model.cfg.device)[None]
            with applied(model):
                target = final_hidden(model, tokens)[:, start:]
            with applied(model, extra_hooks=gate_hooks(model, gates, n_sink, window, "shared")):
                out.append(float(distill_loss(final_hidden(model, tokens)[:, start:], target)))
    return float(np.mean(out))


# ---------------------------------------------------------------------------------------
# overlap with the retrieval score


def retrieval_kv_heads(heads: Sequence[tuple[int, int]], group: int) -> set[tuple[int, int]]:
    """KV heads (layer, kv_head) of the query heads ``heads`` (query head h → KV head h // group)."""
    return {(int(l), int(h) // group) for l, h in heads}


def gate_overlap(gates: np.ndarray, kv_set: set[tuple[int, int]], threshold: float = THRESHOLD) -> dict:
    """Set agreement at the KV-head level between the gate split (α ≥ threshold) and ``kv_set``."""
    duo = {(int(l), int(k)) for l, k in zip(*np.nonzero(np.asarray(gates) >= threshold))}
    inter = len(duo & kv_set)
    union = len(duo | kv_set)
    return {"n_duo": len(duo), "n_retrieval": len(kv_set), "both": inter,
            "jaccard": inter / union if union else float("nan"),
            "precision": inter / len(duo) if duo else float("nan"),
            "recall": inter / len(kv_set) if kv_set else float("nan")}


def grouped_max(head_scores: np.ndarray, group: int) -> np.ndarray:
    """[L, n_kv] max over each KV head's query heads of a [L, H] score map."""
    s = np.asarray(head_scores, dtype=np.float64)
    L, H = s.shape
    if H % group:
        raise InputError(f"{H} query heads do not split into groups of {group}.")
    return s.reshape(L, H // group, group).max(-1)


def gate_score_spearman(gates: np.ndarray, head_scores: np.ndarray, group: int) -> float:
    """Spearman rank correlation of the gates with the KV-grouped max retrieval score."""
    from mechscope.probes.stats import spearman

    kv = grouped_max(head_scores, group)
    if kv.shape != np.asarray(gates).shape:
        raise InputError(f"Retrieval scores group to {kv.shape}; the gates are {np.asarray(gates).shape}.")
    return spearman(np.asarray(gates), kv)


# ---------------------------------------------------------------------------------------
# the registered analysis


@dataclass(frozen=True)
class DuoParams(Params):
    """Parameters of :func:`duo_gates`. Defaults: small enough to train on a CPU in minutes."""

    kind: ClassVar[str] = "duo_gates"
    steps: int = field(default=40, metadata={"help": "training steps (one passkey sample each; reference 2000)"})
    min_length: int = field(default=500, metadata={"help": "shortest sample (tokens)"})
    max_length: int = field(default=1000, metadata={"help": "longest sample (tokens)"})
    n_lengths: int = field(default=20, metadata={"help": "points of the context-length grid (reference 20-50)"})
    n_passkeys: int = field(default=2, metadata={"help": "passkeys per sample (reference 10)"})
    passkey_words: int = field(default=8, metadata={"help": "words per passkey (reference 32)"})
    n_sink: int = field(default=16, metadata={"help": "sink tokens of the streaming branch (reference 128)"})
    window: int = field(default=64, metadata={"help": "recent window of the streaming branch, incl. the query (reference 256)"})
    lr: float = field(default=0.1, metadata={"help": "AdamW learning rate (reference: 0.1 default, 0.02 for 2,000 steps)"})
    reg_weight: float = field(default=0.05, metadata={"help": "λ of the mean|α| penalty (reference 0.05)"})
    threshold: float = field(default=THRESHOLD, metadata={"help": "gate at or above which a KV head is a retrieval head"})
    full_branch: Literal["reference", "shared"] = field(default="reference", metadata={"help": "reference: full branch from the unmodified model "
                                                                     "(the reference's training); shared: same q/k/v"})
    checkpoint: bool = field(default=True, metadata={"help": "recompute blocks in backward (one layer's T×T at a time)"})
    seed: int = field(default=42, metadata={"help": "seed of the passkey samples (reference 42)"})
    long_text: str = field(default="paradise_lost", metadata={"help": "shipped long text for the haystack"})
    retrieval_heads: tuple = field(default=(), metadata={"help": "Wu et al. retrieval query heads ((layer, head), ...) "
                                                                 "for the overlap"})

    def __post_init__(self):
        object.__setattr__(self, "retrieval_heads", tuple((int(l), int(h)) for l, h in self.retrieval_heads))
        check_window(self.n_sink, self.window)
        if self.steps < 1:
            raise InputError("steps must be at least 1.")
        if not 1 <= self.min_length <= self.max_length:
            raise InputError(f"Context lengths need 1 <= min_length <= max_length (got {self.min_length}, {self.max_length}).")
        if self.n_lengths < 1:
            raise InputError("n_lengths must be at least 1.")
        if not self.lr > 0:
            raise InputError(f"lr must be positive, not {self.lr}.")
        if not self.reg_weight >= 0:
            raise InputError(f"reg_weight must be >= 0, not {self.reg_weight}.")
        if not 0.0 < self.threshold <= 1.0:
            raise InputError(f"threshold must be in (0, 1], not {self.threshold}.")
        if self.full_branch not in FULL_BRANCHES:
            raise InputError(f"full_branch must be one of {', '.join(FULL_BRANCHES)}, not {self.full_branch!r}.")


@dataclass(frozen=True)
class DuoResult(Result):
    """``gates[l, k]``: the trained gate of KV head k of layer l."""

    gates: np.ndarray  # [L, n_kv] float32 in [0, 1]
    log: pd.DataFrame  # step, length, distill, reg
    group: int  # query heads per KV head
    complete: bool = True

    kind = "duo_gates"

    def retrieval_mask(self) -> np.ndarray:
        return self.gates >= self.params.threshold

    def retrieval_kv_heads(self) -> list[tuple[int, int]]:
        """KV heads with α ≥ threshold, highest gate first."""
        L, K = self.gates.shape
        rows = sorted(((float(self.gates[l, k]), l, k) for l in range(L) for k in range(K) if self.gates[l, k] >= self.params.threshold),
                      key=lambda r: (-r[0], r[1], r[2]))
        return [(l, k) for _, l, k in rows]

    def score_kv_set(self) -> set[tuple[int, int]]:
        return retrieval_kv_heads(self.params.retrieval_heads, self.group)

    def overlap(self) -> dict:
        return gate_overlap(self.gates, self.score_kv_set(), self.params.threshold)

    def summary(self) -> dict:
        n = self.gates.size
        out = {"kv_heads": n, "retrieval": int(self.retrieval_mask().sum()), "steps": len(self.log),
               "complete": self.complete, "mean_gate": float(self.gates.mean()),
               "final_distill": float(self.log["distill"].iloc[-1]) if len(self.log) else float("nan")}
        if self.params.retrieval_heads:
            out.update({f"overlap_{k}": v for k, v in self.overlap().items()})
        return out

    def to_frame(self) -> pd.DataFrame:
        L, K = self.gates.shape
        kv_set = self.score_kv_set()
        return pd.DataFrame([{"layer": l, "kv_head": k, "query_heads": " ".join(f"H{k * self.group + j}" for j in range(self.group)),
                              "gate": float(self.gates[l, k]), "duo_retrieval": bool(self.gates[l, k] >= self.params.threshold),
                              "score_retrieval": (l, k) in kv_set} for l in range(L) for k in range(K)])

    def figures(self) -> dict:
        return {"gate_map": gate_figure(self.gates, self.group, self.params.threshold, self.score_kv_set(),
                                        bool(self.params.retrieval_heads)),
                "training": training_figure(self.log)}


def gate_figure(gates: np.ndarray, group: int, threshold: float, kv_set: set, have_scores: bool):
    """Layer × KV-head heatmap of the gates; hover: gate, split, Wu et al. retrieval head or not."""
    import plotly.graph_objects as go

    L, K = gates.shape
    label = np.empty((L, K), dtype=object)
    for l in range(L):
        for k in range(K):
            duo = "retrieval" if gates[l, k] >= threshold else "streaming"
            wu = ("yes" if (l, k) in kv_set else "no") if have_scores else "not given"
            label[l, k] = [f"H{k * group}–H{k * group + group - 1}", duo, wu]
    fig = go.Figure(go.Heatmap(
        z=gates, x=[f"K{k}" for k in range(K)], y=list(range(L)), zmin=0, zmax=1, colorscale="Viridis",
        customdata=label, colorbar={"title": "gate α"},
        hovertemplate="layer %{y}, KV head %{x} (query %{customdata[0]})<br>gate α %{z:.3f} → %{customdata[1]} head"
                      "<br>Wu et al. retrieval head (score): %{customdata[2]}<extra></extra>"))
    if have_scores and kv_set:
        ls, ks = zip(*sorted(kv_set))
        fig.add_trace(go.Scatter(x=[f"K{k}" for k in ks], y=list(ls), mode="markers", name="retrieval score > threshold",
                                 marker={"symbol": "circle-open", "size": 12, "color": "crimson", "line": {"width": 2}},
                                 hoverinfo="skip"))
    n = int((gates >= threshold).sum())
    fig.update_layout(title=f"DuoAttention gates: {n} of {gates.size} KV heads ≥ {threshold:g} (retrieval)",
                      xaxis_title="KV head", yaxis_title="layer")
    return fig


def training_figure(log: pd.DataFrame):
    import plotly.graph_objects as go

    fig = go.Figure()
    if len(log):
        fig.add_trace(go.Scatter(x=log["step"], y=log["distill"], name="distillation MSE", mode="lines+markers"))
        fig.add_trace(go.Scatter(x=log["step"], y=log["reg"], name="mean |α|", mode="lines", yaxis="y2"))
    fig.update_layout(title="Gate training", xaxis_title="step", yaxis_title="MSE of final hidden states",
                      yaxis2={"title": "mean |α|", "overlaying": "y", "side": "right", "range": [0, 1.02]})
    return fig


@analysis(DuoParams)
def duo_gates(model, params: DuoParams, progress: Callable[[int, int], None] | None = None,
              stop: Callable[[], bool] | None = None) -> DuoResult:
    """Train DuoAttention gates on synthetic passkey retrieval (see the module docstring).
    Interrupting (KeyboardInterrupt) returns the gates reached so far with ``complete=False``."""
    if model.tokenizer is None:
        raise InputError("DuoAttention's passkey samples need a model with a tokenizer.")
    limit_k = model.cfg.n_heads
    for l, h in params.retrieval_heads:
        if not (0 <= l < model.cfg.n_layers and 0 <= h < limit_k):
            raise InputError(f"Retrieval head {l}:{h} is outside the model ({model.cfg.n_layers} layers × {limit_k} heads).")
    samples: list[PasskeySample] = passkey_samples(model, params.steps, (params.min_length, params.max_length),
                                                   params.n_passkeys, params.passkey_words, params.seed,
                                                   params.n_lengths, params.long_text)
    gates, log, complete = train_gates(model, [(s.ids, s.answer_start) for s in samples], params.n_sink, params.window,
                                       params.lr, params.reg_weight, params.full_branch, checkpoint=params.checkpoint,
                                       progress=progress, stop=stop)
    frame = pd.DataFrame({"step": np.arange(1, len(log.distill) + 1), "length": log.lengths,
                          "distill": log.distill, "reg": log.reg})
    return DuoResult(model_id=model_id(model), params=params, gates=gates.numpy().astype(np.float32), log=frame,
                     group=kv_group(model), complete=complete)
