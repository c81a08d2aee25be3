"""One re-entrant lock per model object: whoever runs a shared model (with or without
hooks) holds it, so no user ever runs under another user's hooks.

The lock knows who holds it and who waits. A thread that declares itself with
:func:`reporting` (a label, and an ``on_wait`` callback) is named to those queued behind it,
and — wherever in the probe layer it then waits for the model — hears
``on_wait(holder_label, position)`` until its turn comes. :func:`turn` is both in one.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, ModelLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_TICKETS = itertools.count()
_LOCAL = threading.local()  # .label, .on_wait, .poll_s of the current thread (set by reporting())


class ModelLock:
    """A re-entrant lock (``threading.RLock`` semantics) that records the label of the
    thread holding it and the queue of threads waiting for it."""

    def __init__(self):
        self._lock = threading.RLock()
        self._guard = threading.Lock()
        self.holder: str | None = None  # label of the outermost holder (None: unlabelled)
        self._owner: int | None = None
        self._depth = 0
        self.waiting: list[tuple[int, str]] = []  # (ticket, label) in arrival order

    def _took(self) -> None:
        with self._guard:
            if self._depth == 0:
                self.holder, self._owner = getattr(_LOCAL, "label", None), threading.get_ident()
            self._depth += 1

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        on_wait = getattr(_LOCAL, "on_wait", None)
        if not blocking or timeout >= 0 or on_wait is None:
            ok = self._lock.acquire(blocking, timeout)
        elif self._lock.acquire(blocking=False):
            ok = True
        else:
            ticket = next(_TICKETS)
            with self._guard:
                self.waiting.append((ticket, getattr(_LOCAL, "label", None) or "a run"))
            behind = "another run"
            try:
                while True:
                    behind, place = self.state(ticket)
                    on_wait(behind, place)
                    if self._lock.acquire(timeout=getattr(_LOCAL, "poll_s", 0.25)):
                        ok = True
                        break
            finally:
                with self._guard:
                    self.waiting = [w for w in self.waiting if w[0] != ticket]
            self._took()
            try:
                on_wait(behind, 0)  # position 0: our turn came (after waiting behind ``behind``)
            except BaseException:  # the waiter was stopped (a dashboard script rerun, say): not ours after all
                self.release()
                raise
            return True
        if ok:
            self._took()
        return ok

    def release(self) -> None:
        with self._guard:
            self._depth -= 1
            if self._depth == 0:
                self.holder, self._owner = None, None
        self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()

    def state(self, ticket: int | None = None) -> tuple[str, int]:
        """(label of the holder, 1-based place of ``ticket`` among the waiters — or how many
        wait, for an unknown ticket)."""
        with self._guard:
            tickets = [t for t, _ in self.waiting]
            place = tickets.index(ticket) + 1 if ticket in tickets else len(tickets)
            return self.holder or "another run", place


def model_lock(model: torch.nn.Module) -> ModelLock:
    """The re-entrant lock that guards ``model`` and its hook points."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = ModelLock()
        return lock


def queue_state(model, ticket: int | None = None) -> tuple[str, int]:
    """(label of the run holding ``model``, place of ``ticket`` / number of waiters)."""
    return model_lock(model).state(ticket)


def declare(label: str | None, on_wait: Callable[[str, int], None] | None = None, poll_s: float = 0.25) -> None:
    """:func:`reporting` for the rest of this thread's work (e.g. one dashboard script run)."""
    _LOCAL.label, _LOCAL.on_wait, _LOCAL.poll_s = label, on_wait, poll_s


@contextmanager
def reporting(label: str, on_wait: Callable[[str, int], None] | None = None, poll_s: float = 0.25) -> Iterator[None]:
    """For the block, this thread is ``label`` to whoever waits behind it, and any wait for a
    model lock calls ``on_wait(holder_label, position)`` every ``poll_s`` seconds, and once
    more with position 0 when the lock is ours."""
    old = (getattr(_LOCAL, "label", None), getattr(_LOCAL, "on_wait", None), getattr(_LOCAL, "poll_s", 0.25))
    _LOCAL.label, _LOCAL.on_wait, _LOCAL.poll_s = label, on_wait, poll_s
    try:
        yield
    finally:
        _LOCAL.label, _LOCAL.on_wait, _LOCAL.poll_s = old


@contextmanager
def turn(model, label: str, on_wait: Callable[[str, int], None] | None = None,
         poll_s: float = 0.25) -> Iterator[None]:
    """Hold ``model``'s lock for the block, as ``label``; while another thread holds it,
    ``on_wait(holder_label, position)`` is called on entry and every ``poll_s`` seconds
    (position 1: next in line). Re-entrant: the holder's nested turns do not wait and keep
    the outer label."""
    with reporting(label, on_wait, poll_s), model_lock(model):
        yield
