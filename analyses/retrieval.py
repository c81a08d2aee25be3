"""Retrieval heads (Wu et al. 2024; docs/retrieval.md#retrieval-score): detection, a cheap proxy, causal masking.

**Retrieval score.** For each NIAH test (``analyses.niah``) the model answers greedily. At
every decoding step that emits token w, each head (layer, *query* head) takes its top-1
attended position j (over every key the step sees: the prompt, the answer so far and
itself); when j lies in the span of the needle's *answer part* (the reference's
``real_needle``: "blue pelican seventeen", not the lead-in "The password for … is" that
restates the question) and the prompt token at j equals w, the head earns 1/|answer-part
tokens|. A test counts only when the response recalls the answer part (ROUGE-1 recall with
the Porter stemmer > 0.5); a head's score is the mean over counted tests, and a head
scoring > 0.1 is a retrieval head. As in ``retrieval_head_detection.py``: the span, the
divisor and the recall all use the answer part.

**How it is computed here.** The reference (nightdessert/Retrieval_Head) asks the model for
every layer's attention at every step (``output_attentions=True``) and loops over layers
and heads in Python. Here :class:`Top1` is a reducer on each layer's ``hook_pattern``
inside :func:`probes.decoding.generate`: the prompt pass and each cached decoding step
hand it the pattern of their *last* query only, it keeps the argmax (one int per head) and
drops the pattern, so the state is O(steps × layers × heads) and no T×T pattern outlives
its layer. This is the same step-by-step greedy procedure, just without materialising the
attentions; :func:`reference_scores` is the materialising loop (no cache, full patterns of
every layer captured at every step, the reference's per-head ``topk(1)`` loop: the
benchmark's baseline). The tests compare the scan with an independent implementation of
the reference's loop on the real model's attention (Hugging Face ``output_attentions``,
the span found by the reference's token-overlap search). Ties in the top-1 go to the
first position (``torch.argmax``).

**Batched.** :func:`scan` (used by :func:`retrieval_heads` and :func:`retrieval_masking`)
runs the same procedure on ``batch_size`` tests at once: sorted by prompt length, each
prefilled alone (``prefill_rows=1``: the per-test prefill), then decoded as rows of one
left-padded batch (:mod:`probes.batched_greedy`; pad keys masked, positions unpadded,
finished rows leave the batch), with the top-1 kept on the device in unpadded positions and
one host sync per step. Batched matmuls may round differently from one-row ones, so a
greedy token or a top-1 could flip on a near-exact tie; the tests compare answers and
scores with the per-test loop on the real model (equal there).

**Proxy.** :func:`induction_scores`: on random tokens repeated twice, each head's mean
attention from a token in the second copy to the token after its first occurrence (the
induction / copying pattern); the Result reports its Spearman correlation with the
retrieval score.

**Causal check.** :func:`retrieval_masking`: NIAH accuracy with the top-k retrieval heads
masked (``HeadMask(mode="uniform")``: pre-softmax scores zeroed, uniform attention over the
visible keys — the reference's masking) against k random heads from outside the top 100,
several seeds. As in the reference (``needle_in_haystack_with_mask.py``) the heads are
masked while decoding only: the prompt but its last token is prefilled unmasked, and the
last prompt token (which yields the first answer token) and the answer are fed masked
(``mask_scope="decode"``; ``"prompt_and_decode"`` masks the prompt too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator, Literal, Sequence

import numpy as np
import pandas as pd
import torch

from mechscope.analyses.niah import (
    NIAH_FORMATS,
    GridParams,
    NiahAnswer,
    NiahTest,
    Needle,
    answer,
    grid_figure,
    grid_tests,
    newline_ids,
    resolve_format,
    response_text,
    tests_frame,
)
from mechscope.probes.batched_greedy import greedy_rows, length_batches
from mechscope.probes.capture import run as capture_run
from mechscope.probes.errors import InputError
from mechscope.probes.hooknames import name as hook_name
from mechscope.probes.interventions import HeadMask, check_scope, hooks_for
from mechscope.probes.models import model_id
from mechscope.probes.results import Result, analysis

THRESHOLD = 0.1


# ---------------------------------------------------------------------------------------
# scoring


class Top1:
    """Reducer for ``blocks.*.attn.hook_pattern`` under :func:`probes.decoding.generate`:
    keeps, for each forward pass, the top-1 key of the last query per layer and head."""

    def __init__(self, n_layers: int, n_heads: int):
        self.n_layers, self.n_heads = n_layers, n_heads
        self.steps: list[torch.Tensor] = []  # one [L, H] long tensor per forward pass

    def __call__(self, pattern: torch.Tensor, site, batch) -> None:
        if site.layer == 0:
            self.steps.append(torch.full((self.n_layers, self.n_heads), -1, dtype=torch.long))
        self.steps[-1][site.layer] = pattern[0, :, -1].argmax(-1).cpu()

    def reducers(self, model) -> dict:
        return {hook_name("pattern", layer): self for layer in range(model.cfg.n_layers)}

    def stacked(self, n_steps: int) -> torch.Tensor:
        if len(self.steps) < n_steps:
            raise RuntimeError(f"{len(self.steps)} forward passes for {n_steps} emitted tokens")
        return torch.stack(self.steps[:n_steps]) if n_steps else torch.zeros(0, self.n_layers, self.n_heads, dtype=torch.long)


def copy_scores(top1: torch.Tensor, emitted: Sequence[int], prompt_ids: Sequence[int], start: int, end: int) -> np.ndarray:
    """Per-test retrieval score [L, H]: Σ over steps of 1/(end−start) where the step's top-1
    position j (``top1[step, layer, head]``) is in the answer span [start, end) and
    ``prompt_ids[j]`` equals the token emitted at that step."""
    if end <= start:
        raise InputError("The answer span is empty.")
    top1 = torch.as_tensor(top1, dtype=torch.long)
    if top1.shape[0] != len(emitted):
        raise InputError(f"{top1.shape[0]} top-1 rows for {len(emitted)} emitted tokens.")
    prompt = torch.as_tensor(list(prompt_ids), dtype=torch.long)
    inside = (top1 >= start) & (top1 < end)
    at = prompt[top1.clamp(0, len(prompt) - 1)]
    w = torch.as_tensor(list(emitted), dtype=torch.long).reshape(-1, 1, 1)
    hits = (inside & (at == w)).sum(0).double()
    return (hits / (end - start)).numpy()


def score_test(model, test: NiahTest, needle: Needle, max_new_tokens: int = 50, interventions=()) -> tuple[NiahAnswer, np.ndarray]:
    """Answer one test greedily with the top-1 reducer attached; its [L, H] retrieval score
    (copies from the answer part's span)."""
    span = test.answer_span
    top = Top1(model.cfg.n_layers, model.cfg.n_heads)
    ans = answer(model, test, needle, max_new_tokens, interventions, reducers=top.reducers(model))
    tops = top.stacked(len(ans.new_tokens))
    return ans, copy_scores(tops, ans.new_tokens, test.prompt_ids, *span)


def scan(model, built: Sequence[tuple[NiahTest, Needle]], max_new_tokens: int = 50, batch_size: int = 8,
         prefill_rows: int = 1, interventions=(), scores: bool = True, row_hooks: Sequence | None = None,
         progress: Callable[[int, int], None] | None = None,
         intervention_scope: str = "prompt_and_decode") -> Iterator[tuple[int, NiahAnswer, np.ndarray | None]]:
    """Batched :func:`score_test` (or :func:`analyses.niah.answer` with ``scores=False``):
    tests sorted by prompt length, ``batch_size`` at a time, decoded greedily as rows of one
    batch (:func:`probes.batched_greedy.greedy_rows`: left padding, finished rows leave the
    batch, top-1 reduced in the hooks). Yields (index into ``built``, answer, [L, H] score)
    batch by batch. ``row_hooks[i]``: hooks for test i only (e.g. its head masks);
    ``intervention_scope``: where they and ``interventions`` act (``"decode"``: not on the
    prompt's prefill, as the masking references do; see :mod:`probes.batched_greedy`). Same
    procedure as the per-test loop; tests check equal answers and scores on the real model."""
    spans = [t.answer_span for t, _ in built] if scores else None  # checked before any decoding
    lengths = [t.prompt_len for t, _ in built]
    batches = length_batches(lengths, batch_size)
    done = 0
    for rows in batches:
        outs = greedy_rows(model, [built[i][0].prompt_ids for i in rows], max_new_tokens, stop_tokens=newline_ids(model),
                           interventions=interventions, top1=scores, prefill_rows=prefill_rows,
                           row_hooks=[row_hooks[i] for i in rows] if row_hooks is not None else None,
                           intervention_scope=intervention_scope)
        for i, o in zip(rows, outs):
            t, nd = built[i]
            response = response_text(model, o.new_tokens)
            ans = NiahAnswer.of(nd, response, o.new_tokens)
            sc = copy_scores(o.top1, o.new_tokens, t.prompt_ids, *spans[i]) if scores else None
            yield i, ans, sc
        done += len(rows)
        if progress is not None:
            progress(done, len(built))


def reference_scores(model, test: NiahTest, needle: Needle, max_new_tokens: int = 50) -> tuple[NiahAnswer, np.ndarray]:
    """The materialising step-by-step loop (the reference's procedure, and the benchmark's
    baseline): no KV cache; at every step the whole text is run and every layer's full
    attention pattern is captured; then, per layer and head, the top-1 of the last row and
    the answer-span/copy check, in Python loops, as ``retrieval_calculate`` does. (Hits are
    counted and divided by |answer span| once — the reference adds 1/|span| per hit, which
    differs only in float rounding; ties go to the first position, as in :class:`Top1`.)"""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    names = [hook_name("pattern", layer) for layer in range(L)]
    prompt = list(test.prompt_ids)
    ids = list(prompt)
    out: list[int] = []
    hits = np.zeros((L, H), dtype=np.int64)
    start, end = test.answer_span
    span = end - start
    eos = getattr(model.tokenizer, "eos_token_id", None) if model.tokenizer is not None else None
    stops = newline_ids(model)
    for _ in range(max_new_tokens):
        cap = capture_run(model, [ids], capture=names, return_logits=True)
        tok = int(cap.logits[0][-1].argmax())
        out.append(tok)
        for layer in range(L):
            att = cap.activations[names[layer]][0]  # [H, T, T]
            for h in range(H):
                i = int(att[h, -1].argmax())  # the reference's topk(1); ties to the first position
                if start <= i < end and tok == prompt[i]:
                    hits[layer, h] += 1
        del cap
        if tok == eos or tok in stops:
            break
        ids.append(tok)
    response = response_text(model, out)
    return NiahAnswer.of(needle, response, out), hits / span


# ---------------------------------------------------------------------------------------
# the proxy


def induction_scores(model, n_seqs: int = 8, half: int = 50, seed: int = 0) -> np.ndarray:
    """[L, H] mean attention from each token of the second copy of a random sequence to the
    token right after its first occurrence (random ids from the upper half of the vocab)."""
    g = torch.Generator().manual_seed(seed)
    lo = model.cfg.d_vocab // 2
    base = torch.randint(lo, model.cfg.d_vocab, (n_seqs, half), generator=g)
    seqs = torch.cat([base, base], 1)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    acc = torch.zeros(L, H, dtype=torch.float64)
    q = torch.arange(half, 2 * half)
    k = q - half + 1

    def red(pattern, site, batch):
        acc[site.layer] += pattern[:, :, q, k].double().sum((0, 2)).cpu()

    capture_run(model, seqs, reducers={hook_name("pattern", l): red for l in range(L)}, batch_size=n_seqs)
    return (acc / (n_seqs * half)).numpy()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = pd.Series(np.ravel(a)).rank().to_numpy()
    rb = pd.Series(np.ravel(b)).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else float("nan")


# ---------------------------------------------------------------------------------------
# detection


def _check_batching(params) -> None:
    for label in ("batch_size", "prefill_rows"):
        v = getattr(params, label)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"{label} must be an integer >= 1, not {v!r}.")


