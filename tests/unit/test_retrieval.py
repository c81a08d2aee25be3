"""Retrieval score (answer-part span, 1/|answer span| per copy, success by ROUGE-1 recall of
the answer part with the Porter stemmer), its fast (reducer) formulation, the needles, the
prompt format, masking curves' guards, NIAH params."""

import numpy as np
import pytest
import torch

from mechscope.analyses.niah import (
    GridParams,
    Needle,
    NiahAnswer,
    NiahTest,
    answer_offset,
    load_needles,
    prompt_pieces,
    rouge1_recall,
    rouge_tokens,
)
from mechscope.analyses.niah import tests_frame as frame_of_tests
from mechscope.analyses.retrieval import MaskingParams, copy_scores, reference_scores, retrieval_masking, scan, score_test
from mechscope.probes.decoding import generate
from mechscope.probes.errors import InputError
from mechscope.probes.interventions import HeadMask
from tests.tiny import copy_model

# prompt for the copy model (offset 10): P = 15, so step t re-emits prompt[4 + t]
PROMPT = (3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9)


def _test(prompt=PROMPT, start=4, end=9, answer=None) -> NiahTest:
    """Needle span [start, end); answer span ``answer`` (default: the whole needle)."""
    a, b = answer if answer is not None else (start, end)
    return NiahTest(0, len(prompt), 0.5, start, start, end, len(prompt), "plain", tuple(prompt), a, b)


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


@pytest.mark.parametrize("path", ["score_test", "scan", "reference_scores"])
def test_copies_from_the_lead_in_do_not_score_copies_from_the_answer_score_one_over_its_span(path):
    """Copy model: step t emits prompt[4 + t] with head 0's top-1 on position 4 + t. The needle
    is positions [4, 9); its answer part [6, 9) (the lead-in [4, 6) restates the question).
    Copies of the lead-in earn nothing; each copy from the answer part earns 1/3 (hand counts)."""
    m = copy_model()
    needle = Needle("", "", " ".join(map(str, PROMPT[6:9])))
    t = _test(start=4, end=9, answer=(6, 9))

    def run(n):
        if path == "scan":
            ((_, a, sc),) = scan(m, [(t, needle)], max_new_tokens=n, batch_size=1)
            return a, sc
        return (score_test if path == "score_test" else reference_scores)(m, t, needle, max_new_tokens=n)

    for n, copy_head in ((2, 0.0), (4, 2 / 3), (5, 1.0)):  # positions 4–5 | 4–7 | 4–8 copied
        ans, score = run(n)
        assert ans.new_tokens == PROMPT[4:4 + n]
        np.testing.assert_allclose(score, np.array([[copy_head, 0.0]]), rtol=1e-12, atol=1e-15)  # float64 counts / 3


def test_a_test_without_an_answer_span_cannot_be_scored():
    m = copy_model()
    bare = NiahTest(0, 15, 0.5, 4, 4, 9, 15, "plain", PROMPT)
    nd = Needle("", "", "5")
    with pytest.raises(InputError, match="answer span"):
        score_test(m, bare, nd, max_new_tokens=2)
    with pytest.raises(InputError, match="answer span"):
        next(scan(m, [(bare, nd)], max_new_tokens=2))
    with pytest.raises(InputError, match="answer span"):
        _test(answer=(3, 6)).answer_span  # starts before the needle


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


def test_a_response_that_restates_the_question_is_not_a_success():
    """Success is ROUGE-1 recall of the answer part, not of the whole needle: restating the
    lead-in with a wrong answer fails; the answer part, even inflected, succeeds."""
    nd = Needle("The password for the old lighthouse on Kestrel Island is blue pelican seventeen.",
                "What is the password for the old lighthouse on Kestrel Island?", "blue pelican seventeen")
    wrong = "The password for the old lighthouse on Kestrel Island is SILOA'S BROW."
    right = "The password for the old lighthouse on Kestrel Island is blue pelicans seventeen."
    answers = [NiahAnswer.of(nd, r, (1,)) for r in (wrong, right, "Blue pelicans, I think.")]
    assert [a.recall for a in answers] == [0.0, 1.0, pytest.approx(2 / 3)]  # "pelicans" → "pelican" (Porter)
    t = _test(answer=(6, 9))
    assert frame_of_tests([t] * 3, answers, 0.5)["correct"].tolist() == [False, True, True]
    assert rouge1_recall(nd.needle, wrong) > 0.5  # the whole needle's recall would have counted it


def test_shipped_needles_have_answer_parts_that_share_no_word_with_their_questions():
    needles = load_needles()
    assert len(needles) >= 3
    for nd in needles:
        at = answer_offset(nd)
        lead = nd.needle[:at]
        assert at > 0 and lead.strip()  # a lead-in that restates the question, then the answer part
        assert rouge1_recall(nd.answer, nd.question) == 0.0  # no (stemmed) word of the answer is in the question
        assert rouge1_recall(nd.answer, lead) == 0.0  # restating the lead-in recalls nothing
        assert rouge1_recall(nd.answer, nd.needle) == 1.0


