"""Circuit tasks: clean / corrupted prompt pairs and the positive-prompt selection (docs/circuits.md#tasks).

A task (``data/tasks/circuit_*.jsonl``) holds clean / corrupted prompt pairs of equal token
length with single-token answers and distractors; the metric is the logit difference at each
prompt's last real position (:func:`probes.attribution.logit_diff`). Positive prompts are the
clean prompts on which the model's logit difference is positive (O'Neill & Bui's "the model
predicts correctly"), negative prompts their corrupted counterparts.
"""

from __future__ import annotations

import numpy as np

from mechscope.probes import attribution as attr
from mechscope.probes.datasets import load_task
from mechscope.probes.errors import InputError

#: the tasks the embedded model does
TASKS = ("ioi", "greater_than", "docstring", "induction")
#: tasks in the formats of the MIB circuit track (Mueller et al. 2025): multiple choice and
#: single-digit arithmetic; a task the model does not do is reported (its accuracy), not scored
MIB_TASKS = ("mcqa", "arithmetic")
ALL_TASKS = TASKS + MIB_TASKS
#: a task the model "does": at least this fraction of clean prompts with a positive logit difference
MIN_FRAC_POSITIVE = 0.6


def check_task(name: str) -> None:
    if name not in ALL_TASKS:
        raise InputError(f"Unknown circuit task {name!r}: use one of {', '.join(ALL_TASKS)}.")


def load_circuit_task(name: str) -> list[dict]:
    check_task(name)
    return load_task(f"circuit_{name}")


def task_pairs(model, records: list[dict]) -> attr.Pairs:
    if not records:
        raise InputError("The task has no prompts.")
    return attr.make_pairs(model, [r["clean"] for r in records], [r["corrupt"] for r in records],
                           [r["answers"] for r in records], [r["distractors"] for r in records])


def select_positive(model, pairs: attr.Pairs, n: int, batch_size: int = 16):
    """The first ``n`` pairs whose clean logit difference is positive; and the task check
    (fraction positive, mean logit differences) over the pairs evaluated: the first
    max(16, 2n) (all of them where that is not enough positives)."""
    m = min(len(pairs), max(16, 2 * n))
    clean, corrupt = attr.baseline_metrics(model, pairs.subset(range(m)), batch_size)
    if (clean > 0).sum() < n and m < len(pairs):
        clean, corrupt = attr.baseline_metrics(model, pairs, batch_size)
    check = {"n_pairs": len(clean), "frac_positive": float((clean > 0).mean()), "mean_ld_clean": float(clean.mean()),
             "mean_ld_corrupt": float(corrupt.mean()), "frac_positive_corrupt": float((corrupt > 0).mean())}
    idx = np.nonzero(clean > 0)[0][:n]
    if len(idx) == 0:
        raise InputError("The model gets no prompt of this task right (no positive prompts): nothing to explain.")
    return pairs.subset(idx), check


def positive_pairs(model, task: str, n_prompts: int):
    """The task's first ``n_prompts`` positive pairs and the task check."""
    return select_positive(model, task_pairs(model, load_circuit_task(task)), n_prompts)
