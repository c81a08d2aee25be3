"""The Playground's decoding strategies (sidebar): greedy, sampling, contrastive search
(Su et al. 2022), DeCoRe (retrieval heads masked), context-aware decoding (Shi et al. 2023),
contrastive decoding (Li et al. 2022) and DoLa (Chuang et al. 2023). Their parameters are
forms of the strategies' own dataclasses. Every strategy but greedy also offers where it
applies (:func:`strategy_side`): to both runs, or to the intervened run against a greedy
baseline."""

from __future__ import annotations

import streamlit as st

from mechscope.app import ui
from mechscope.app.specs import parse_heads
from mechscope.app.widgets.registry import strategy_widget


SIDE_KEY = "pg_strategy_side"


def strategy_side() -> str:
    """The chosen side ("both" or "intervened"; "both" where no selector was drawn)."""
    return st.session_state.get(SIDE_KEY, "both")


def _side_choice() -> None:
    st.sidebar.radio("Apply the strategy to", ["both", "intervened"], key=SIDE_KEY, horizontal=True,
                     format_func=lambda s: {"both": "both runs", "intervened": "intervened run (greedy baseline)"}[s],
                     help="intervened run: the baseline decodes greedily and Δp is each baseline token's probability "
                          "under the strategy minus under the plain model")


@strategy_widget("greedy", "greedy", order=0)
def greedy(model):
    from mechscope.probes.decoding import Greedy

    return Greedy()


@strategy_widget("sample", "sampling", order=10)
def sampling(model):
    from mechscope.probes.decoding import Sample

    strat = ui.params_form(Sample, key="pg_sample", where=st.sidebar, columns=1,
                           labels={"temperature": "Temperature", "top_k": "Top-k (empty: off)",
                                   "top_p": "Top-p (empty: off)", "seed": "Seed"})
    _side_choice()
    return strat


@strategy_widget("contrastive", "contrastive search", order=20)
def contrastive(model):
    from mechscope.probes.contrastive import Contrastive

    strat = ui.params_form(Contrastive, key="pg_cs", where=st.sidebar, columns=1,
                           labels={"alpha": "α (degeneration penalty)", "k": "k (candidates)"})
    st.sidebar.caption("Su et al. 2022: among the top-k, argmax (1−α)·p(v) − α·max cos(h_v, h_j); α = 0 is greedy.")
    _side_choice()
    return strat


@strategy_widget("decore", "DeCoRe (retrieval heads masked)", order=40)
def decore(model):
    from mechscope.probes.decore import DeCoRe

    heads = st.sidebar.text_input("Retrieval heads (L:H, …)", "", key="pg_decore_heads",
                                  help="the masked model masks these heads (uniform attention); the reference masks "
                                       "the top 50; see the Retrieval heads page")
    strat = ui.params_form(
        DeCoRe, key="pg_decore", fields=("alpha", "mask_scope"), values={"heads": tuple(parse_heads(heads))},
        where=st.sidebar, columns=1,
        labels={"alpha": "α (empty: entropy-guided)",
                "mask_scope": "Mask heads during (decode: the prompt prefilled unmasked, the reference)"})
    _side_choice()
    return strat


@strategy_widget("cad", "context-aware decoding (CAD)", order=50)
def cad(model):
    from mechscope.probes.cad import CAD

    context = st.sidebar.text_area("Context c (the prompt is the query x)", "", key="pg_cad_context",
                                   help="placed before the prompt; end it with a newline or space as the text needs")
    if not context.strip():
        st.sidebar.info("Give a context: CAD contrasts the prompt read with and without it.")
        st.stop()
    strat = ui.params_form(CAD, key="pg_cad", fields=("alpha",), values={"context": context}, where=st.sidebar,
                           columns=1, labels={"alpha": "α"})
    st.sidebar.caption("Shi et al. 2023: argmax (1+α)·z(y|c,x) − α·z(y|x); α = 0 is greedy on (c, x).")
    _side_choice()
    return strat


@strategy_widget("contrastive_decoding", "contrastive decoding (expert − amateur)", order=60)
def contrastive_decoding(model):
    from mechscope.probes.contrastive_decoding import ContrastiveDecoding

    kind = st.sidebar.radio("Amateur", ["layer", "heads", "model"], key="pg_cd_kind", horizontal=True,
                            format_func={"layer": "early exit", "heads": "heads masked", "model": "another model"}.get)
    if kind == "layer":
        layer = st.sidebar.number_input("Exit at layer (the residual entering block l)", 0, model.cfg.n_layers - 1,
                                        model.cfg.n_layers // 2, key="pg_cd_layer")
        values = {"amateur_layer": int(layer)}
    elif kind == "heads":
        heads = st.sidebar.text_input("Masked heads (L:H, …)", "", key="pg_cd_heads")
        values = {"amateur_heads": tuple(parse_heads(heads))}
    else:
        values = {"amateur_model": st.sidebar.text_input("Amateur model (same tokenizer)", "", key="pg_cd_model")}
    strat = ui.params_form(ContrastiveDecoding, key="pg_cd", fields=("beta", "amateur_temperature"), values=values,
                           where=st.sidebar, columns=1, labels={"beta": "β (plausibility)",
                                                                "amateur_temperature": "Amateur temperature"})
    st.sidebar.caption("Li et al. 2022: among tokens with p ≥ β·max p, argmax log p_expert − log p_amateur.")
    _side_choice()
    return strat


@strategy_widget("dola", "DoLa (contrasting layers)", order=70)
def dola(model):
    from mechscope.probes.dola import DoLa

    which = st.sidebar.selectbox("Candidate layers", ["high", "low", "list"], key="pg_dola_which",
                                 help="Hugging Face's buckets: high = second half, low = first half (every 2nd layer)")
    layers = which
    if which == "list":
        text = st.sidebar.text_input("Layers (comma-separated; 0 = embeddings)", "", key="pg_dola_layers")
        try:
            layers = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
        except ValueError:
            st.sidebar.error(f"Layers must be integers, not {text!r}.")
            st.stop()
    strat = ui.params_form(DoLa, key="pg_dola", fields=("relative_top", "repetition_penalty", "premature_norm"),
                           values={"layers": layers}, where=st.sidebar, columns=1,
                           labels={"relative_top": "Relative top", "repetition_penalty": "Repetition penalty",
                                   "premature_norm": "Final norm on early layers (not HF's)"})
    st.sidebar.caption("Chuang et al. 2023: log p_final − log p_premature over the plausible tokens, premature "
                       "layer by max JS divergence.")
    _side_choice()
    return strat
