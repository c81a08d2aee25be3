"""The dashboard's front page: what each family of analyses does and which paper it follows,
the shipped model and SAEs, recent saved results and background runs, and a two-minute tour (one click per
family, landing on its page with a quick default). ``?result=<folder>`` opens a saved result.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from mechscope.app import ui


@dataclass(frozen=True)
class Family:
    page: str  # the page file under app/pages
    name: str
    does: str
    follows: str
    tour: str  # what the tour click shows
    preset: tuple = ()  # (session-state key, value) set before the page opens


FAMILIES = (
    Family("01_next_token.py", "Next token and attention",
           "The model's top-k next tokens for a prompt and any head's attention pattern.",
           "the model's own forward pass, read through TransformerLens hooks", "opens on the default prompt; drag the layer/head sliders"),
    Family("02_playground.py", "Playground",
           "Baseline and intervened generations side by side (head masks, neuron clamps, SAE steering, "
           "KV-cache policies, decoding strategies) with each token's probability change.",
           "Head masking and decoding as in the retrieval-head, DeCoRe, contrastive-search, CAD, contrastive-decoding and DoLa papers (Wu et al. 2024; Gema et al. 2024; Su et al. 2022; Shi et al. 2023; Li et al. 2022; Chuang et al. 2023)",
           "generates 8 tokens with no intervention; switch on a head mask", (("pg_max_new", 8),)),
    Family("10_attention_sinks.py", "Attention sinks",
           "Sink metric by layer × head, hidden sinks, streaming perplexity and ACT calibration.",
           "Gu et al. 2024 (When attention sink emerges); Xiao et al. 2023 (StreamingLLM); Yu et al. 2024 (ACT); Guo et al. 2024 (active-dormant heads)",
           "press “Compute sink metrics” (default texts, ~seconds)"),
    Family("11_retrieval_heads.py", "Retrieval heads",
           "Retrieval score over a needle-in-a-haystack grid, masking curves, DuoAttention gates and the "
           "KV-memory curve.",
           "Wu et al. 2024 (Retrieval heads); Xiao et al. 2024 (DuoAttention); Tang et al. 2024 (RazorAttention)",
           "press “Detect retrieval heads” (default grid)"),
    Family("20_logit_lens.py", "Logit lens",
           "Every layer × position decoded through the unembedding, a target's trajectory and the "
           "LLM-Microscope layer metrics.",
           "nostalgebraist 2020 (logit lens); Razzhigaev et al. 2025 (LLM-Microscope)",
           "opens on the default prompt and target"),
    Family("21_neurons.py", "Neurons",
           "MLP neurons decoded through the unembedding, search by token, neuron cards and the taxonomy.",
           "Neuron decoding through the final projection (arXiv 2501.02688); Voita et al. 2023 (dead, n-gram, positional)",
           "opens on the default neuron card"),
    Family("30_isotropy.py", "Isotropy",
           "IsoScore, cosine and partition isotropy per depth, spectra, whitening and contrastive search.",
           "Rudman et al. 2022 (IsoScore); Mu & Viswanath 2018; Su & Collier 2022; Yokoi et al. 2024 (Zipfian whitening); Su et al. 2022 (contrastive search)",
           "press “Compute isotropy” (default texts)"),
    Family("50_saes.py", "SAEs",
           "The shipped residual SAEs: evals, a latent browser, text → latents, steering, absorption, geometry.",
           "TopK SAEs (SAE-Lens); Chanin et al. 2024 (absorption); Li et al. 2024 (geometry)",
           "opens the eval table of the shipped SAEs"),
    Family("60_circuits.py", "Circuits",
           "Activation patching, attribution patching, EAP-IG and discrete-SAE circuits compared by ROC-AUC; "
           "edge-level circuits scored by faithfulness curves (CPR / CMD) with intervals, MIB circuit files.",
           "Hanna et al. 2024 (EAP-IG); attribution patching; O'Neill & Bui 2024 (discrete SAEs); Mueller et al. 2025 (MIB)",
           "press the comparison button with the default task"),
    Family("70_sweeps.py", "Sweeps",
           "Grids of analyses × parameters × models × text shards from a TOML spec, resumable, on one process or "
           "Ray; one table across jobs with comparison figures.",
           "the analyses' own protocols; runs keyed by content so only missing jobs run",
           "open a sweep folder written by `mechscope sweep run`"),
)

# pages that are not an analysis family: the list of background runs
UTILITY_PAGES = ("75_runs.py",)


def _go(family: Family) -> None:
    for key, value in family.preset:
        st.session_state[key] = value
    st.switch_page(f"pages/{family.page}")


def _shipped() -> None:
    from mechscope.probes.models import DEFAULT_MODEL, available_models

    st.subheader("Shipped model and SAEs")
    for spec, installed in available_models():
        mark = "default, " if spec.name == DEFAULT_MODEL else ""
        st.markdown(f"- **{spec.name}** ({mark}{'installed' if installed else 'not installed'}) — "
                    f"{ui.md_escape(spec.description)}")
    try:
        from mechscope.saes.store import shipped_names

        names = shipped_names()
    except Exception as exc:  # SAE support is optional
        st.caption(f"SAEs unavailable: {exc}")
        return
    st.markdown("**SAEs:** " + (", ".join(f"`{n}`" for n in names) if names else "none shipped"))


def _recent() -> None:
    st.subheader("Recent saved results")
    rows = ui.recent_results()
    st.caption(f"Saved from any page's “Save / share” box into `{ui.results_dir()}` "
               "(set `MECHSCOPE_RESULTS` to change it); a link opens a result.")
    if not rows:
        st.caption("None yet.")
        return
    for path, kind, when in rows:
        st.markdown(f"- [{ui.md_escape(path.name)}](?result={path}) — {kind}, {when:%Y-%m-%d %H:%M}")


def _runs() -> None:
    st.subheader("Recent runs")
    st.caption(f"Analyses estimated over {ui.BACKGROUND_AFTER_S:.0f} s run in the background, kept in `{ui.runs_dir()}`; "
               "a link opens a run in its page (progress while it runs, its result when done).")
    if not ui.recent_background_runs(1):
        st.caption("None yet.")
        return
    ui.runs_list(10, key="front_runs")
    st.page_link("pages/75_runs.py", label="All runs", icon=":material/list:")


def render() -> None:
    if ui.open_saved_result():
        return
    st.title("mechscope")
    st.markdown("A workbench for looking inside language models: one model loaded once, every analysis behind a "
                "form whose defaults follow its paper, and every result saveable and re-runnable.")
    st.subheader("Two-minute tour")
    st.caption("One click per family: its page opens with a quick default.")
    cols = st.columns(3)
    for n, fam in enumerate(FAMILIES):
        with cols[n % 3]:
            if st.button(fam.name, key=f"tour_{fam.page}", use_container_width=True):
                _go(fam)
            st.caption(fam.tour)
    st.subheader("Families")
    for fam in FAMILIES:
        st.markdown(f"**{fam.name}** — {fam.does}  \n*Follows:* {fam.follows}")
    left, right = st.columns(2)
    with left:
        _shipped()
    with right:
        _recent()
        _runs()
