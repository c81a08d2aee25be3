"""Retrieval heads (Wu et al. 2024; docs/retrieval.md#retrieval-score): detection, a cheap proxy, causal masking.

Modules: :mod:`.scoring` (a head's score on NIAH tests), :mod:`.proxy` (the induction proxy),
:mod:`.agreement` (comparing score maps), :mod:`.params`, :mod:`.results`, the analyses
:mod:`.detection` (:func:`retrieval_heads`) and :mod:`.masking` (:func:`retrieval_masking`);
the top-1 reducer is :class:`probes.top1.Top1`.

**Retrieval score.** For each NIAH test (``probes.niah``) the model answers greedily. At
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
and heads in Python. Here :class:`probes.top1.Top1` is a reducer on each layer's ``hook_pattern``
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

from mechscope.analyses.retrieval.agreement import head_agreement, jaccard, spearman
from mechscope.analyses.retrieval.detection import retrieval_heads
from mechscope.analyses.retrieval.masking import random_pool, retrieval_masking
from mechscope.analyses.retrieval.params import RANDOM_OUTSIDE_TOP, THRESHOLD, MaskingParams, RetrievalParams
from mechscope.analyses.retrieval.proxy import induction_scores
from mechscope.analyses.retrieval.results import MaskingResult, RetrievalResult
from mechscope.analyses.retrieval.scoring import copy_scores, reference_scores, scan, score_test
from mechscope.probes.top1 import Top1

__all__ = [
    "RANDOM_OUTSIDE_TOP", "THRESHOLD", "MaskingParams", "MaskingResult", "RetrievalParams", "RetrievalResult", "Top1",
    "copy_scores", "head_agreement", "induction_scores", "jaccard", "random_pool", "reference_scores",
    "retrieval_heads", "retrieval_masking", "scan", "score_test", "spearman",
]
