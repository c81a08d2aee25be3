"""``retrieval_masking``: NIAH accuracy with the top-k retrieval heads masked against k random heads (docs/retrieval.md)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

from mechscope.probes.niah import GridParams, grid_tests
from mechscope.analyses.retrieval.detection import retrieval_heads
from mechscope.analyses.retrieval.params import MaskingParams, RetrievalParams
from mechscope.analyses.retrieval.results import MaskingResult
from mechscope.analyses.retrieval.scoring import scan
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import HeadMask, hooks_for
from mechscope.probes.models import model_id
from mechscope.probes.results import analysis
from mechscope.probes.hooknames import head_label


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
                     "heads": " ".join(head_label(l, h) for l, h in heads)})
    return MaskingResult(model_id=model_id(model), params=params, curves=pd.DataFrame(rows),
                         ranked_heads=tuple(ranked), complete=complete, mask_scope=params.mask_scope,
                         random_pool=pool_text)