@dataclass(frozen=True)
class RetrievalParams(GridParams):
    """Parameters of :func:`retrieval_heads`: the NIAH grid, the threshold, the proxy."""

    kind: ClassVar[str] = "retrieval_heads"
    threshold: float = field(default=THRESHOLD, metadata={"help": "retrieval score a retrieval head exceeds"})
    proxy_seqs: int = field(default=8, metadata={"help": "random repeated sequences for the induction proxy (0: skip)"})
    batch_size: int = field(default=8, metadata={"help": "NIAH tests decoded together as rows of one batch (1: one by one)"})
    prefill_rows: int = field(default=1, metadata={"help": "equal-length prompts prefilled together (memory ~ rows × T²)"})

    def __post_init__(self):
        super().__post_init__()
        _check_batching(self)


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
                text=[f"L{l}H{h}" for l in range(L) for h in range(H)],
                hovertemplate="%{text}<br>induction %{x:.3f}<br>retrieval %{y:.3f}<extra></extra>"))
            figs["proxy"].update_layout(title=f"Induction proxy vs retrieval score (Spearman "
                                              f"{s.get('spearman_induction', float('nan')):.2f})",
                                        xaxis_title="induction score", yaxis_title="retrieval score")
        return figs


def head_agreement(a: np.ndarray, b: np.ndarray, k: int = 10, threshold: float = THRESHOLD) -> dict:
    """Agreement of two [L, H] score maps."""
    def topk(x):
        order = np.argsort(-x.ravel(), kind="stable")[:k]
        return set(order.tolist())

    above_a = set(np.flatnonzero(a.ravel() > threshold).tolist())
    above_b = set(np.flatnonzero(b.ravel() > threshold).tolist())
    return {f"jaccard_top{k}": jaccard(topk(a), topk(b)), "jaccard_above": jaccard(above_a, above_b),
            "n_above_a": len(above_a), "n_above_b": len(above_b), "spearman": spearman(a, b)}


