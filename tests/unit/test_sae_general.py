"""The general SAE corpus (dedupe, held-out split, proportions, packing), the shipped per-domain
eval sets and their loader, the eval over domains, weight casting, the training architectures
and the crystal search (Li et al. 2024, section 3) on planted and shuffled clouds."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from mechscope.data import sae_corpus as C
from mechscope.probes.errors import ChecksumError, InputError
from tests.tiny import tiny_model


class CharTok:
    """A tokenizer stand-in: one id per character (ord % 50, never 0 = EOT)."""

    def __call__(self, texts, add_special_tokens=False):  # noqa: ARG002
        return {"input_ids": [[1 + ord(c) % 49 for c in t] for t in texts]}


def _lines(tag: str, n: int) -> str:
    return "\n".join(f"{tag} line number {k} with enough characters to count" for k in range(n))


# ---------------------------------------------------------------------------------------
# dedupe and split


def test_deduper_exact_and_near_duplicates():
    dd = C.Deduper()
    a = _lines("alpha", 10)
    assert dd.seen(a) is None
    assert dd.seen("  " + a.replace("\n", "\n  ") + "\n") == "exact"  # whitespace differences only
    near = "\n".join(a.split("\n")[:6] + _lines("beta", 4).split("\n"))  # 6 of 10 long lines seen
    assert dd.seen(near) == "near"
    far = "\n".join(a.split("\n")[:4] + _lines("gamma", 6).split("\n"))  # 4 of 10: kept
    assert dd.seen(far) is None
    assert dd.check(_lines("GAMMA", 6).lower()) == "near"  # case is normalised; check does not add
    assert dd.seen("short\nlines\nonly") is None and dd.seen("short\nlines\nonly") == "exact"


def test_split_holds_out_by_rule_and_drops_training_copies_of_heldout_text():
    docs = [C.Doc(f"code:f{k}.py", _lines(f"code{k}", 8), "code", "code") for k in range(500)]
    held_ids = {d.doc_id for d in docs if C.is_heldout_in(d.doc_id, C.HELDOUT_MODS["code"])}
    assert held_ids  # the rule picks some of 200 ids
    victim = sorted(held_ids)[0]
    held_text = next(d.text for d in docs if d.doc_id == victim)
    docs.append(C.Doc("documentation:copy", held_text, "documentation", "documentation"))  # other domain, same text
    docs.append(C.Doc("documentation:docstrings", _lines("code7", 8), "documentation", None))  # repeats a train file
    train, held, dropped = C.split_docs(docs)
    assert {d.doc_id for d in held} == held_ids
    assert not {d.doc_id for d in train} & held_ids
    assert "documentation:copy" not in {d.doc_id for d in train} and dropped["heldout_overlap"] == 1
    # domains are deduplicated separately: docstrings repeating a code file stay
    assert "documentation:docstrings" in {d.doc_id for d in train}
    assert len(train) == 500 - len(held_ids) + 1


def test_generations_are_held_out_by_prompt():
    docs = [C.Doc(f"gen:chat:{p:04d}:{s}", f"prompt {p} sample {s} " * 3, "generations", "dialogue")
            for p in range(100) for s in range(3)]
    train, held, _ = C.split_docs(docs)
    held_prompts = {d.doc_id.rsplit(":", 1)[0] for d in held}
    assert held_prompts and not held_prompts & {d.doc_id.rsplit(":", 1)[0] for d in train}
    assert len(held) == 3 * len(held_prompts)


# ---------------------------------------------------------------------------------------
# proportions and packing


def test_take_proportions_exact_shares_of_the_largest_feasible_total():
    toks = {"a": [[1] * 30, [1] * 50], "b": [[2] * 1000], "c": [[3] * 7] * 100}
    props = {"a": 0.2, "b": 0.5, "c": 0.3}
    cut, total = C.take_proportions(toks, props)
    assert total == 400  # a has 80 tokens at a 0.2 share: min(80/0.2, 1000/0.5, 700/0.3)
    got = {d: sum(map(len, v)) for d, v in cut.items()}
    assert got == {"a": 80, "b": 200, "c": 120}
    cut, total = C.take_proportions(toks, {"a": 2, "b": 5, "c": 3}, total=100)  # unnormalised shares, a cap
    assert total == 100 and {d: sum(map(len, v)) for d, v in cut.items()} == {"a": 20, "b": 50, "c": 30}
    assert cut["a"] == [[1] * 20]  # documents in order, the last one cut
    with pytest.raises(ValueError, match="c"):
        C.take_proportions({"a": [[1]], "b": [[2]], "c": []}, props)


def test_take_proportions_filler_makes_up_a_small_domains_shortfall():
    toks = {"gen": [[9] * 500] * 4, "lit": [[1] * 30], "code": [[2] * 400]}
    props = {"gen": 0.3, "lit": 0.2, "code": 0.5}
    cut, total = C.take_proportions(toks, props, total=1000, filler="gen")
    got = {d: sum(map(len, v)) for d, v in cut.items()}
    # lit can give 30 of its 200, code all of its 400 of 500: gen takes 300 + 170 + 100 = 570
    assert got == {"gen": 570, "lit": 30, "code": 400} and total == 1000
    cut, total = C.take_proportions({**toks, "gen": [[9] * 100]}, props, total=1000, filler="gen")
    assert total == 530 and sum(map(len, cut["gen"])) == 100  # the filler runs short too: a smaller total
    with pytest.raises(ValueError, match="filler"):
        C.take_proportions(toks, {"lit": 1, "code": 1}, total=10, filler="gen")


def test_pack_rows_joins_documents_with_eot_and_names_their_sources():
    rows = C.pack_rows([("x", [1, 2, 3]), ("y", [4, 5, 6, 7, 8]), ("z", [9])], ctx=4)
    assert [r["tokens"] for r in rows] == [[1, 2, 3, 0], [4, 5, 6, 7], [8, 0, 9, 0]]
    assert [r["sources"] for r in rows] == [["x"], ["y"], ["y", "z"]]
    assert len(C.pack_rows([("x", list(range(1, 40)))], ctx=4, max_rows=3)) == 3


def test_build_general_proportions_split_and_eval_sets(tmp_path):
    docs = []
    for dom, ev in (("literature", "prose"), ("code", "code"), ("documentation", "documentation"),
                    ("tables", "numbers"), ("generations", "dialogue")):
        for k in range(120):
            did = f"gen:chat:{dom}{k}:0" if dom == "generations" else f"{dom}:{k}"
            docs.append(C.Doc(did, _lines(f"{dom} {k}", 3), dom, ev))
    props = {"generations": 0.3, "literature": 0.15, "documentation": 0.2, "code": 0.25, "tables": 0.1}
    m = C.build_general(None, None, tmp_path / "out", docs=docs, sources={}, tok=CharTok(), proportions=props,
                        ctx=64, eval_dir=tmp_path / "eval", eval_rows=5, eval_ctx=32, progress=lambda *_: None)
    t = m["total_tokens"]
    for dom, share in props.items():
        assert m["proportions"][dom] == pytest.approx(round(share * t) / t, abs=1e-6)
    train = np.fromfile(tmp_path / "out" / "train.u16", dtype=np.uint16).reshape(-1, 64)
    assert train.shape[0] == (t + sum(1 for _ in [])) // 64 or train.shape[0] >= t // 64 - 1
    assert m["files"]["train"]["sha256"] == hashlib.sha256((tmp_path / "out" / "train.u16").read_bytes()).hexdigest()
    ev = json.loads((tmp_path / "eval" / "manifest.json").read_text())["domains"]
    assert set(ev) == set(C.EVAL_DOMAINS)
    held_rule = {d.doc_id for d in docs if C.is_heldout_in(C._split_key(d), C.HELDOUT_MODS[d.domain])}
    for dom, info in ev.items():
        rows = [json.loads(l) for l in (tmp_path / "eval" / f"{dom}.jsonl").read_text().splitlines()]
        assert len(rows) == info["rows"] and all(len(r["tokens"]) == 32 for r in rows)
        assert set(info["documents"]) <= held_rule  # eval rows come from held-out documents only


# ---------------------------------------------------------------------------------------
# the shipped eval sets


def test_shipped_eval_sets_are_heldout_under_both_recipes_and_checksummed():
    from mechscope.saes.evals import domain_rows, eval_domains

    man = json.loads((C.EVAL_DIR / "manifest.json").read_text())["domains"]
    assert set(eval_domains()) == set(man) == set(C.EVAL_DOMAINS)
    dom_of = {"prose": "literature", "code": "code", "documentation": "documentation", "numbers": "tables",
              "dialogue": "generations"}
    for dom, info in man.items():
        for doc_id in info["documents"]:
            if doc_id.startswith("handwritten:"):  # the hand-written dialogues are never trained on
                assert dom == "dialogue" and C.HELDOUT_MODS["handwritten"] == 1
                continue
            key = doc_id.rsplit(":", 1)[0] if dom_of[dom] == "generations" else doc_id
            assert C.is_heldout_in(key, C.HELDOUT_MODS[dom_of[dom]])
            if dom in ("prose", "code"):  # documents the code_shakespeare corpus held out as well
                assert C.is_heldout(doc_id)
        rows = domain_rows(dom)
        assert rows.shape == (info["rows"], info["ctx"]) and rows.max() < 49152


def test_domain_rows_checks_the_checksum(tmp_path, monkeypatch):
    from mechscope.saes.evals import domain_rows

    (tmp_path / "sae_eval").mkdir()
    f = tmp_path / "sae_eval" / "code.jsonl"
    f.write_text(json.dumps({"domain": "code", "tokens": [1, 2, 3, 4], "sources": ["x"]}) + "\n")
    (tmp_path / "checksums.json").write_text(json.dumps({"sae_eval/code.jsonl": "0" * 64}))
    with pytest.raises(ChecksumError):
        domain_rows("code", data_dir=tmp_path)
    with pytest.raises(InputError, match="code"):
        domain_rows("prose", data_dir=tmp_path)


def _tiny_sae_dir(tmp_path):
    from sae_lens import TopKSAE, TopKSAEConfig

    from mechscope.saes import store

    torch.manual_seed(0)
    cfg = TopKSAEConfig(d_in=32, d_sae=48, k=4, dtype="float32", device="cpu")
    cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    sae = TopKSAE(cfg)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
    sae.save_model(str(tmp_path / "raw"))
    store.export_dir(tmp_path / "raw", tmp_path / "sae", dtype=torch.float32)
    return str(tmp_path / "sae")


def test_sae_eval_runs_every_domain_of_a_data_folder(tmp_path, monkeypatch):
    from mechscope.saes.evals import SaeEvalParams, evaluate, sae_eval
    from mechscope.saes.store import load_sae

    data = tmp_path / "data"
    (data / "sae_eval").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sums = {}
    for dom in ("code", "numbers"):
        f = data / "sae_eval" / f"{dom}.jsonl"
        f.write_text("".join(json.dumps({"domain": dom, "tokens": rng.integers(1, 50, 12).tolist(), "sources": []})
                             + "\n" for _ in range(5)))
        sums[f"sae_eval/{dom}.jsonl"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (data / "checksums.json").write_text(json.dumps(sums))
    monkeypatch.setenv("MECHSCOPE_DATA", str(data))
    model = tiny_model()
    sae_dir = _tiny_sae_dir(tmp_path)
    res = sae_eval(model, SaeEvalParams(saes=(sae_dir,), n_texts=4, batch_size=2))
    assert list(res.table["domain"]) == ["code", "numbers"]  # EVAL_DOMAINS order, only those present
    for dom in ("code", "numbers"):
        rows = [json.loads(l)["tokens"] for l in (data / "sae_eval" / f"{dom}.jsonl").read_text().splitlines()][:4]
        direct = evaluate(model, load_sae(sae_dir), np.asarray(rows), batch_size=4)
        got = res.table[res.table["domain"] == dom].iloc[0]
        assert got["explained_variance"] == pytest.approx(direct["explained_variance"], rel=1e-9)
        assert got["ce_recovered"] == pytest.approx(direct["ce_recovered"], rel=1e-9)
        assert got["l0"] == pytest.approx(4.0, rel=1e-12)
    half = sae_eval(model, SaeEvalParams(saes=(sae_dir,), n_texts=4, batch_size=2, weights_dtype="float16"))
    assert (half.table["explained_variance"] != res.table["explained_variance"]).any()
    with pytest.raises(InputError, match="weights_dtype"):
        SaeEvalParams(weights_dtype="int8")


def test_cast_weights_rounds_to_the_storage_dtype_and_back(tmp_path):
    from mechscope.saes.evals import cast_weights
    from mechscope.saes.store import load_sae

    sae = load_sae(_tiny_sae_dir(tmp_path))
    for dt in ("float16", "bfloat16"):
        c = cast_weights(sae, dt)
        assert c.W_dec.dtype == torch.float32
        assert torch.equal(c.W_dec, sae.W_dec.to(getattr(torch, dt)).float())
        assert not torch.equal(c.W_dec, sae.W_dec)  # float32 weights are not all representable
    assert cast_weights(sae, "float32") is sae


# ---------------------------------------------------------------------------------------
# training architectures


def test_matryoshka_config_and_equal_k_training():
    from mechscope.saes.train import ARCHITECTURES, TrainSpec, matryoshka_widths, train_on_activations, training_sae_config

    assert {"topk", "batchtopk", "matryoshka_batchtopk"} <= set(ARCHITECTURES)
    spec = TrainSpec(d_sae=4096, k=60)
    assert matryoshka_widths(spec) == [256, 1024, 4096]
    cfg = training_sae_config("matryoshka_batchtopk", 576, spec, "cpu")
    assert type(cfg).__name__ == "MatryoshkaBatchTopKTrainingSAEConfig" and cfg.k == 60 and cfg.matryoshka_widths[-1] == 4096
    x = torch.randn(1024, 16, generator=torch.Generator().manual_seed(0))
    for arch in ("topk", "batchtopk", "matryoshka_batchtopk"):
        sae = train_on_activations(x, arch, d_sae=32, k=4, training_tokens=2048, batch_size=256)
        assert sae.W_dec.shape == (32, 16) and torch.isfinite(sae.encode(x)).all()
    topk = train_on_activations(x, "topk", d_sae=32, k=4, training_tokens=1024, batch_size=256)
    assert ((topk.encode(x) != 0).sum(-1) <= 4).all()


# ---------------------------------------------------------------------------------------
# crystals


def _cloud_with_families(n_random: int, d: int, families: list[tuple[float, int]], seed: int = 0,
                         distractor: float = 0.0):
    """Unit vectors: n_random random ones plus, per family (|v|, pairs), pairs a_k = -v/2 + r_k,
    b_k = v/2 + r_k with r_k ⟂ v and |r_k|^2 = 1 - |v|^2/4 (both unit norm; b_k - a_k = v exactly).
    ``distractor``: every point also gets ``distractor * l_i * g`` along one global direction g
    (a random "length" l_i per point), then is scaled back to unit norm."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_random, d))
    pts = list(x / np.linalg.norm(x, axis=1, keepdims=True))
    fam_idx = []
    for norm, n_pairs in families:
        v = rng.standard_normal(d)
        v *= norm / np.linalg.norm(v)
        idx = []
        for _ in range(n_pairs):
            r = rng.standard_normal(d)
            r -= (r @ v) / (v @ v) * v
            r *= np.sqrt(1 - norm ** 2 / 4) / np.linalg.norm(r)
            idx.append((len(pts), len(pts) + 1))
            pts += [-v / 2 + r, v / 2 + r]
        fam_idx.append(idx)
    pts = np.array(pts)
    if distractor:
        g = rng.standard_normal(d)
        g /= np.linalg.norm(g)
        pts = pts + distractor * rng.uniform(-1, 1, len(pts))[:, None] * g
    return pts, fam_idx


