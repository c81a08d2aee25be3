"""One re-entrant lock per model object: whoever runs a shared model (with or without
hooks) holds it, so no user ever runs under another user's hooks."""

from __future__ import annotations

import threading
import weakref

import torch

_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The re-entrant lock that guards ``model`` and its hook points."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock
