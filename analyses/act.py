"""ACT head search and held-out evaluation (Yu et al. 2024; docs/sinks.md#hidden-sinks).

Two head searches on the shipped task's ``calib`` split:

* ``search="reference"`` (default) — the protocol of the reference code (GATECH-EIC/ACT):
  every head of layers 2…L−2 is calibrated *alone* and kept when it raises the calibration
  accuracy (argmax over each item's choices) above the uncalibrated model's. Heads with no
  hidden sink on any calibration text are skipped: ACT is the identity on them, so their
  accuracy equals the base accuracy and the reference would not keep them either.
* ``search="greedy"`` — greedy forward selection on mean log p(correct answer | prompt):
  candidates are visited in layer order and a head is kept only if adding it to the heads
  kept so far raises the objective.

To stay affordable on a CPU (both searches):

* only heads that actually have hidden sinks on the calibration prompts are candidates
  (ACT is the identity on a head without them), optionally restricted to ``layers`` and
  capped at ``max_candidates`` (most hidden sinks first);
* the residual stream entering layer L is computed once per layer under the heads kept
  so far (heads of later layers cannot change it), and each candidate of layer L runs only
  layers L..end; the unembedding runs only at the answer positions.

The effect is then measured on the ``heldout`` split: per item, Δ log p(answer) and
Δ accuracy (argmax over the choices' summed log-probs), with paired bootstrap 95% CIs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal, Sequence

import numpy as np
import pandas as pd
import torch

from mechscope.probes import capture, hooknames
from mechscope.probes.attention_reductions import column_mean_reducers
from mechscope.probes.act import BETA, act_interventions, hidden_sink_mask
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import applied
from mechscope.probes.models import model_id
from mechscope.probes.readout import logits_from_resid
from mechscope.probes.results import Params, Result, analysis
from mechscope.probes.stats import bootstrap_ci
from mechscope.probes.tokens import text_ids


@dataclass(frozen=True)
class ACTResult(Result):
    heads: tuple  # selected ((layer, head), ...)
    search: pd.DataFrame  # one row per candidate tried
    heldout: pd.DataFrame  # one row per held-out item
    summary: dict

    kind = "act"

    def to_frame(self) -> pd.DataFrame:
        return self.heldout

    def figures(self) -> dict:
        import plotly.express as px

        figs = {}
        if not self.search.empty:
            s = self.search.copy()
            s["head_label"] = [hooknames.head_label(l, h) for l, h in zip(s["layer"], s["head"])]
            what = ("calibration accuracy, each head alone" if self.params.search == "reference" and self.params.heads is None
                    else "mean log p(answer) on the calibration split")
            figs["act_search"] = px.bar(s, x="head_label", y="gain", color="kept", title=f"ACT search: gain in {what}")
        d = self.heldout
        figs["act_heldout"] = px.histogram(d, x="delta_logprob", nbins=30,
                                           title=f"Held-out Δ log p(answer): mean {self.summary['delta_logprob']:+.3f} "
                                                 f"[{self.summary['delta_logprob_ci'][0]:+.3f}, {self.summary['delta_logprob_ci'][1]:+.3f}]")
        return figs


# ---------------------------------------------------------------------------------------


@dataclass
class _Encoded:
    tokens: torch.Tensor  # [B, T] right-padded
    lengths: tuple[int, ...]
    pred_pos: list[list[int]]  # per row: positions whose next-token prediction is scored
    targets: list[list[int]]


def _encode(model, pairs: Sequence[tuple[str, str]], batch_size: int) -> list[_Encoded]:
    tok = model.tokenizer

    def ids(x):
        if not isinstance(x, str):
            return [int(t) for t in x]
        if tok is None:
            raise InputError("ACT scoring of text needs a model with a tokenizer.")
        return text_ids(model, x) if x.strip() else []

    rows = []
    for prompt, cont in pairs:
        p, c = ids(prompt), ids(cont)
        if not p or not c:
            raise InputError("A task item has an empty prompt or answer.")
        rows.append((p + c, list(range(len(p) - 1, len(p) + len(c) - 1)), c))
    out = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        T = max(len(r[0]) for r in chunk)
        toks = torch.zeros(len(chunk), T, dtype=torch.long)
        for b, r in enumerate(chunk):
            toks[b, : len(r[0])] = torch.tensor(r[0])
        out.append(_Encoded(toks, tuple(len(r[0]) for r in chunk), [r[1] for r in chunk], [r[2] for r in chunk]))
    return out


def _logprob_sums(model, enc: _Encoded, resid: torch.Tensor) -> np.ndarray:
    """Sum of log p(target) per row from the final residual stream [B, T, d]."""
    out = []
    for b in range(resid.shape[0]):
        x = resid[b, enc.pred_pos[b]][None]
        lp = logits_from_resid(model, x)[0].float().log_softmax(-1)
        out.append(float(lp[torch.arange(len(enc.targets[b])), torch.tensor(enc.targets[b])].sum()))
    return np.array(out)


def score(model, encoded: list[_Encoded], heads: Sequence[tuple[int, int]] = (), beta: float = BETA,
          threshold: float = 0.1, start: tuple[int, list[torch.Tensor]] | None = None) -> np.ndarray:
    """Summed log p(continuation) per item, with ACT on ``heads``. ``start=(layer, resids)``
    resumes from cached residual streams entering ``layer``."""
    L = model.cfg.n_layers
    res = []
    with torch.no_grad():
        for i, enc in enumerate(encoded):
            ivs = act_interventions(list(heads), beta, threshold, lengths=enc.lengths)
            if start is not None:
                layer, resids = start
                ivs = [iv for iv in ivs if iv.layer >= layer]
            with applied(model, ivs):
                if start is None:
                    final = model(enc.tokens.to(model.cfg.device), stop_at_layer=L)
                else:
                    final = model(resids[i], start_at_layer=start[0], stop_at_layer=L)
                res.append(_logprob_sums(model, enc, final))
    return np.concatenate(res)


def _resid_at(model, encoded, layer, heads, beta, threshold) -> list[torch.Tensor]:
    out = []
    with torch.no_grad():
        for enc in encoded:
            ivs = [iv for iv in act_interventions(list(heads), beta, threshold, lengths=enc.lengths) if iv.layer < layer]
            with applied(model, ivs):
                out.append(model(enc.tokens.to(model.cfg.device), stop_at_layer=layer) if layer > 0
                           else model.embed(enc.tokens.to(model.cfg.device)))
    return out


def hidden_sink_rates(model, prompts: Sequence[str], threshold: float = 0.1, batch_size: int = 32) -> np.ndarray:
    """[L, H] fraction of prompts on which each head has at least one hidden sink."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    hits = np.zeros((L, H))

    def red(layer, mean, batch):
        hits[layer] += hidden_sink_mask(mean, threshold).any(-1).sum(0).cpu().numpy()

    capture.run(model, list(prompts), reducers=column_mean_reducers(model, red), batch_size=batch_size)
    return hits / max(len(prompts), 1)


def _load(split: str, task: str, max_items: int | None = None):
    from mechscope.probes import datasets

    items = datasets.load_task(task, split=split)
    if not items:
        raise InputError(f"The task {task!r} has no {split!r} items.")
    return items[:max_items]


def act_search(
    model,
    calib: Sequence[dict],
    *,
    layers: Sequence[int] | None = None,
    beta: float = BETA,
    threshold: float = 0.1,
    min_hidden_rate: float = 0.05,
    max_candidates: int | None = 30,
    batch_size: int = 50,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[tuple[int, int]], pd.DataFrame]:
    """Greedy forward selection of ACT heads on ``calib`` items (see module docstring)."""
    if not calib:
        raise InputError("The calibration set is empty.")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    layers = list(range(L)) if layers is None else sorted(set(int(l) for l in layers))
    for l in layers:
        if not 0 <= l < L:
            raise InputError(f"layer {l} is out of range: this model has {L} (valid 0..{L - 1}).")
    rates = hidden_sink_rates(model, [it["prompt"] + it["answer"] for it in calib], threshold)
    cands = [(l, h, rates[l, h]) for l in layers for h in range(H) if rates[l, h] >= min_hidden_rate]
    if max_candidates is not None:
        cands = sorted(cands, key=lambda c: -c[2])[:max_candidates]
    cands = sorted(cands)
    enc = _encode(model, [(it["prompt"], it["answer"]) for it in calib], batch_size)
    base = score(model, enc, (), beta, threshold)
    current, selected, rows = float(base.mean()), [], []
    resid_layer, resids = None, None
    for i, (l, h, rate) in enumerate(cands):
        if resid_layer != l:
            resids = _resid_at(model, enc, l, selected, beta, threshold)
            resid_layer = l
        trial = selected + [(l, h)]
        s = float(score(model, enc, trial, beta, threshold, start=(l, resids)).mean())
        kept = s > current
        rows.append({"layer": l, "head": h, "hidden_sink_rate": float(rate), "score_before": current,
                     "score_with": s, "gain": s - current, "kept": kept})
        if kept:
            selected, current = trial, s
        if progress is not None:
            progress(i + 1, len(cands))
    search = pd.DataFrame(rows, columns=["layer", "head", "hidden_sink_rate", "score_before", "score_with", "gain", "kept"])
    return selected, search


