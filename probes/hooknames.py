"""Hook names: built and parsed here, nowhere else.

Names are TransformerLens' own (``transformer_lens.utils.get_act_name``): ``name("pattern",
3)`` is ``"blocks.3.attn.hook_pattern"``. :func:`site` parses a name into a :class:`Site`,
a ``str`` that also knows its ``layer`` and ``point`` — what reducers receive, so they never
parse names themselves.
"""

from __future__ import annotations

import re

from transformer_lens.utils import get_act_name

from mechscope.probes.errors import InputError

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