@analysis(RetrievalParams)
def retrieval_heads(model, params: RetrievalParams, progress: Callable[[int, int], None] | None = None) -> RetrievalResult:
    """Retrieval score of every head over the NIAH grid (Wu et al. 2024). Interrupting
    (KeyboardInterrupt) returns the finished tests with ``complete=False``."""
    built = grid_tests(model, params)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    finished: dict[int, tuple[NiahAnswer, np.ndarray]] = {}
    complete = True
    try:
        for i, ans, sc in scan(model, built, params.max_new_tokens, params.batch_size, params.prefill_rows,
                               progress=progress):
            finished[i] = (ans, sc)
    except KeyboardInterrupt:
        complete = False
    keep = sorted(finished)  # grid order; an interrupted scan keeps its finished batches
    tests = [built[i][0] for i in keep]
    answers = [finished[i][0] for i in keep]
    scores = [finished[i][1] for i in keep]
    frame = tests_frame(tests, answers, params.recall_threshold)
    per = np.stack(scores) if scores else np.zeros((0, L, H))
    counted = frame["correct"].to_numpy(bool) if len(frame) else np.zeros(0, bool)
    head = per[counted].mean(0) if counted.any() else np.zeros((L, H))
    induction = induction_scores(model, params.proxy_seqs) if params.proxy_seqs > 0 and complete else np.zeros((0, 0))
    return RetrievalResult(model_id=model_id(model), params=params, tests=frame, test_scores=per.astype(np.float32),
                           head_scores=head, induction=induction,
                           prompt_format=resolve_format(model, params.prompt_format, NIAH_FORMATS),
                           complete=complete)