def _choice_pairs(items: Sequence[dict]):
    """(prompt, choice) pairs of every item, the item each pair belongs to, and whether the
    choice is the answer."""
    pairs, owner, is_answer = [], [], []
    for i, it in enumerate(items):
        choices = list(it.get("choices") or [it["answer"]])
        if it["answer"] not in choices:
            choices.append(it["answer"])
        for c in choices:
            pairs.append((it["prompt"], c))
            owner.append(i)
            is_answer.append(c == it["answer"])
    return pairs, np.array(owner), np.array(is_answer)


def choice_accuracy(scores: np.ndarray, owner: np.ndarray, is_answer: np.ndarray) -> float:
    """Fraction of items whose highest-scoring choice is the answer."""
    hits = [bool(is_answer[owner == i][int(np.argmax(scores[owner == i]))]) for i in np.unique(owner)]
    return float(np.mean(hits))


def act_search_reference(
    model,
    calib: Sequence[dict],
    *,
    layers: Sequence[int] | None = None,
    beta: float = BETA,
    threshold: float = 0.1,
    batch_size: int = 60,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[tuple[int, int]], pd.DataFrame]:
    """The reference's per-head search (module docstring): each head of ``layers``
    (default 2…L−2) calibrated alone; kept when calibration accuracy rises."""
    if not calib:
        raise InputError("The calibration set is empty.")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    layers = list(range(2, L - 1)) if layers is None else sorted(set(int(l) for l in layers))
    for l in layers:
        if not 0 <= l < L:
            raise InputError(f"layer {l} is out of range: this model has {L} (valid 0..{L - 1}).")
    pairs, owner, is_answer = _choice_pairs(calib)
    rates = hidden_sink_rates(model, [p + c for p, c in pairs], threshold)
    cands = [(l, h) for l in layers for h in range(H) if rates[l, h] > 0]
    enc = _encode(model, pairs, batch_size)
    base = score(model, enc, (), beta, threshold)
    base_acc = choice_accuracy(base, owner, is_answer)
    answer_rows = is_answer.astype(bool)
    rows, selected, resid_layer, resids = [], [], None, None
    for i, (l, h) in enumerate(cands):
        if resid_layer != l:
            resids = _resid_at(model, enc, l, [], beta, threshold)
            resid_layer = l
        s = score(model, enc, [(l, h)], beta, threshold, start=(l, resids))
        acc = choice_accuracy(s, owner, is_answer)
        kept = acc > base_acc
        rows.append({"layer": l, "head": h, "hidden_sink_rate": float(rates[l, h]), "accuracy_base": base_acc,
                     "accuracy_with": acc, "gain": acc - base_acc,
                     "logprob_gain": float((s - base)[answer_rows].mean()), "kept": kept})
        if kept:
            selected.append((l, h))
        if progress is not None:
            progress(i + 1, len(cands))
    cols = ["layer", "head", "hidden_sink_rate", "accuracy_base", "accuracy_with", "gain", "logprob_gain", "kept"]
    return selected, pd.DataFrame(rows, columns=cols)


def act_evaluate(model, items: Sequence[dict], heads: Sequence[tuple[int, int]], *, beta: float = BETA,
                 threshold: float = 0.1, batch_size: int = 60, n_boot: int = 2000, seed: int = 0):
    """Per-item base vs ACT log p(answer) and choice accuracy, with paired bootstrap CIs."""
    if not items:
        raise InputError("The evaluation set is empty.")
    pairs, owner, is_answer = _choice_pairs(items)
    enc = _encode(model, pairs, batch_size)
    base = score(model, enc, (), beta, threshold)
    act = score(model, enc, list(heads), beta, threshold) if heads else base.copy()
    rows = []
    for i, it in enumerate(items):
        sel = owner == i
        b, a, ans = base[sel], act[sel], is_answer[sel]
        rows.append({"prompt": it["prompt"], "answer": it["answer"], "category": it.get("category", ""),
                     "base_logprob": float(b[ans][0]), "act_logprob": float(a[ans][0]),
                     "base_correct": bool(ans[int(np.argmax(b))]), "act_correct": bool(ans[int(np.argmax(a))])})
    df = pd.DataFrame(rows)
    df["delta_logprob"] = df["act_logprob"] - df["base_logprob"]
    dacc = df["act_correct"].astype(float) - df["base_correct"].astype(float)
    summary = {
        "n_items": len(df),
        "delta_logprob": float(df["delta_logprob"].mean()),
        "delta_logprob_ci": bootstrap_ci(df["delta_logprob"].values, n_boot, seed=seed)[1:],
        "accuracy_base": float(df["base_correct"].mean()),
        "accuracy_act": float(df["act_correct"].mean()),
        "delta_accuracy": float(dacc.mean()),
        "delta_accuracy_ci": bootstrap_ci(dacc.values, n_boot, seed=seed)[1:],
    }
    ci = summary["delta_logprob_ci"]
    summary["verdict"] = ("helps" if ci[0] > 0 else "hurts" if ci[1] < 0 else "no significant effect")
    return df, summary


