"""Every analysis the workbench knows, for loading and re-running saved results.

``load_result(dir)`` imports each module of the ``analyses`` and ``saes`` packages (our own
code, a fixed set) so that every result kind, parameter kind and intervention kind is
registered, then reads the folder through :meth:`probes.results.Result.load`, which
resolves names through those registries only — a ``result.json`` naming anything else
(``os``, a test module) is refused with a clear message.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path

from mechscope.probes.results import ANALYSES, Result, result_kinds

PACKAGES = ("mechscope.analyses", "mechscope.saes")


@functools.lru_cache(maxsize=1)
def import_all() -> tuple[str, ...]:
    """Import every analysis module once; returns their names."""
    names = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_"):
                continue
            importlib.import_module(f"{package}.{info.name}")
            names.append(f"{package.removeprefix('mechscope.')}.{info.name}")
    return tuple(names)


def load_result(directory: str | Path) -> Result:
    import_all()
    return Result.load(directory)


def kinds() -> list[str]:
    """Result kinds that can be loaded."""
    import_all()
    return result_kinds()


def analyses() -> list[str]:
    """Analysis kinds that can be (re-)run."""
    import_all()
    return sorted(ANALYSES)


# ---------------------------------------------------------------------------------------
# Cost model: how long an analysis takes on this machine, before it runs
#
# Each heavy analysis registers ``cost(params) -> (tokens, passes)``: the tokens its forward
# passes process in all (a backward pass counts twice the forward's tokens) and how many model
# calls it makes (a decoding step is one call of one token per row). Time on this machine is
# ``passes × per_call + tokens × per_token``, both measured once per process and model by
# :func:`calibrate` (a 1-token and a 64-token timed forward).

COSTS: dict = {}  # Params kind -> cost(params) -> (tokens, passes)


def cost(kind: str):
    """Register the ``(tokens, passes)`` formula of the analysis whose Params kind is ``kind``."""

    def register(fn):
        COSTS[kind] = fn
        return fn

    return register


def cost_of(params) -> tuple[int, int] | None:
    """``(tokens, passes)`` of running ``params`` (None: no formula for its kind)."""
    import_all()
    fn = COSTS.get(getattr(params, "kind", None))
    if fn is None:
        return None
    tokens, passes = fn(params)
    return int(tokens), int(passes)


_CALIBRATION: dict = {}


def calibrate(model) -> tuple[float, float]:
    """``(seconds per model call, seconds per token)`` of ``model`` on its device, from the
    median of three timed forwards of 1 and of 64 tokens (measured once per process and
    model, under the model's lock)."""
    import statistics
    import time

    import torch

    from mechscope.probes.interventions import applied
    from mechscope.probes.models import model_id

    key = (id(model), model_id(model), str(model.cfg.device))
    if key not in _CALIBRATION:
        def timed(n: int) -> float:
            x = torch.ones((1, n), dtype=torch.long, device=model.cfg.device)
            times = []
            for _ in range(4):
                t0 = time.perf_counter()
                model(x, return_type=None)
                times.append(time.perf_counter() - t0)
            return statistics.median(times[1:])

        with applied(model), torch.no_grad():
            one, many = timed(1), timed(64)
        _CALIBRATION[key] = (one, max(many - one, 0.0) / 63)
    return _CALIBRATION[key]


def estimate_seconds(params, model) -> float | None:
    """Estimated seconds of running ``params`` on ``model`` here (None: no cost formula)."""
    c = cost_of(params)
    if c is None:
        return None
    per_call, per_token = calibrate(model)
    tokens, passes = c
    return passes * per_call + tokens * per_token


def _ceil(a: int, b: int) -> int:
    return -(-a // max(b, 1))


def _texts(n, default: int = 64) -> int:
    return default if n is None else int(n)


def _tokens(n, default: int = 256) -> int:
    return default if n is None else int(n)


def _grid(p) -> tuple[int, int, int]:
    """(tests, prompt tokens, decode calls) of a NIAH grid decoded ``batch_size`` rows at a time."""
    from mechscope.probes.niah import load_needles

    needles = len(p.needles) or len(load_needles())
    per_len = len(p.depths) * needles
    tests = len(p.lengths) * per_len
    prompt = sum(p.lengths) * per_len
    batch = getattr(p, "batch_size", 1)
    calls = _ceil(tests, batch) * p.max_new_tokens + tests
    return tests, prompt + tests * p.max_new_tokens, calls


@cost("retrieval_heads")
def _cost_retrieval(p):
    tests, tokens, calls = _grid(p)
    return tokens + p.proxy_seqs * 2 * 50, calls + p.proxy_seqs


@cost("retrieval_masking")
def _cost_masking(p):
    tests, tokens, calls = _grid(p)
    configs = sum(1 if k == 0 else 1 + p.seeds for k in p.ks) + (0 if p.heads else 1)
    return tokens * configs, calls * configs


@cost("kv_curve")
def _cost_kv_curve(p):
    tests, tokens, calls = _grid(p)
    rows = tests * 2 * len(p.kv_heads)  # RazorAttention and the uniform cache at every m
    per_row = tokens / max(tests, 1)
    detect = (tokens, calls) if not p.heads else (0, 0)
    return per_row * rows + detect[0], _ceil(rows, p.rows) * (p.max_new_tokens + 1) + detect[1]


@cost("duo_gates")
def _cost_duo(p):
    mean_len = (p.min_length + p.max_length) / 2
    return p.steps * mean_len * 4, p.steps * 2  # full branch forward + gated forward and backward


@cost("isotropy")
def _cost_isotropy(p):
    n = _texts(p.n_texts)
    return n * _tokens(p.max_tokens), _ceil(n, p.batch_size) * (2 if p.heads else 1)


@cost("whitening")
def _cost_whitening(p):
    n = _texts(p.n_texts)
    return 2 * n * _tokens(p.max_tokens), 2 * _ceil(n, p.batch_size)


@cost("decoding_isotropy")
def _cost_decoding_isotropy(p):
    n = 4 if p.texts is None and p.n_texts is None else _texts(p.n_texts, len(p.texts or ()) or 4)
    steps = 3 * n * p.max_new_tokens  # greedy, sampling and contrastive search
    return n * _tokens(p.max_tokens, 32) * 3 + steps * (1 + p.k), steps


@cost("sinks")
def _cost_sinks(p):
    n = _texts(p.n_texts)
    v = max(len(p.variants), 1)
    return n * _tokens(p.max_tokens) * v, _ceil(n, p.batch_size) * v
