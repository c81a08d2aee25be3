"""The model lock: queued runs learn whom they wait behind, and runs with different
interventions started at the same moment each get what they get alone."""

from __future__ import annotations

import threading
import time

import torch

from mechscope.probes.locks import model_lock, queue_state, turn
from tests.tiny import tiny_model


def _wait_until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_waiters_see_the_holder_and_their_place_in_line():
    model = tiny_model(n_layers=1)
    release = threading.Event()
    holding = threading.Event()
    seen: dict[str, list] = {"B": [], "C": []}
    order: list[str] = []

    def holder():
        with turn(model, "Retrieval heads (session a)"):
            order.append("A")
            holding.set()
            release.wait(10)

    def waiter(name):
        with turn(model, name, on_wait=lambda who, pos: seen[name].append((who, pos)), poll_s=0.02):
            order.append(name)

    ta = threading.Thread(target=holder)
    ta.start()
    holding.wait(10)
    tb = threading.Thread(target=waiter, args=("B",))
    tb.start()
    _wait_until(lambda: seen["B"])
    tc = threading.Thread(target=waiter, args=("C",))
    tc.start()
    _wait_until(lambda: seen["C"])
    time.sleep(0.1)  # both waiters polled at least once more
    release.set()
    for t in (ta, tb, tc):
        t.join(10)
    assert order[0] == "A" and sorted(order[1:]) == ["B", "C"]
    assert seen["B"][0] == ("Retrieval heads (session a)", 1)
    assert seen["C"][0] == ("Retrieval heads (session a)", 2)
    assert queue_state(model) == ("another run", 0)  # nobody holds or waits any more
    assert model_lock(model).acquire(blocking=False)  # and the lock is free
    model_lock(model).release()


def test_a_declared_thread_hears_the_queue_from_any_probe_call():
    """The dashboard declares each script run; a probe call that waits for the model (here
    ``applied``, which every hooked run goes through) then reports the queue."""
    from mechscope.probes.interventions import applied
    from mechscope.probes.locks import declare

    model = tiny_model(n_layers=1)
    holding, heard = threading.Event(), []

    def holder():
        with turn(model, "Circuits: comparison (session b)"):
            holding.set()
            _wait_until(lambda: heard, timeout=20)
            time.sleep(0.1)

    def page():
        declare("Next token (session c)", lambda who, pos: heard.append((who, pos)), poll_s=0.02)
        try:
            with applied(model, ()):
                heard.append(("ran", queue_state(model)[0]))
        finally:
            declare(None, None)

    t = threading.Thread(target=holder)
    t.start()
    holding.wait(10)
    p = threading.Thread(target=page)
    p.start()
    for x in (t, p):
        x.join(20)
    assert heard[0] == ("Circuits: comparison (session b)", 1)
    assert heard[-2:] == [("Circuits: comparison (session b)", 0), ("ran", "Next token (session c)")]


def test_a_nested_turn_does_not_wait_and_keeps_the_outer_label():
    model = tiny_model(n_layers=1)
    calls = []
    with turn(model, "outer"):
        with turn(model, "inner", on_wait=lambda *a: calls.append(a)):
            assert queue_state(model)[0] == "outer"
        assert queue_state(model)[0] == "outer"
    assert calls == [] and queue_state(model)[0] == "another run"


def test_two_users_with_different_interventions_at_once_get_what_they_get_alone():
    from mechscope.probes.decoding import generate
    from mechscope.probes.interventions import HeadMask, NeuronClamp

    model = tiny_model(n_layers=2, dtype=torch.float64)
    prompt = torch.tensor([3, 17, 9, 4, 22, 8])
    users = {"masks": (HeadMask(0, 1), HeadMask(1, 2)), "clamp": (NeuronClamp(1, 5, value=30.0),), "none": ()}
    alone = {k: generate(model, prompt, max_new_tokens=12, interventions=iv).new_tokens for k, iv in users.items()}
    assert len({tuple(v) for v in alone.values()}) == 3  # the interventions do change the output
    for _ in range(3):
        start = threading.Barrier(len(users))
        got: dict[str, object] = {}

        def user(name):
            start.wait(10)
            got[name] = generate(model, prompt, max_new_tokens=12, interventions=users[name]).new_tokens

        threads = [threading.Thread(target=user, args=(k,)) for k in users]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert got == alone
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())  # no hook left behind


def test_a_waiter_stopped_as_its_turn_comes_leaves_the_lock_free():
    """A dashboard script waiting for the model hears ``on_wait`` at each poll and once more
    when the lock is its own; Streamlit may stop the script in that last call (the user
    navigated away). The lock must not stay held by a script that never ran its block."""
    model = tiny_model(n_layers=1)
    holding, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def holder():
        with turn(model, "a background run"):
            holding.set()
            release.wait(10)

    def stopped_when_its_turn_comes(who, pos):
        if pos == 0:
            raise KeyboardInterrupt("the script was stopped")

    def waiter():
        try:
            with turn(model, "a page", on_wait=stopped_when_its_turn_comes, poll_s=0.02):
                errors.append(AssertionError("the block ran"))
        except KeyboardInterrupt as e:
            errors.append(e)

    ta = threading.Thread(target=holder)
    ta.start()
    holding.wait(10)
    tb = threading.Thread(target=waiter)
    tb.start()
    _wait_until(lambda: queue_state(model)[1] == 1)
    release.set()
    ta.join(10)
    tb.join(10)
    assert [type(e) for e in errors] == [KeyboardInterrupt]
    lock = model_lock(model)
    assert lock.holder is None
    assert lock.acquire(timeout=1.0)  # free for everyone else
    lock.release()