@dataclass(frozen=True)
class ACTParams(Params):
    """Parameters of :func:`act_calibration` (Yu et al.'s β = 0.4 and 0.1 sink threshold)."""

    kind: ClassVar[str] = "act"
    heads: tuple | None = field(default=None, metadata={"help": "calibrate these (layer, head) pairs; None: search"})
    search: Literal["reference", "greedy"] = field(default="reference", metadata={
        "help": "reference: each head of layers 2..L-2 alone, kept when calibration accuracy rises; greedy: forward selection"})
    task: str = field(default="act_calibration", metadata={"help": "shipped task with calib/heldout splits"})
    layers: tuple[int, ...] | None = field(default=None, metadata={"help": "restrict the search to these layers"})
    beta: float = field(default=BETA, metadata={"help": "β, scale of hidden-sink columns"})
    threshold: float = field(default=0.1, metadata={"help": "sink threshold on mean received attention"})
    max_candidates: int | None = field(default=30, metadata={"help": "greedy search: candidate heads (most hidden sinks first)"})
    min_hidden_rate: float = field(default=0.05, metadata={"help": "greedy search: minimum hidden-sink rate of a candidate"})
    n_boot: int = field(default=2000, metadata={"help": "bootstrap resamples"})
    max_items: int | None = field(default=None, metadata={"help": "first N items of each split (None: all)"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})

    def __post_init__(self):
        if self.heads is not None:
            object.__setattr__(self, "heads", tuple((int(l), int(h)) for l, h in self.heads))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(l) for l in self.layers))
        if self.search not in ("reference", "greedy"):
            raise InputError(f"search must be 'reference' or 'greedy', not {self.search!r}.")
        if not 0 <= self.beta <= 1:
            raise InputError(f"beta must lie in [0, 1], not {self.beta!r}.")
        if not 0 < self.threshold < 1:
            raise InputError(f"The sink threshold must lie in (0, 1), not {self.threshold!r}.")
        if self.max_items is not None and self.max_items < 2:
            raise InputError("max_items must be at least 2 (or None for all items).")


@analysis(ACTParams)
def act_calibration(model, params: ACTParams, progress: Callable[[int, int], None] | None = None) -> ACTResult:
    """Pick ACT heads (``heads`` given, or searched on the ``calib`` split) and measure the
    effect on the ``heldout`` split. Says plainly when it does not help (``summary["verdict"]``)."""
    p = params
    heads, beta, threshold, task = p.heads, p.beta, p.threshold, p.task
    search = pd.DataFrame(columns=["layer", "head", "hidden_sink_rate", "gain", "kept"])
    if heads is None and p.search == "reference":
        heads, search = act_search_reference(model, _load("calib", task, p.max_items), layers=p.layers, beta=beta,
                                             threshold=threshold, progress=progress)
    elif heads is None:
        heads, search = act_search(model, _load("calib", task, p.max_items), layers=p.layers, beta=beta, threshold=threshold,
                                   max_candidates=p.max_candidates, min_hidden_rate=p.min_hidden_rate, progress=progress)
    else:
        heads = list(heads)
        for iv in act_interventions(heads, beta, threshold):
            iv.validate(model)
    heldout, summary = act_evaluate(model, _load("heldout", task, p.max_items), heads, beta=beta, threshold=threshold,
                                    n_boot=p.n_boot, seed=p.seed)
    return ACTResult(model_id=model_id(model), params=params, heads=tuple(tuple(x) for x in heads),
                     search=search, heldout=heldout, summary=summary)
