"""Tiny models for sweep tests, named by a spec's ``loader = "tests.sweeps.models:NAME"``."""

from __future__ import annotations

import os
import time


def tiny_a(device: str = "cpu"):
    from tests.tiny import tiny_model

    return tiny_model(seed=0) if device == "cpu" else tiny_model(seed=0).to(device)


def tiny_b(device: str = "cpu"):
    from tests.tiny import tiny_model

    return tiny_model(seed=1) if device == "cpu" else tiny_model(seed=1).to(device)


def slow_tiny(device: str = "cpu"):
    """tiny_a whose forward pass sleeps ``MECHSCOPE_TEST_SLOW`` seconds (default 0.3): jobs
    long enough to be interrupted part-way."""
    model = tiny_a(device)
    forward = model.forward
    delay = float(os.environ.get("MECHSCOPE_TEST_SLOW", "0.3"))

    def slow(*args, **kwargs):
        time.sleep(delay)
        return forward(*args, **kwargs)

    model.forward = slow
    return model