# ---------------------------------------------------------------------------------------
# causal masking


#: random control heads are drawn outside this many top-ranked heads (the reference's
#: ``block_list``: the top 100 of the head-score ranking, needle_in_haystack_with_mask.py)
RANDOM_OUTSIDE_TOP = 100
#: the pool rule of results saved before the pool was recorded
_LEGACY_POOL = "outside the top max(k) ranked heads and the heads above the threshold"


@dataclass(frozen=True)
class MaskingParams(GridParams):
    """Parameters of :func:`retrieval_masking`. ``heads``: retrieval heads, best first, at
    least max(ks) of them (empty: detect them on the same grid first); pass the whole
    ranking so the random heads can be drawn outside its top ``random_outside_top``."""

    kind: ClassVar[str] = "retrieval_masking"
    ks: tuple[int, ...] = field(default=(0, 2, 5, 10, 20, 40), metadata={"help": "numbers of heads to mask"})
    seeds: int = field(default=5, metadata={"help": "random-head draws per k"})
    heads: tuple = field(default=(), metadata={"help": "ranked retrieval heads ((layer, head), ...); empty: detect"})
    threshold: float = field(default=THRESHOLD, metadata={"help": "retrieval-head threshold (detection)"})
    mode: Literal["uniform", "zero"] = field(default="uniform", metadata={"help": "head masking (uniform: the reference)"})
    mask_scope: Literal["decode", "prompt_and_decode"] = field(
        default="decode", metadata={"help": "where heads are masked: decode = the last prompt token and the answer, "
                                            "prompt prefilled unmasked (the reference); prompt_and_decode = every position"})
    random_outside_top: int = field(
        default=RANDOM_OUTSIDE_TOP, metadata={"help": "random heads come from outside the top N ranked heads (the "
                                                      "reference: 100; outside the top max(k) where too few remain)"})
    batch_size: int = field(default=8, metadata={"help": "NIAH tests decoded together as rows of one batch (1: one by one)"})
    prefill_rows: int = field(default=1, metadata={"help": "equal-length prompts prefilled together (memory ~ rows × T²)"})

    def __post_init__(self):
        super().__post_init__()
        _check_batching(self)
        object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))
        object.__setattr__(self, "heads", tuple((int(l), int(h)) for l, h in self.heads))
        if any(k < 0 for k in self.ks):
            raise InputError("k must be >= 0.")
        if self.seeds < 1:
            raise InputError("seeds must be at least 1.")
        check_scope(self.mask_scope)
        if not isinstance(self.random_outside_top, int) or isinstance(self.random_outside_top, bool) \
                or self.random_outside_top < 0:
            raise InputError(f"random_outside_top must be an integer >= 0, not {self.random_outside_top!r}.")


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


