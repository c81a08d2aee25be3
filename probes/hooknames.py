"""Hook names: built and parsed here, nowhere else.

Names are TransformerLens' own (``transformer_lens.utils.get_act_name``): ``name("pattern",
3)`` is ``"blocks.3.attn.hook_pattern"``. :func:`site` parses a name into a :class:`Site`,
a ``str`` that also knows its ``layer`` and ``point`` — what reducers receive, so they never
parse names themselves. Heads are labelled ``"L{layer}H{head}"`` (:func:`head_label`) and
parsed back, with layer lists, by :func:`parse_head` / :func:`parse_layers`.
"""

from __future__ import annotations

import re

from transformer_lens.utils import get_act_name

from mechscope.probes.errors import InputError

_HEAD_RE = re.compile(r"^\s*L?(\d+)\s*[:H]\s*(\d+)\s*$", re.IGNORECASE)
_LAYER_PART_RE = re.compile(r"^\s*(\d+)(?:\s*-\s*(\d+))?\s*$")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(?:(attn|mlp|ln1|ln2)\.)?hook_(\w+)$")

# short point names accepted by ``name`` (TransformerLens' aliases)
POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "pattern", "attn_scores",
          "q", "k", "v", "z", "result", "mlp_pre", "mlp_post", "pre", "post", "rot_q", "rot_k")


def name(point: str, layer: int | None = None) -> str:
    """The TransformerLens hook name of ``point`` at ``layer`` (e.g. "resid_post", 5)."""
    if point == "mlp_post":
        point = "post"
    elif point == "mlp_pre":
        point = "pre"
    return get_act_name(point, layer)


class Site(str):
    """A hook name that knows its layer (None outside the blocks) and its point."""

    layer: int | None
    point: str

    def __new__(cls, hook_name: str):
        obj = super().__new__(cls, hook_name)
        m = _BLOCK_RE.match(hook_name)
        if m:
            obj.layer = int(m.group(1))
            part, point = m.group(2), m.group(3)
            obj.point = "mlp_" + point if part == "mlp" and point in ("pre", "post") else point
        else:
            obj.layer = None
            obj.point = hook_name.rsplit("hook_", 1)[-1]
        return obj


def site(hook_name: str) -> Site:
    return hook_name if isinstance(hook_name, Site) else Site(hook_name)


def layer_of(hook_name: str) -> int | None:
    """The block index in a hook name (None for hooks outside the blocks)."""
    return site(hook_name).layer


def check_hook(model, hook_name: str) -> str:
    if hook_name not in model.hook_dict:
        raise InputError(f"Unknown hook point {hook_name!r} (see model.hook_dict for valid names).")
    return hook_name


def head_label(layer: int, head: int) -> str:
    """The label of head ``head`` of layer ``layer``: ``"L3H7"``."""
    return f"L{layer}H{head}"


def parse_head(label: str) -> tuple[int, int]:
    """``"L3H7"`` or ``"3:7"`` → (3, 7)."""
    m = _HEAD_RE.match(label or "")
    if not m:
        raise InputError(f"{label!r}: expected LAYER:HEAD, e.g. 3:7.")
    return int(m.group(1)), int(m.group(2))


def parse_heads(labels) -> list[tuple[int, int]]:
    """A list of head labels, or one comma/space-separated string of them."""
    if isinstance(labels, str):
        labels = [s for s in re.split(r"[,\s]+", labels) if s]
    return [parse_head(s) for s in labels]


def parse_layers(spec: str | None) -> list[int] | None:
    """``"0-9"``, ``"2,5,7"`` or ``"0-3,8"`` → sorted unique layers (None or blank → None)."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    out: list[int] = []
    for part in str(spec).split(","):
        m = _LAYER_PART_RE.match(part)
        if not m:
            raise InputError(f"{spec!r}: expected layers such as 0-9 or 2,5,7.")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise InputError(f"{spec!r}: the range {lo}-{hi} is empty.")
        out.extend(range(lo, hi + 1))
    return sorted(set(out))
