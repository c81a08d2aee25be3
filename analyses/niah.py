"""Needle in a haystack: the accuracy grid over context lengths and depths, optionally with
interventions held during decoding (docs/retrieval.md#retrieval-score). The tests themselves
(needles, haystack, prompts, ROUGE-1 success) are built by :mod:`probes.niah`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal

import pandas as pd

from mechscope.probes.errors import InputError
from mechscope.probes.interventions import check_scope
from mechscope.probes.models import model_id
from mechscope.probes.niah import (  # noqa: F401  (re-exported: the test builder's names)
    FORMATS,
    GridParams,
    NIAH_FORMATS,
    Needle,
    NiahAnswer,
    NiahTest,
    QUESTION,
    accuracy_of,
    answer,
    answer_offset,
    build_test,
    grid_figure,
    grid_tests,
    haystack_ids,
    load_needles,
    needle_pieces,
    newline_ids,
    prompt_pieces,
    resolve_format,
    response_text,
    rouge1_recall,
    rouge_tokens,
    tests_frame,
)
from mechscope.probes.results import Result, analysis


@dataclass(frozen=True)
class NiahParams(GridParams):
    """Parameters of :func:`niah`: the grid, plus interventions held during decoding (by
    default not on the prompt's prefill: Wu et al.'s masked NIAH, ``mask_scope``)."""

    kind: ClassVar[str] = "niah"
    interventions: tuple = field(default=(), metadata={"help": "interventions (e.g. head masks)"})
    kv_policy: object = field(default="full", metadata={"help": "KV-cache policy during decoding (a name or a policy)"})
    mask_scope: Literal["decode", "prompt_and_decode"] = field(
        default="decode", metadata={"help": "where the interventions act: decode = the last prompt token and the answer, "
                                            "prompt prefilled without them (the reference); prompt_and_decode = everywhere"})

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "interventions", tuple(self.interventions))
        if isinstance(self.kv_policy, str) and self.kv_policy != "full":
            from mechscope.probes.kv_policies import resolve_kv_policy

            object.__setattr__(self, "kv_policy", resolve_kv_policy(self.kv_policy) or "none")
        check_scope(self.mask_scope)
        if self.interventions and self.mask_scope == "decode" and self.kv_policy == "none":
            raise InputError("Decode-only interventions need a KV cache: use mask_scope='prompt_and_decode' "
                             "or a KV-cache policy.")


@dataclass(frozen=True)
class NiahResult(Result):
    tests: pd.DataFrame
    prompt_format: str
    complete: bool = True  # False: interrupted, ``tests`` holds the finished ones
    mask_scope: str = "prompt_and_decode"  # where the interventions acted (older results: everywhere)

    kind = "niah"

    def __post_init__(self):
        if isinstance(self.params, NiahParams) and self.params.mask_scope != self.mask_scope:
            object.__setattr__(self, "params", self.params.replace(mask_scope=self.mask_scope))

    @property
    def accuracy(self) -> float:
        return float(self.tests["correct"].mean()) if len(self.tests) else float("nan")

    def to_frame(self) -> pd.DataFrame:
        return self.tests

    def figures(self) -> dict:
        ivs = ", ".join(iv.describe() for iv in self.params.interventions) or "no interventions"
        policy = self.params.kv_policy
        if not isinstance(policy, str):
            ivs += f"; KV cache: {policy.describe() if hasattr(policy, 'describe') else policy.name}"
        return {"niah_grid": grid_figure(self.tests, f"NIAH accuracy ({self.prompt_format} prompt; {ivs}): "
                                                     f"{self.accuracy:.2f}")}


@analysis(NiahParams)
def niah(model, params: NiahParams, progress: Callable[[int, int], None] | None = None) -> NiahResult:
    """Greedy NIAH accuracy over the grid (lengths × depths × needles). Interrupting
    (KeyboardInterrupt) returns the finished tests with ``complete=False``."""
    for iv in params.interventions:
        iv.validate(model)
    built = grid_tests(model, params)
    tests, answers, complete = [], [], True
    try:
        for i, (t, nd) in enumerate(built):
            answers.append(answer(model, t, nd, params.max_new_tokens, params.interventions,
                                  kv_policy=None if params.kv_policy == "none" else params.kv_policy,
                                  intervention_scope=params.mask_scope))
            tests.append(t)
            if progress is not None:
                progress(i + 1, len(built))
    except KeyboardInterrupt:
        complete = False
    return NiahResult(model_id=model_id(model), params=params, tests=tests_frame(tests, answers, params.recall_threshold),
                      prompt_format=resolve_format(model, params.prompt_format, NIAH_FORMATS), complete=complete,
                      mask_scope=params.mask_scope)
