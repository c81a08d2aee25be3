"""``retrieval_heads``: the retrieval score of every head over a NIAH grid (Wu et al. 2024; docs/retrieval.md#retrieval-score)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from mechscope.probes.niah import NIAH_FORMATS, NiahAnswer, grid_tests, resolve_format, tests_frame
from mechscope.analyses.retrieval.params import RetrievalParams
from mechscope.analyses.retrieval.proxy import induction_scores
from mechscope.analyses.retrieval.results import RetrievalResult
from mechscope.analyses.retrieval.scoring import scan
from mechscope.probes.models import model_id
from mechscope.probes.results import analysis


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
