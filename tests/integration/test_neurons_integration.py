"""Neuron decoding, search and clamping on the embedded model (SmolLM2-135M)."""

import pytest
import torch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def decoded(smollm2):
    from mechscope.analyses.neurons import decode_neurons

    return decode_neurons(smollm2.model)  # the Neurons page's decoding: one computation, cached on disk


def test_decode_all_neurons_shapes(smollm2, decoded):
    cfg = smollm2.model.cfg
    k = decoded.params.k
    assert decoded.top_ids.shape == (cfg.n_layers, cfg.d_mlp, k) == decoded.bottom_ids.shape
    assert int(decoded.top_ids.min()) >= 0 and int(decoded.top_ids.max()) < cfg.d_vocab
    assert (decoded.top_logits[..., :-1] >= decoded.top_logits[..., 1:]).all()
    assert (decoded.bottom_logits[..., :-1] <= decoded.bottom_logits[..., 1:]).all()
    assert (decoded.top_logits[..., -1] > decoded.bottom_logits[..., -1]).all()
    # spot check one neuron against the full product
    from mechscope.analyses.neurons import neuron_directions, unembedding

    full = neuron_directions(smollm2.model, 17)[123] @ unembedding(smollm2.model)
    assert torch.equal(decoded.top_ids[17, 123].long(), torch.topk(full, k).indices)


def _doglike(s: str) -> bool:
    return s.strip().lower() in {"dog", "dogs"}


def test_search_dog_finds_a_dog_neuron(smollm2, decoded):
    from mechscope.analyses.neurons import neurons_for_token

    hits = neurons_for_token(smollm2.model, " dog", top=5).table
    layer, neuron = int(hits.loc[0, "layer"]), int(hits.loc[0, "neuron"])
    card = decoded.card(layer, neuron)
    assert sum(_doglike(t) for t in card["top_token"]) >= 3  # a dog neuron exists: verified, not assumed
    # the offline search over the stored top-k finds neurons that carry the token
    tid = int(decoded.top_ids[layer, neuron, 0])
    off = decoded.search(tid, top=1000)
    assert (layer, neuron) in set(zip(off["layer"], off["neuron"]))
    assert all(decoded.token(tid) in row.split(" | ") for row in off["top_tokens"])


def test_clamping_the_dog_neuron_raises_its_token(smollm2):
    from mechscope.analyses.neurons import clamp_verification, neurons_for_token

    hits = neurons_for_token(smollm2.model, " dog", top=1).table
    pair = (int(hits.loc[0, "layer"]), int(hits.loc[0, "neuron"]))
    res = clamp_verification(smollm2.model, neurons=[pair], prompts=["I think that", "Here is a short story:", "The"],
                             method="write", n_controls=3, value=100.0)
    row = res.table.iloc[0]
    assert _doglike(row["top_token"])
    # above the stated minimum, and far above what clamping random neurons of that layer does
    assert row["delta_p"] > res.params.min_delta_p and res.fraction_up == 1.0  # mean over the 3 prompts
    assert row["delta_p"] > 100 * max(row["control_delta_p"], 1e-9)


def test_bad_input_on_real_model(smollm2):
    from mechscope.analyses.neurons import neuron_activity, neurons_for_token
    from mechscope.probes.errors import InputError

    with pytest.raises(InputError, match="neuron"):
        from mechscope.analyses.neurons import max_activating

        max_activating(smollm2.model, 0, smollm2.model.cfg.d_mlp, texts=["hello"])
    with pytest.raises(InputError):
        neurons_for_token(smollm2.model, "")
    with pytest.raises(InputError, match="empty"):
        neuron_activity(smollm2.model, texts=["   "])