def test_answer_part_must_end_its_needle(tmp_path, monkeypatch):
    assert answer_offset(Needle("It is blue pelican seventeen.", "q", "blue pelican seventeen")) == 6
    for bad, msg in ((Needle("It is blue.", "q", "red"), "not a substring"),
                     (Needle("It is blue today.", "q", "blue"), "does not end"),
                     (Needle("It is blue.", "q", " "), "empty")):
        with pytest.raises(InputError, match=msg):
            answer_offset(bad)
    import hashlib
    import json

    (tmp_path / "tasks").mkdir()
    rows = [{"needle": "The key is under the mat.", "question": "Where is the key?", "answer": "under a mat"}]
    raw = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "tasks" / "needles.jsonl").write_bytes(raw)
    (tmp_path / "checksums.json").write_text(json.dumps({"tasks/needles.jsonl": hashlib.sha256(raw).hexdigest()}))
    monkeypatch.setenv("MECHSCOPE_DATA", str(tmp_path))
    with pytest.raises(InputError, match="not a substring"):
        load_needles()


class _CharTokenizer:
    """Characters as tokens, except that "e." is one token (a merge across the answer's end)."""

    def __call__(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            if text.startswith("e.", i):
                ids.append(1000)
                i += 2
            else:
                ids.append(ord(text[i]))
                i += 1
        return {"input_ids": ids}

    def decode(self, ids):
        return "".join("e." if i == 1000 else chr(i) for i in ids)


def test_needle_pieces_keep_the_answer_span_exact_across_a_merge():
    """The whole needle would end in the merged token "e."; the pieces keep " blue" and "."
    apart, read the same text, and the answer span holds exactly " blue"."""
    from types import SimpleNamespace

    from mechscope.analyses.niah import needle_pieces

    model = SimpleNamespace(tokenizer=_CharTokenizer())
    lead, ans, rest = needle_pieces(model, Needle("It is blue.", "What is it?", "blue"))
    assert model.tokenizer("It is blue.")["input_ids"][-1] == 1000  # merged when read whole
    assert [model.tokenizer.decode(p) for p in (lead, ans, rest)] == ["It is", " blue", "."]
    bad = SimpleNamespace(tokenizer=_CharTokenizer())
    bad.tokenizer.decode = lambda ids: "".join(chr(i) for i in ids if i != 1000)  # loses the merged token's text
    with pytest.raises(InputError, match="does not read the same"):
        needle_pieces(bad, Needle("It is blue.", "What is it?", "blue"))


def test_rouge1_recall_hand_counts():
    assert rouge1_recall("The cat sat on the mat.", "the cat") == pytest.approx(2 / 6)  # "the": 2 in ref, 1 in hyp → 1
    assert rouge1_recall("The cat sat on the mat.", "On the mat the cat sat!") == 1.0
    assert rouge1_recall("Blue pelican seventeen", "blue, PELICAN 17") == pytest.approx(2 / 3)
    assert rouge1_recall("", "x") == 0.0


def test_rouge_uses_the_porter_stemmer_on_words_longer_than_three_letters():
    """rouge_score with use_stemmer=True (the reference): Porter stems, words of ≤ 3 letters kept."""
    assert rouge_tokens("Taking walks in the parks.") == ["take", "walk", "in", "the", "park"]
    assert rouge_tokens("The cats was running") == ["the", "cat", "was", "run"]  # Porter alone gives "wa"
    assert rouge1_recall("take a walk in the park", "Taking walks in parks") == pytest.approx(4 / 6)
    assert rouge1_recall("take a walk in the park", "Taking walks in parks", stem=False) == pytest.approx(1 / 6)


def test_plain_prompt_is_the_references_and_the_newline_variant_has_its_own_name(tiny):
    q = "Where is the key?"
    ref = "Based on the content of the book, Question: Where is the key?\nAnswer:"
    assert prompt_pieces(tiny, q, "plain") == ("", ref)  # no newline between the context and "Based on"
    assert prompt_pieces(tiny, q, "plain_newline") == ("", "\n" + ref)
    assert GridParams(prompt_format="plain_newline").prompt_format == "plain_newline"


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
    from mechscope.probes.decore import DeCoRe

    prompt = [int(x) for x in torch.randint(0, 50, (12,), generator=torch.Generator().manual_seed(5))]
    heads = ((0, 1), (1, 2), (1, 3))
    greedy = generate(tiny64, prompt, max_new_tokens=8, stop_at_eos=False).new_tokens
    assert generate(tiny64, prompt, max_new_tokens=8, strategy=DeCoRe(heads, alpha=0.0), stop_at_eos=False).new_tokens == greedy
    assert generate(tiny64, prompt, max_new_tokens=8, strategy=DeCoRe(heads, alpha=0.5), stop_at_eos=False).new_tokens != greedy


def test_decore_round_trips_and_refuses_bad_input():
    from mechscope.probes.decoding import STRATEGIES
    from mechscope.probes.decore import DeCoRe

    s = DeCoRe(((3, 1), (5, 2)), alpha=0.5)
    assert STRATEGIES.from_dict(s.to_dict()) == s
    with pytest.raises(InputError):
        DeCoRe(())
    with pytest.raises(InputError):
        DeCoRe(((0, 0),), alpha=-1.0)
