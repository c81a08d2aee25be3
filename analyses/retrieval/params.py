"""Parameters of retrieval-head detection and of the masking check (docs/retrieval.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from mechscope.probes.niah import GridParams
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import check_scope

#: a head scoring above this is a retrieval head (Wu et al. 2024)
THRESHOLD = 0.1
#: random control heads are drawn outside this many top-ranked heads (the reference's
#: ``block_list``: the top 100 of the head-score ranking, needle_in_haystack_with_mask.py)
RANDOM_OUTSIDE_TOP = 100


def check_batching(params) -> None:
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
        check_batching(self)


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
        check_batching(self)
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