def test_planted_parallelogram_families_are_found_and_shuffled_cloud_has_none():
    from mechscope.saes.geometry import crystal_quality, find_crystals

    pts, fams = _cloud_with_families(60, 48, [(0.8, 5), (0.6, 4)])
    found = find_crystals(pts, 0.9, 3)
    got = sorted(sorted(c["pairs"]) for c in found["crystals"])
    assert got == sorted(sorted(f) for f in fams)
    assert all(c["parallelism"] == pytest.approx(1.0, abs=1e-12) for c in found["crystals"])
    assert all(c["length_ratio"] == pytest.approx(1.0, abs=1e-12) for c in found["crystals"])  # parallelograms
    q = crystal_quality(found["diffs"], found["labels"])
    assert q["silhouette"] == pytest.approx(1.0, abs=1e-9)  # identical differences within each crystal
    rng = np.random.default_rng(1)
    shuffled = np.stack([rng.permutation(col) for col in pts.T], 1)
    assert find_crystals(shuffled, 0.9, 3)["crystals"] == []


def test_nearest_neighbour_pairs_find_the_planted_families_with_few_differences():
    from mechscope.saes.geometry import crystal_summary, find_crystals, neighbour_pairs

    pts, fams = _cloud_with_families(300, 48, [(0.8, 5), (0.6, 4)])
    pairs = neighbour_pairs(pts, 2)
    # each latent with its 2 nearest (cosine; computed here directly): pairs are unique, i < j
    u = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    sim = u @ u.T - 3 * np.eye(len(u))
    want = {tuple(sorted((a, int(b)))) for a in range(len(u)) for b in np.argsort(-sim[a])[:2]}
    assert {tuple(p) for p in pairs.tolist()} == want and len(pairs) == len(want)
    assert len(pairs) < len(pts) * (len(pts) - 1) // 2 // 50
    found = find_crystals(pts, 0.9, 3, pairs=pairs)
    assert sorted(sorted(c["pairs"]) for c in found["crystals"]) == sorted(sorted(f) for f in fams)
    summ = crystal_summary(pts, n_latents=len(pts), neighbours=2, n_shuffles=2, normalize=False)
    assert summ["n_crystals"] == 2 and summ["n_crystals_shuffled"] == 0


