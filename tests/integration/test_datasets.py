"""probes.datasets: every shipped file loads and verifies; tampering and bad names fail cleanly."""

import pytest

from mechscope.probes import datasets


@pytest.mark.integration
def test_token_lengths_under_real_tokenizer(smollm2):
    tok = smollm2.model.tokenizer
    for name in ("prose", "code", "numbers"):
        lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in datasets.load_texts(name)]
        assert min(lengths) >= 64, (name, min(lengths))
        assert max(lengths) <= 400, (name, max(lengths))
    n_long = len(tok(datasets.load_long_text(), add_special_tokens=False)["input_ids"])
    assert n_long >= 8 * 2048
    for it in datasets.load_task("act_calibration"):  # every choice is a clean continuation
        p = tok(it["prompt"], add_special_tokens=False)["input_ids"]
        for c in it["choices"]:
            assert tok(it["prompt"] + c, add_special_tokens=False)["input_ids"] == p + tok(c, add_special_tokens=False)["input_ids"]

