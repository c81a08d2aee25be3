"""Every registered analysis, run through the CLI's save path on the embedded model with
small parameters, re-runs from its saved folder to an equal table. A new analysis
without a case here fails ``test_every_analysis_has_a_case``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.integration

TEXTS = ("The old house stood at the end of the lane, its windows dark and its garden overgrown. " * 3,
         "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n" * 3,
         "1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181" * 2)


def _cases():
    from mechscope.analyses.act import ACTParams
    from mechscope.analyses.circuits import CircuitCompareParams, CircuitDiscoverParams, CircuitPatchParams
    from mechscope.analyses.circuits.edges import EdgeCircuitParams
    from mechscope.analyses.contextualisation import ContextParams
    from mechscope.analyses.isotropy import DecodingIsotropyParams, IsotropyParams, WhiteningParams
    from mechscope.analyses.logit_lens import LogitLensParams
    from mechscope.analyses.microscope import MicroscopeParams
    from mechscope.analyses.neurons import ActivityParams, ClampParams, DecodeParams, MaxActParams, SearchParams
    from mechscope.analyses.next_token import AttentionPatternParams, NextTokenParams
    from mechscope.analyses.playground import PlaygroundParams
    from mechscope.analyses.sinks import SinkParams
    from mechscope.analyses.streaming import StreamingParams
    from mechscope.probes.decoding import Sample
    from mechscope.probes.interventions import HeadMask, NeuronClamp
    from mechscope.saes.absorption import AbsorptionParams
    from mechscope.saes.evals import SaeEvalParams
    from mechscope.saes.features import SaeFeaturesParams
    from mechscope.saes.geometry import SaeGeometryParams
    from mechscope.saes.steering import SteerVerifyParams

    return {
        "next_token": NextTokenParams(prompt="The capital of France is", k=5, interventions=(HeadMask(3, 2),)),
        "attention_pattern": AttentionPatternParams(prompt="The capital of France is", layer=5, head=1),
        "playground": PlaygroundParams(prompt="Once upon a time", max_new_tokens=4, strategy=Sample(seed=3),
                                       interventions=(NeuronClamp(20, 100, value=40.0),)),
        "sinks": SinkParams(texts=TEXTS, max_tokens=24, variants=("no_bos", "bos"), min_queries=4),
        "streaming_ppl": StreamingParams(n_tokens=48, n_sink=2, window=14, recompute_every=4),
        "act": ACTParams(heads=((10, 2),), max_items=12, n_boot=200),
        "logit_lens": LogitLensParams(prompt="The capital of France is", target=" Paris", k=3),
        "contextualisation": ContextParams(texts=TEXTS * 2, prefix=2, steps=3, max_train=32, max_eval=16, batch_size=16),
        "microscope": MicroscopeParams(texts=TEXTS * 6, total_tokens=640, id_points=300),
        "neuron_decode": DecodeParams(k=3, method="paper", layers=(29,)),
        "neuron_search": SearchParams(token=" dog", top=5),
        "max_activating": MaxActParams(layer=29, neuron=808, texts=TEXTS, k=3),
        "neuron_activity": ActivityParams(texts=TEXTS, layers=(0, 29), max_types=64),
        "clamp_verification": ClampParams(neurons=((29, 808),), prompts=("The", "I think that"), value=40.0,
                                          n_controls=2, method="write"),
        "sae_eval": SaeEvalParams(saes=("smollm2-135m/resid-L12",), n_texts=2, max_tokens=48, text_set="mixed"),
        "sae_features": SaeFeaturesParams(sae="smollm2-135m/resid-L12", n_texts=3, k=2, max_tokens=32),
        "sae_steer_verify": SteerVerifyParams(sae="smollm2-135m/resid-L12", n=2),
        "sae_absorption": AbsorptionParams(saes=("smollm2-135m/resid-L12",), n_words=60, max_k=2),
        "sae_geometry": SaeGeometryParams(saes=("smollm2-135m/resid-L0", "smollm2-135m/resid-L12")),
        "circuit_patch": CircuitPatchParams(task="induction", n_prompts=1, directions=("noising",)),
        "circuit_discover": CircuitDiscoverParams(task="ioi", n_prompts=3, n_latents=16, epochs=30),
        "circuit_edges": EdgeCircuitParams(task="ioi", n_prompts=2, n_eval=2, methods=("eap", "random"), n_random=1,
                                           percentages=(1.0, 100.0), n_boot=20, n_boot_jaccard=2),
        "circuit_compare": CircuitCompareParams(task="induction", n_prompts=1, ig_steps=2, n_latents=16, epochs=20, edge_top_n=5,
                                                sizes=(3,)),
        "isotropy": IsotropyParams(texts=TEXTS, max_tokens=24, n_sample=40, n_pairs=200, weights=False),
        "whitening": WhiteningParams(depth=6, n_texts=3, max_tokens=16, n_sample=20, n_pairs=100),
        "decoding_isotropy": DecodingIsotropyParams(n_texts=1, max_tokens=8, max_new_tokens=6),
        **_retrieval_cases(),
    }


def _retrieval_cases():
    from mechscope.analyses.duo_attention import DuoParams
    from mechscope.analyses.kv_curve import KVCurveParams
    from mechscope.analyses.niah import NiahParams
    from mechscope.analyses.retrieval import MaskingParams, RetrievalParams
    from mechscope.probes.interventions import HeadMask
    from mechscope.probes.razor import RazorAttention

    grid = dict(lengths=(120,), depths=(0.5,), needles=(1,), max_new_tokens=6)
    return {
        "niah": NiahParams(**grid, interventions=(HeadMask(5, 1),)),
        "niah_razor": NiahParams(**grid, kv_policy=RazorAttention(((17, 1),), n_sink=4, window=16)),
        "retrieval_heads": RetrievalParams(**grid, proxy_seqs=2),
        "retrieval_masking": MaskingParams(**grid, ks=(0, 1), seeds=1, heads=((5, 1),)),
        "kv_curve": KVCurveParams(**grid, kv_heads=(2,), window=16, heads=((17, 1), (18, 2), (23, 0))),
        "duo_gates": DuoParams(steps=1, min_length=100, max_length=100, n_passkeys=1, passkey_words=3, n_sink=4,
                               window=16, retrieval_heads=((17, 3),)),
    }


# Re-run from their saved folders by test_analysis_sequence, which runs them twice on one model
# anyway; here their saved result is only loaded back.
RERUN_IN_SEQUENCE = {"circuit_compare", "duo_gates"}


def test_every_analysis_has_a_case():
    from mechscope.analyses.catalog import analyses

    assert set(analyses()) == {type(p).kind for p in _cases().values()}


@pytest.mark.parametrize("kind", sorted(_cases()))
def test_saved_result_reruns_to_equal_table(kind, smollm2, tmp_path):
    from mechscope.analyses.catalog import load_result
    from mechscope.probes.results import ANALYSES

    model = smollm2.model
    params = _cases()[kind]
    first = ANALYSES[type(params).kind](model, params)
    first.save(tmp_path / kind, html=True)
    loaded = load_result(tmp_path / kind)
    assert type(loaded) is type(first) and loaded.params == params
    again = loaded if kind in RERUN_IN_SEQUENCE else loaded.rerun(model)
    a, b = first.to_frame(), again.to_frame()
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for col in a.columns:
        if pd.api.types.is_float_dtype(a[col]):
            np.testing.assert_allclose(b[col].to_numpy(float), a[col].to_numpy(float), rtol=1e-5, atol=1e-7,
                                       equal_nan=True, err_msg=col)
        else:
            assert a[col].tolist() == b[col].tolist(), col
    for f in (tmp_path / kind).iterdir():  # nothing saved names a network resource
        if f.suffix in (".safetensors", ".parquet"):  # binary: a byte run may spell anything
            continue
        text = f.read_text("utf-8")
        assert "https://" not in text and "cdn" not in text, f.name
