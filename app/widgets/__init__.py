"""Playground controls, each registered by a decorator so a new control needs no edit of the
page.

* :mod:`.registry` — the three registries (interventions, KV-cache policies, decoding
  strategies) and the functions that draw them (``render_controls``, ``render_strategy``);
* :mod:`.handoff` — how another page hands data to the Playground: ``send_to_playground``
  (registered interventions and a strategy, as ``to_dict()`` data) and one-shot presets in
  ``st.session_state``;
* :mod:`.interventions`, :mod:`.kv`, :mod:`.strategies` — the built-in controls. Their
  parameters are forms generated from the objects' own dataclasses (``ui.params_form``), so
  every default is the object's.

Values are validated by the interventions themselves (one ``st.error`` line when out of
range), so widget bounds only guide input.
"""

from mechscope.app.widgets import interventions, kv, strategies  # noqa: F401  (they register the built-ins)
from mechscope.app.widgets.handoff import (
    PRESET_CLAMP,
    PRESET_HEAD_MASK,
    PRESET_KV_POLICY,
    PRESET_STRATEGY,
    SENT,
    send_to_playground,
)
from mechscope.app.widgets.registry import (
    INTERVENTION_WIDGETS,
    KV_POLICY_WIDGETS,
    STRATEGY_WIDGETS,
    Widget,
    intervention_widget,
    kv_policy_widget,
    render_controls,
    render_strategy,
    strategy_widget,
)

__all__ = [
    "INTERVENTION_WIDGETS", "KV_POLICY_WIDGETS", "PRESET_CLAMP", "PRESET_HEAD_MASK", "PRESET_KV_POLICY",
    "PRESET_STRATEGY", "SENT", "STRATEGY_WIDGETS", "Widget", "intervention_widget", "kv_policy_widget",
    "render_controls", "render_strategy", "send_to_playground", "strategy_widget",
]
