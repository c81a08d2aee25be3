"""Wu et al.'s retrieval score of each head on NIAH tests (docs/retrieval.md#retrieval-score).

At every greedy decoding step that emits token w, each head's top-1 attended position j
(:class:`probes.top1.Top1`, reduced in the hooks) earns 1/|answer-part tokens| when j lies in
the needle's answer span and the prompt token at j is w (:func:`copy_scores`).
:func:`score_test` scores one test; :func:`scan` decodes many as rows of one batch;
:func:`reference_scores` is the materialising loop of the reference (the benchmark's baseline).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from mechscope.probes.niah import NiahAnswer, NiahTest, Needle, answer, newline_ids, response_text
from mechscope.probes.batched_greedy import greedy_rows, length_batches
from mechscope.probes.capture import run as capture_run
from mechscope.probes.errors import InputError
from mechscope.probes.hooknames import name as hook_name
from mechscope.probes.top1 import Top1


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
    """Batched :func:`score_test` (or :func:`probes.niah.answer` with ``scores=False``):
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
