"""Retrieval score, its fast (reducer) formulation, masking curves' guards, NIAH params."""

import numpy as np
import pytest
import torch

from analyses.niah import GridParams, Needle, NiahTest, key_recall, load_needles, rouge1_recall
from analyses.retrieval import MaskingParams, Top1, copy_scores, reference_scores, retrieval_masking, score_test
from probes.capture import run as capture_run
from probes.decoding import generate
from probes.errors import InputError
from probes.interventions import HeadMask
from tests.tiny import copy_model

# prompt for the copy model (offset 10): P = 15, so step t re-emits prompt[4 + t]
PROMPT = (3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9)


def _test(prompt=PROMPT, start=4, end=9) -> NiahTest:
    return NiahTest(0, len(prompt), 0.5, start, start, end, len(prompt), "plain", tuple(prompt))


def test_copy_scores_hand_built():
    # 2 steps, 2 layers, 2 heads; needle span [2, 5) of prompt (10, 11, 12, 13, 14, 15)
    prompt = [10, 11, 12, 13, 14, 15]
    emitted = [12, 13]
    top1 = torch.tensor([
        [[2, 3], [0, 2]],  # step 0 emits 12 (at position 2): L0H0 hit; L0H1 in span, wrong token; L1H0 outside; L1H1 hit
        [[3, 3], [5, 6]],  # step 1 emits 13 (position 3): L0H0, L0H1 hit; L1H0 token 15 outside span; L1H1 beyond prompt
    ])
    got = copy_scores(top1, emitted, prompt, 2, 5)
    expected = np.array([[2 / 3, 1 / 3], [0.0, 1 / 3]])
    np.testing.assert_allclose(got, expected, rtol=1e-12)  # float64 counts / |needle|


def test_copy_scores_checks_shapes():
    with pytest.raises(InputError):
        copy_scores(torch.zeros(2, 1, 1, dtype=torch.long), [1], [1, 2, 3], 0, 2)
    with pytest.raises(InputError):
        copy_scores(torch.zeros(1, 1, 1, dtype=torch.long), [1], [1, 2, 3], 2, 2)


def test_wired_copy_head_scores_one_and_the_other_zero():
    m = copy_model()
    needle = Needle("", "", " ".join(map(str, PROMPT[4:9])))
    ans, score = score_test(m, _test(), needle, max_new_tokens=5)
    assert ans.new_tokens == PROMPT[4:9]
    assert ans.recall == 1.0
    np.testing.assert_array_equal(score, np.array([[1.0, 0.0]]))
    # only 3 of the 5 needle tokens get copied when the answer stops after 3 steps
    _, score3 = score_test(m, _test(), needle, max_new_tokens=3)
    np.testing.assert_allclose(score3, np.array([[3 / 5, 0.0]]), rtol=1e-12, atol=1e-15)  # float64, values in [0, 1]


def test_fast_formulation_equals_materialising_loop_on_copy_model():
    m = copy_model()
    needle = Needle("", "", " ".join(map(str, PROMPT[4:9])))
    for start, end in ((4, 9), (5, 7), (0, 15)):
        fast_ans, fast = score_test(m, _test(start=start, end=end), needle, max_new_tokens=6)
        ref_ans, ref = reference_scores(m, _test(start=start, end=end), needle, max_new_tokens=6)
        assert fast_ans.new_tokens == ref_ans.new_tokens
        np.testing.assert_array_equal(fast, ref)


def test_top1_reducer_matches_full_patterns_on_random_model(tiny64):
    """The cached per-step top-1 equals the argmax of the last row of the full pattern of the
    whole text at that step (computed independently with capture)."""
    prompt = [int(x) for x in torch.randint(0, 50, (20,), generator=torch.Generator().manual_seed(3))]
    top = Top1(tiny64.cfg.n_layers, tiny64.cfg.n_heads)
    gen = generate(tiny64, prompt, max_new_tokens=6, reducers=top.reducers(tiny64), stop_at_eos=False)
    got = top.stacked(len(gen.new_tokens))
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(tiny64.cfg.n_layers)]
    for t in range(len(gen.new_tokens)):
        ids = prompt + list(gen.new_tokens[:t])
        cap = capture_run(tiny64, [ids], capture=names)
        want = torch.stack([cap.activations[n][0][:, -1].argmax(-1) for n in names])
        assert torch.equal(got[t], want)  # integer key positions
    assert len({tuple(r.reshape(-1).tolist()) for r in got}) > 1  # the top-1 positions move


def test_uniform_head_mask_under_kv_cache_is_uniform_over_visible_keys(tiny):
    """HeadMask(mode="uniform") during cached decoding: each step's row of the masked head
    is 1/K over its K visible keys (prompt + answer so far + itself); other heads are not."""
    rows = []

    def grab(pattern, site, batch):
        rows.append(pattern[0, :, -1].detach().clone())

    prompt = list(range(1, 13))
    generate(tiny, prompt, max_new_tokens=4, interventions=[HeadMask(1, 2)], reducers={"blocks.1.attn.hook_pattern": grab},
             stop_at_eos=False)
    for step, row in enumerate(rows):
        k = len(prompt) + step
        torch.testing.assert_close(row[2, :k], torch.full((k,), 1.0 / k), rtol=1e-5, atol=1e-7)  # float32 softmax of equal scores
        assert not torch.allclose(row[0, :k], torch.full((k,), 1.0 / k), atol=1e-3)


def test_key_recall_ignores_words_the_question_gives_away():
    nd = Needle("The password for the lighthouse is blue pelican seventeen.", "What is the password for the lighthouse?",
                "The password for the lighthouse is blue pelican seventeen.")
    restated = "The password for the lighthouse is a secret."
    assert rouge1_recall(nd.answer, restated) == pytest.approx(6 / 9)  # passes the 0.5 bar with no key word
    assert key_recall(nd, restated) == 0.0  # key words: blue, pelican, seventeen (both "the" are in the question)
    assert key_recall(nd, "Blue pelican, I think.") == pytest.approx(2 / 3)
    assert key_recall(nd, "blue pelican seventeen") == 1.0
    with pytest.raises(InputError, match="no word beyond"):
        key_recall(Needle("x", "Is the sky blue?", "the sky is blue"), "yes")


def test_key_recall_of_the_shipped_needles_rejects_a_restated_question():
    plain = []
    for nd in load_needles():
        restated = nd.question.replace("What is", "").replace("Where does", "").rstrip("?") + " is"
        plain.append(rouge1_recall(nd.answer, restated))
        assert key_recall(nd, restated) < 0.5  # below the accuracy bar
        assert key_recall(nd, nd.answer) == 1.0
    assert max(plain) > 0.5  # while plain ROUGE-1 recall would call some of these correct


def test_rouge1_recall_hand_counts():
    assert rouge1_recall("The cat sat on the mat.", "the cat") == pytest.approx(2 / 6)  # "the": 2 in ref, 1 in hyp → 1
    assert rouge1_recall("The cat sat on the mat.", "On the mat the cat sat!") == 1.0
    assert rouge1_recall("Blue pelican seventeen", "blue, PELICAN 17") == pytest.approx(2 / 3)
    assert rouge1_recall("", "x") == 0.0


def test_grid_params_refuse_bad_values():
    with pytest.raises(InputError, match="outside"):
        GridParams(depths=(0.5, 1.5))
    with pytest.raises(InputError, match="outside"):
        GridParams(depths=(-0.1,))
    with pytest.raises(InputError):
        GridParams(lengths=())
    with pytest.raises(InputError):
        GridParams(prompt_format="xml")


def test_masking_refuses_k_larger_than_the_heads(tiny):
    with pytest.raises(InputError, match="larger than the number of heads"):
        retrieval_masking(tiny, MaskingParams(ks=(0, 9), heads=((0, 0),)))
    with pytest.raises(InputError):
        MaskingParams(ks=(-1,))


def test_decore_alpha_zero_is_greedy(tiny64):
    """α = 0 is greedy (the contrast against a hand computation is in test_mask_scope.py)."""
    from probes.decore import DeCoRe

    prompt = [int(x) for x in torch.randint(0, 50, (12,), generator=torch.Generator().manual_seed(5))]
    heads = ((0, 1), (1, 2), (1, 3))
    greedy = generate(tiny64, prompt, max_new_tokens=8, stop_at_eos=False).new_tokens
    assert generate(tiny64, prompt, max_new_tokens=8, strategy=DeCoRe(heads, alpha=0.0), stop_at_eos=False).new_tokens == greedy
    assert generate(tiny64, prompt, max_new_tokens=8, strategy=DeCoRe(heads, alpha=0.5), stop_at_eos=False).new_tokens != greedy


def test_decore_round_trips_and_refuses_bad_input():
    from probes.decoding import STRATEGIES
    from probes.decore import DeCoRe

    s = DeCoRe(((3, 1), (5, 2)), alpha=0.5)
    assert STRATEGIES.from_dict(s.to_dict()) == s
    with pytest.raises(InputError):
        DeCoRe(())
    with pytest.raises(InputError):
        DeCoRe(((0, 0),), alpha=-1.0)
