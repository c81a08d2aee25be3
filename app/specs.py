"""The one parser and formatter for the short specs users type: ``L:H`` (a head),
``L:H:MODE`` (a head mask), ``L:N=V`` (a neuron clamp), ``L:N`` (a neuron), and layer
lists ``0-9`` / ``2,5,7``. The CLI and the dashboard both use these; heads and layer lists
are parsed by ``probes.hooknames`` (re-exported here)."""

from __future__ import annotations

import re

from mechscope.probes.errors import InputError
from mechscope.probes.hooknames import head_label, parse_head, parse_heads, parse_layers  # noqa: F401  (the one home)

_MASK_RE = re.compile(r"^\s*(\d+):(\d+)(?::(uniform|zero))?\s*$")
_CLAMP_RE = re.compile(r"^\s*(\d+):(\d+)\s*=\s*([-+0-9.eE]+)\s*$")
_NEURON_RE = re.compile(r"^\s*L?(\d+)\s*[:N]\s*(\d+)\s*$", re.IGNORECASE)


format_head = head_label  # "L3H7"


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