def test_projecting_out_a_global_distractor_recovers_the_crystal():
    from mechscope.saes.geometry import crystal_summary

    pts, fams = _cloud_with_families(60, 48, [(0.8, 5)], distractor=3.0)
    plain = crystal_summary(pts, n_latents=len(pts), distractors=0, n_shuffles=1, normalize=False)
    # the length-like direction dominates every difference: the planted family is not a crystal of its own
    assert sorted(fams[0]) not in [sorted(c) for c in plain["crystal_latent_ids"]]
    fixed = crystal_summary(pts, n_latents=len(pts), distractors=1, n_shuffles=2, normalize=False)
    assert fixed["n_crystals"] == 1 and fixed["crystal_max_size"] == 5 and fixed["n_crystals_shuffled"] == 0
    assert sorted(fixed["crystal_latent_ids"][0]) == sorted(fams[0])


def test_geometry_params_check_crystal_fields():
    from mechscope.saes.geometry import SaeGeometryParams

    with pytest.raises(InputError, match="crystal"):
        SaeGeometryParams(crystal_cos=1.5)
    with pytest.raises(InputError, match="crystal"):
        SaeGeometryParams(crystal_latents=2)


# ---------------------------------------------------------------------------------------
# prompts, generation records, CLI and GPU-script pieces


