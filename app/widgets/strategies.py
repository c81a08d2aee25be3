"""The Playground's decoding strategies (sidebar): greedy, sampling, contrastive search
(Su et al. 2022) and DeCoRe (retrieval heads masked). Their parameters are forms of the
strategies' own dataclasses."""

from __future__ import annotations

import streamlit as st

from mechscope.app import ui
from mechscope.app.specs import parse_heads
from mechscope.app.widgets.registry import strategy_widget


@strategy_widget("greedy", "greedy", order=0)
def greedy(model):
    from mechscope.probes.decoding import Greedy

    return Greedy()


@strategy_widget("sample", "sampling", order=10)
def sampling(model):
    from mechscope.probes.decoding import Sample

    return ui.params_form(Sample, key="pg_sample", where=st.sidebar, columns=1,
                          labels={"temperature": "Temperature", "top_k": "Top-k (empty: off)",
                                  "top_p": "Top-p (empty: off)", "seed": "Seed"})


@strategy_widget("contrastive", "contrastive search", order=20)
def contrastive(model):
    from mechscope.probes.contrastive import Contrastive

    strat = ui.params_form(Contrastive, key="pg_cs", where=st.sidebar, columns=1,
                           labels={"alpha": "α (degeneration penalty)", "k": "k (candidates)"})
    st.sidebar.caption("Su et al. 2022: among the top-k, argmax (1−α)·p(v) − α·max cos(h_v, h_j); α = 0 is greedy.")
    return strat


@strategy_widget("decore", "DeCoRe (retrieval heads masked)", order=40)
def decore(model):
    from mechscope.probes.decore import DeCoRe

    heads = st.sidebar.text_input("Retrieval heads (L:H, …)", "", key="pg_decore_heads",
                                  help="the masked model masks these heads (uniform attention); the reference masks "
                                       "the top 50; see the Retrieval heads page")
    return ui.params_form(
        DeCoRe, key="pg_decore", fields=("alpha", "mask_scope"), values={"heads": tuple(parse_heads(heads))},
        where=st.sidebar, columns=1,
        labels={"alpha": "α (empty: entropy-guided)",
                "mask_scope": "Mask heads during (decode: the prompt prefilled unmasked, the reference)"})