def random_pool(ranked: Sequence[tuple[int, int]], n_layers: int, n_heads: int, kmax: int, outside_top: int,
                n_above: int = 0, detected: bool = False) -> tuple[list[tuple[int, int]], str]:
    """The heads random controls are drawn from, and its description: every head outside
    the top max(``outside_top``, max k, ``n_above``) of ``ranked`` (Wu et al.'s code draws
    outside the top 100); where fewer than max k heads would remain, outside the top
    max(max k, ``n_above``). A ranking shorter than that (heads given) leaves out all of
    it. Order: the ranking's when ``detected`` (the whole ranking), else (layer, head)."""
    total = n_layers * n_heads
    n_excl = max(outside_top, kmax, n_above)
    note = ""
    if total - n_excl < kmax:
        n_excl = max(kmax, n_above)
        note = f"; too few heads to leave out the top {outside_top}"
    if n_excl > len(ranked):
        n_excl = len(ranked)
        note += f"; only {len(ranked)} ranked heads given"
    taken = set(ranked[:n_excl])
    order = list(ranked) if detected else [(l, h) for l in range(n_layers) for h in range(n_heads)]
    pool = [lh for lh in order if lh not in taken]
    return pool, f"outside the top {n_excl} ranked heads ({len(pool)} heads{note})"


