"""The one parser and formatter for the short specs users type: ``L:H`` (a head),
``L:H:MODE`` (a head mask), ``L:N=V`` (a neuron clamp), ``L:N`` (a neuron), and layer
lists ``0-9`` / ``2,5,7``. The CLI and the dashboard both use these."""

from __future__ import annotations

import re

from mechscope.probes.errors import InputError

_HEAD_RE = re.compile(r"^\s*L?(\d+)\s*[:H]\s*(\d+)\s*$", re.IGNORECASE)
_MASK_RE = re.compile(r"^\s*(\d+):(\d+)(?::(uniform|zero))?\s*$")
_CLAMP_RE = re.compile(r"^\s*(\d+):(\d+)\s*=\s*([-+0-9.eE]+)\s*$")
_NEURON_RE = re.compile(r"^\s*L?(\d+)\s*[:N]\s*(\d+)\s*$", re.IGNORECASE)


def parse_head(spec: str) -> tuple[int, int]:
    """``"3:7"`` or ``"L3H7"`` → (3, 7)."""
    m = _HEAD_RE.match(spec or "")
    if not m:
        raise InputError(f"{spec!r}: expected LAYER:HEAD, e.g. 3:7.")
    return int(m.group(1)), int(m.group(2))


def parse_heads(specs) -> list[tuple[int, int]]:
    """A list of head specs, or one comma/space-separated string of them."""
    if isinstance(specs, str):
        specs = [s for s in re.split(r"[,\s]+", specs) if s]
    return [parse_head(s) for s in specs]


def format_head(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def parse_neuron(spec: str) -> tuple[int, int]:
    """``"3:17"`` or ``"L3N17"`` → (3, 17)."""
    m = _NEURON_RE.match(spec or "")
    if not m:
        raise InputError(f"{spec!r}: expected LAYER:NEURON, e.g. 3:17.")
    return int(m.group(1)), int(m.group(2))


def format_neuron(layer: int, neuron: int) -> str:
    return f"L{layer}N{neuron}"


def parse_mask(spec: str):
    """``"L:H"`` or ``"L:H:MODE"`` (uniform | zero) → HeadMask."""
    from mechscope.probes.interventions import HeadMask

    m = _MASK_RE.match(spec or "")
    if not m:
        raise InputError(f"{spec!r}: expected LAYER:HEAD or LAYER:HEAD:MODE (mode uniform|zero).")
    return HeadMask(int(m.group(1)), int(m.group(2)), m.group(3) or "uniform")


def parse_clamp(spec: str):
    """``"L:N=V"`` → NeuronClamp(value=V)."""
    from mechscope.probes.interventions import NeuronClamp

    m = _CLAMP_RE.match(spec or "")
    try:
        value = float(m.group(3)) if m else None
    except ValueError:
        value = None
    if value is None:
        raise InputError(f"{spec!r}: expected LAYER:NEURON=VALUE, e.g. 3:17=5.0.")
    return NeuronClamp(int(m.group(1)), int(m.group(2)), value=value)


def format_clamp(layer: int, neuron: int, value: float) -> str:
    return f"{layer}:{neuron}={value:g}"


def parse_layers(spec: str | None) -> list[int] | None:
    """``"0-9"``, ``"2,5,7"`` or ``"0-3,8"`` → sorted unique layers (None stays None)."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    out: list[int] = []
    for part in str(spec).split(","):
        m = re.match(r"^\s*(\d+)(?:\s*-\s*(\d+))?\s*$", part)
        if not m:
            raise InputError(f"{spec!r}: expected layers such as 0-9 or 2,5,7.")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise InputError(f"{spec!r}: the range {lo}-{hi} is empty.")
        out.extend(range(lo, hi + 1))
    return sorted(set(out))
