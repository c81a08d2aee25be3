"""One re-entrant lock per model object: whoever runs a shared model (with or without
hooks) holds it, so no user ever runs under another user's hooks.

:func:`turn` takes the lock under a label (e.g. the dashboard run it serves) and, while
another run holds it, reports who holds it and where the caller stands in the queue.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_QUEUES: "weakref.WeakKeyDictionary[torch.nn.Module, _Queue]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_TICKETS = itertools.count()


@dataclass
class _Queue:
    holder: str | None = None  # label of the run holding the lock through turn(); None: unlabelled
    owner: int | None = None  # its thread id
    waiting: list = field(default_factory=list)  # (ticket, label) in arrival order


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The re-entrant lock that guards ``model`` and its hook points."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def _queue(model) -> _Queue:
    with _LOCKS_GUARD:
        q = _QUEUES.get(model)
        if q is None:
            q = _QUEUES[model] = _Queue()
        return q


def queue_state(model, ticket: int | None = None) -> tuple[str, int]:
    """(label of the run holding ``model``, 1-based place of ``ticket`` among the waiters)."""
    q = _queue(model)
    with _LOCKS_GUARD:
        holder = q.holder or "another run"
        tickets = [t for t, _ in q.waiting]
        place = tickets.index(ticket) + 1 if ticket in tickets else len(tickets)
    return holder, place


@contextmanager
def turn(model, label: str, on_wait: Callable[[str, int], None] | None = None,
         poll_s: float = 0.25) -> Iterator[None]:
    """Hold ``model``'s lock for the block, as ``label``. While another thread holds it,
    ``on_wait(holder_label, position)`` is called on entry and every ``poll_s`` seconds
    (position 1: next in line). Re-entrant: the holder's nested turns do not wait."""
    lock = model_lock(model)
    q = _queue(model)
    ticket = next(_TICKETS)
    if not lock.acquire(blocking=False):
        with _LOCKS_GUARD:
            q.waiting.append((ticket, label))
        try:
            while True:
                if on_wait is not None:
                    on_wait(*queue_state(model, ticket))
                if lock.acquire(timeout=poll_s):
                    break
        finally:
            with _LOCKS_GUARD:
                q.waiting = [w for w in q.waiting if w[0] != ticket]
    nested = q.owner == threading.get_ident()
    outer = (q.holder, q.owner)
    with _LOCKS_GUARD:
        q.holder, q.owner = (q.holder if nested else label), threading.get_ident()
    try:
        yield
    finally:
        with _LOCKS_GUARD:
            q.holder, q.owner = outer if nested else (None, None)
        lock.release()