def test_shipped_prompts_and_generation_records():
    ins, ops = C.load_prompts()
    assert len(ins) >= 300 and len({r["text"] for r in ins}) == len(ins)
    assert {"advice", "science", "history", "creative", "dialogue", "maths", "coding", "tables"} <= {r["domain"] for r in ins}
    assert len(ops) >= 60

    class Tok:
        def apply_chat_template(self, msgs, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return f"<user>{msgs[0]['content']}<assistant>"

    recs = C.generation_prompts(ins[:3], ops[:2], Tok(), samples_per_prompt=2)
    assert len(recs) == 10 and len({r["id"] for r in recs}) == 10
    assert recs[0]["prompt"] == f"<user>{ins[0]['text']}<assistant>" and recs[0]["kind"] == "chat"
    assert recs[-1]["prompt"] == ops[1]["text"] and recs[-1]["kind"] == "continuation"
    # sample-major: the 5 prompts' first samples, then their second ones (a time budget cuts all alike)
    assert [r["id"].rsplit(":", 1)[1] for r in recs] == ["0"] * 5 + ["1"] * 5
    assert recs[0]["prompt_id"] == recs[5]["prompt_id"] == recs[0]["id"].rsplit(":", 1)[0] != recs[1]["prompt_id"]


def test_cli_flags_for_domains_casting_and_crystals():
    from mechscope.app.cli import build_parser

    parser = build_parser()
    e = parser.parse_args(["sae", "eval", "--source", "corpus", "--domains", "code,prose", "--weights-dtype", "bfloat16"])
    assert (e.source, tuple(e.domains), e.weights_dtype) == ("corpus", ("code", "prose"), "bfloat16")
    with pytest.raises(SystemExit):
        parser.parse_args(["sae", "eval", "--weights-dtype", "int4"])
    g = parser.parse_args(["sae", "geometry", "--crystals", "--crystal-latents", "64", "--crystal-distractors", "1"])
    assert (g.crystals, g.crystal_latents, g.crystal_distractors) == (True, 64, 1)


def test_gpu_script_domain_table():
    from benchmarks.gpu_saes import domain_table

    s = {"explained_variance": 0.91234, "ce_recovered": 0.98, "l0": 60.0, "dead_fraction": 0.01}
    md = domain_table({"topk-L12": {"float32": {"code": s, "prose": {**s, "explained_variance": 0.8}}}})
    lines = md.strip().split("\n")
    assert lines[0].startswith("| SAE | code EV |") and len(lines) == 3
    assert lines[2] == "| topk-L12 | 0.912 | 0.980 | 60.0 | 0.010 | 0.800 | 0.980 | 60.0 | 0.010 |"


def test_samples_of_one_prompt_are_judged_on_their_own_tokens(tmp_path):
    prompt = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
              "<|im_start|>user\nHow do I keep my kitchen knives sharp and safe to use?<|im_end|>\n<|im_start|>assistant\n")
    answers = [f"Answer number {k}: hone the blade every week and store it in a block, variant {k}." for k in range(6)]
    answers.append(answers[0])  # an exact repeat of a sample
    f = tmp_path / "g.jsonl"
    f.write_text("".join(json.dumps({"id": f"gen:chat:p1:{k}", "kind": "chat", "prompt": prompt, "text": prompt + a}) + "\n"
                         for k, a in enumerate(answers)))
    docs = C.generation_docs(f)
    assert docs[0].dedupe_text == answers[0] and docs[0].text == prompt + answers[0]
    train, held, dropped = C.split_docs(docs)
    assert len(train) + len(held) == 6 and dropped["exact"] == 1  # the shared prompt lines do not count