@analysis(MaskingParams)
def retrieval_masking(model, params: MaskingParams, progress: Callable[[int, int], None] | None = None) -> MaskingResult:
    """NIAH accuracy vs k masked heads: the top-k retrieval heads against k random heads
    drawn outside the top ``random_outside_top`` (``seeds`` draws each; one draw is one head
    set for every test, where the reference draws anew per test). Heads are masked where
    ``mask_scope`` says — by default during decoding only, the prompt prefilled unmasked, as
    Wu et al.'s ``needle_in_haystack_with_mask.py`` does. Interrupting returns the finished
    rows."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    n_heads = L * H
    for k in params.ks:
        if k > n_heads:
            raise InputError(f"k = {k} is larger than the number of heads ({n_heads}).")
    built = grid_tests(model, params)
    kmax = max(params.ks)
    if params.heads:
        ranked = list(params.heads)
        for l, h in ranked:
            HeadMask(l, h).validate(model)
        n_above, detected = 0, False
    else:
        det = retrieval_heads(model, RetrievalParams(**{f: getattr(params, f) for f in GridParams.__dataclass_fields__},
                                                     threshold=params.threshold, proxy_seqs=0,
                                                     batch_size=params.batch_size, prefill_rows=params.prefill_rows))
        ranked = det.top(n_heads)
        n_above, detected = len(det.retrieval_heads()), True
    if kmax > len(ranked):
        raise InputError(f"k = {kmax} is larger than the {len(ranked)} ranked heads given.")
    pool, pool_text = random_pool(ranked, L, H, kmax, params.random_outside_top, n_above, detected)
    if kmax > len(pool):
        raise InputError(f"k = {kmax} is larger than the {len(pool)} non-retrieval heads to draw from.")
    configs: list[tuple[int, str, int, list]] = []
    for k in params.ks:
        if k == 0:
            configs.append((0, "retrieval", 0, []))
            configs.append((0, "random", 0, []))
            continue
        configs.append((k, "retrieval", 0, ranked[:k]))
        for s in range(params.seeds):
            rng = np.random.default_rng(s)
            pick = rng.choice(len(pool), size=k, replace=False)
            configs.append((k, "random", s, [pool[i] for i in sorted(pick)]))
    # every distinct head set × every test, as rows of shared batches (each row under its own masks)
    keys = list(dict.fromkeys(tuple(heads) for _, _, _, heads in configs))
    hook_lists = {key: hooks_for(model, [HeadMask(l, h, params.mode) for l, h in key]) for key in keys}
    rows_in = [(key, j) for key in keys for j in range(len(built))]
    recall: dict[tuple, dict[int, float]] = {key: {} for key in keys}
    complete = True
    try:
        for r, ans, _ in scan(model, [built[j] for _, j in rows_in], params.max_new_tokens, params.batch_size,
                              params.prefill_rows, scores=False, row_hooks=[hook_lists[key] for key, _ in rows_in],
                              progress=progress, intervention_scope=params.mask_scope):
            key, j = rows_in[r]
            recall[key][j] = ans.recall
    except KeyboardInterrupt:
        complete = False
    rows = []
    for k, which, seed, heads in configs:
        rec = recall[tuple(heads)]
        if len(rec) < len(built):  # interrupted before this configuration finished
            continue
        plain = np.array([rec[j] for j in range(len(built))])
        rows.append({"k": k, "which": which, "seed": seed, "accuracy": float(np.mean(plain > params.recall_threshold)),
                     "mean_recall": float(plain.mean()), "n_tests": len(built),
                     "heads": " ".join(f"L{l}H{h}" for l, h in heads)})
    return MaskingResult(model_id=model_id(model), params=params, curves=pd.DataFrame(rows),
                         ranked_heads=tuple(ranked), complete=complete, mask_scope=params.mask_scope,
                         random_pool=pool_text)
