"""The Playground with a decoding strategy as the intervened side (greedy baseline)."""

import json

import numpy as np
import torch

from mechscope.analyses.playground import PlaygroundParams, compare_generations
from mechscope.probes.cad import CAD
from mechscope.probes.decoding import generate
from mechscope.probes.dola import DoLa
from mechscope.probes.results import Result

PROMPT = [7, 3, 11, 3, 19, 2]
CONTEXT = (21, 9, 33, 2, 40)


def test_cad_against_greedy_baseline(tiny64):
    a = 0.5
    r = compare_generations(tiny64, PROMPT, [], max_new_tokens=6, strategy=CAD(context=CONTEXT, alpha=a),
                            strategy_side="intervened")
    base = list(generate(tiny64, list(CONTEXT) + PROMPT, 6).new_tokens)  # greedy on (c, x)
    assert list(r.baseline_ids) == base
    assert list(r.intervened_ids) == list(generate(tiny64, PROMPT, 6, CAD(context=CONTEXT, alpha=a)).new_tokens)
    # p_intervened: the CAD distribution softmax((1 + α) z(c, x) − α z(x)) at each baseline token, by hand
    want, got_base = [], []
    with torch.no_grad():
        for t, tok in enumerate(base):
            zc = tiny64(torch.tensor([list(CONTEXT) + PROMPT + base[:t]]))[0, -1]
            zx = tiny64(torch.tensor([PROMPT + base[:t]]))[0, -1]
            want.append(float(((1 + a) * zc - a * zx).softmax(-1)[tok]))
            got_base.append(float(zc.softmax(-1)[tok]))
    # generate hands strategies float32 step logits (|z| < 30 here): probabilities agree to ~1e-6
    np.testing.assert_allclose(r.p_intervened, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r.p_base, got_base, rtol=1e-5, atol=1e-7)
    assert np.abs(r.delta_p).max() > 1e-3


def test_dola_side_and_old_results_load(tiny, tmp_path):
    r = compare_generations(tiny, PROMPT, [], max_new_tokens=5, strategy=DoLa(layers=(1,)), strategy_side="intervened")
    assert list(r.baseline_ids) == list(generate(tiny, PROMPT, 5).new_tokens)
    assert list(r.intervened_ids) == list(generate(tiny, PROMPT, 5, DoLa(layers=(1,))).new_tokens)
    assert np.abs(r.delta_p).max() > 1e-3
    # the old behaviour is the default: both sides decode with the strategy
    both = compare_generations(tiny, PROMPT, [], max_new_tokens=5, strategy=DoLa(layers=(1,)))
    assert np.array_equal(both.baseline_ids, both.intervened_ids)
    # a result saved before the option existed (no strategy_side in its params) still loads
    both.save(tmp_path / "pg")
    path = tmp_path / "pg" / "result.json"
    data = json.loads(path.read_text())
    params = data["fields"]["params"]["$object"]
    assert params.pop("strategy_side") == "both"
    path.write_text(json.dumps(data))
    back = Result.load(tmp_path / "pg")
    assert back.params.strategy_side == "both" and back.params.strategy == DoLa(layers=(1,))
    assert isinstance(back.params, PlaygroundParams)
