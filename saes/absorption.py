"""Feature absorption on the first-letter task (Chanin et al. 2024, "A is for Absorption"),
following SAEBench's absorption eval (``sae_bench/evals/absorption``: ``k_sparse_probing.py``,
``feature_absorption.py``, ``feature_absorption_calculator.py``, ``main.py``).

Protocol of the default method, ``"k_sparse"`` (SAEBench's):

1. **Words**: every vocabulary token made only of ASCII letters, with at most one leading
   space (SAEBench's ``get_alpha_tokens``), or a seeded sample of ``n_words`` of them; the
   label is the first letter, lower-cased. Shuffled, split 80 % train / 20 % test.
2. **Prompts**: ``"\\n"``, then 10 in-context examples ``"{ex} has the first letter: {E}"``
   (one per line, drawn from the word's own split, never the word itself), then
   ``"{word} has the first letter:"``. The residual is read at the word's last token (the
   6th from the end with this suffix; SAEBench's ``prompt_token_pos = -6``).
3. **Ground-truth probe** per hook: 26 one-vs-rest logistic regressions on the residual
   (scikit-learn), positives weighted by n_neg/n_pos (the reference's ``BCEWithLogitsLoss``
   ``pos_weight``) and an L2 penalty equal to its weight decay of 1e-4 on the loss averaged
   over the 26 letters. A letter's probe F1 is measured on the test words (score > 0).
4. **Main latents** per SAE and letter, by k-sparse probing on the SAE latents: an L1
   logistic regression on every latent (L1 0.01, same weighting) ranks the latents by
   weight; for k = 1 … ``max_k`` (10) a logistic regression (``class_weight="balanced"``) on
   the top k latents is fitted on the train words and scored by F1 on the test words; k grows
   while the F1 rises by more than ``f1_jump`` (0.03) (``add_feature_splits_to_metrics_df``).
   The chosen k latents are the letter's main (split) latents.
5. **Scores** on the test words the probe marks positive (score > 0), each re-prompted with
   10 examples drawn from the whole word list. With ``p`` the unit probe direction, ``x·p``
   the activation's projection (no bias) and ``act_j · cos(W_dec_j, p)`` each latent's:

   * **full absorption**: no main latent fires, the latent with the largest projection has
     cosine >= 0.025 with ``p``, ``x·p >= 0`` and that latent's projection is >= 40 % of
     ``x·p``;
   * **absorption fraction**: the share of ``x·p`` carried by up to 3 other latents with
     cosine >= 0.1 (0 when the main latents already account for ``x·p`` or those latents
     carry < 40 % of it; 1 when the main latents contribute nothing).

   Per letter: the sums over those words / their number (``_aggregate_results_df``).
6. **Letters scored**: those with probe F1 > ``min_probe_f1`` (0.6). An SAE gets a score (the
   mean over scored letters) only when at least ``min_letters`` (20) letters reach that F1;
   otherwise its ``status`` says so and its scores are NaN.

``method="mean_difference"`` keeps steps 1–3 and 5 but takes one main latent per letter —
among latents with decoder cosine >= 0.025 with the probe, the one whose mean activation best
separates the letter's train words from the others — and averages every letter (no F1 filter,
no letter count). A feature split over several latents then counts as absorbed.

Deviations from the reference code: the probes are solved to convergence by scikit-learn
instead of 50 epochs of Adam (the intercepts are not penalised, the sparse probe's 1e-6 L2 term
is left out, and liblinear's L1 solver penalises its intercept lightly through
``intercept_scaling``); the residual is read at each prompt's own word position, where the
reference reads a fixed -6 of the batch's padded rows.
"""

from __future__ import annotations

import random
import statistics
import string
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from mechscope.probes.errors import InputError
from mechscope.probes.results import Params, Result, analysis

LETTERS = string.ascii_lowercase
TEMPLATE = "{word} has the first letter:"
SEPARATOR = "\n"
N_ICL = 10
TRAIN_FRACTION = 0.8
PROBE_WEIGHT_DECAY = 1e-4  # the reference's ground-truth probe (Adam weight decay, mean loss over 26 letters)
COS_THRESHOLD = 0.025  # full absorption: top latent vs probe (and mean_difference's candidates)
FRACTION_COS_THRESHOLD = 0.1  # absorption fraction: candidate absorbers vs probe
SHARE_THRESHOLD = 0.4
MAX_ABSORBERS = 3
EPS = 1e-8
METHODS = ("k_sparse", "mean_difference")
WORD_COLUMNS = ["sae", "letter", "word", "prompt", "probe_projection", "absorption_fraction", "full_absorption",
                "top_latent", "top_cos"]


@dataclass(frozen=True)
class AbsorptionParams(Params):
    kind: ClassVar[str] = "sae_absorption"
    saes: tuple[str, ...] = field(default=(), metadata={"help": "SAEs (default: every shipped one)"})
    n_words: int = field(default=0, metadata={
        "help": "words sampled from the vocabulary (0: every letters-only token, as SAEBench)"})
    method: str = field(default="k_sparse", metadata={
        "help": "main latents: k_sparse (SAEBench: k-sparse probing, F1 filter) or mean_difference "
                "(one latent, every letter)"})
    max_k: int = field(default=10, metadata={"help": "largest k of the k-sparse probes"})
    f1_jump: float = field(default=0.03, metadata={
        "help": "k grows while the k-sparse probe's F1 rises by more than this"})
    l1: float = field(default=0.01, metadata={"help": "L1 strength of the probe that ranks latents"})
    min_probe_f1: float = field(default=0.6, metadata={"help": "letters scored: ground-truth probe F1 above this"})
    min_letters: int = field(default=20, metadata={
        "help": "an SAE is scored only when this many letters pass the F1 filter"})
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self):
        if not isinstance(self.saes, tuple):
            object.__setattr__(self, "saes", tuple(self.saes))
        if self.method not in METHODS:
            raise InputError(f"Unknown absorption method {self.method!r}: use {' or '.join(METHODS)}.")
        if self.n_words < 0 or self.max_k < 1 or self.batch_size < 1 or not 1 <= self.min_letters <= 26:
            raise InputError("n_words must be >= 0, max_k and batch_size >= 1, min_letters 1-26.")
        if self.l1 <= 0 or self.f1_jump < 0:
            raise InputError("l1 must be > 0 and f1_jump >= 0.")


@dataclass(frozen=True)
class AbsorptionResult(Result):
    kind: ClassVar[str] = "sae_absorption"
    table: pd.DataFrame  # per (sae, letter): probe F1, main latents, absorption scores, scored?
    words: pd.DataFrame  # per (sae, probe-positive test word): its prompt and scores
    summary: pd.DataFrame  # per SAE: status, letters scored, mean scores
    probe_weights: np.ndarray  # [n_saes, 26, d_model]: each SAE's hook's ground-truth probe (score = x·W + b)
    probe_bias: np.ndarray  # [n_saes, 26] (-inf: the letter had no train word)

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def figures(self) -> dict:
        import plotly.graph_objects as go

        fig = go.Figure()
        for sae, g in self.table.groupby("sae", sort=False):
            g = g[g["scored"]]
            fig.add_trace(go.Bar(x=g["letter"], y=g["absorption_fraction"], name=f"{sae} fraction"))
            fig.add_trace(go.Bar(x=g["letter"], y=g["full_absorption_rate"], name=f"{sae} full"))
        fig.update_layout(title="first-letter absorption per scored letter", barmode="group",
                          xaxis_title="letter", yaxis_title="mean absorption fraction / full absorption rate")
        return {"absorption": fig}


def word_absorption(acts: torch.Tensor, cos: torch.Tensor, probe_proj: float, main: list[int],
                    ) -> tuple[float, bool, int]:
    """SAEBench's per-word scores: (absorption fraction, full absorption?, top latent).

    ``acts`` [d_sae] SAE activations, ``cos`` [d_sae] cosine of each latent's decoder
    direction with the unit probe direction, ``probe_proj`` = x·p, ``main`` the main latents.
    """
    proj = acts * cos
    main_proj = float(proj[main].sum())
    mask = torch.ones_like(proj, dtype=torch.bool)
    mask[main] = False
    mask &= (cos >= FRACTION_COS_THRESHOLD) & (proj > 0)
    cand = proj[mask]
    top_total = float(cand.topk(min(MAX_ABSORBERS, cand.numel())).values.sum()) if cand.numel() else 0.0
    share = top_total / probe_proj if probe_proj != 0 else 0.0
    if main_proj >= probe_proj or share < SHARE_THRESHOLD:
        fraction = 0.0
    elif main_proj <= 0.0:
        fraction = 1.0
    else:
        absorbed = min(top_total, probe_proj - main_proj)
        fraction = float(np.clip(absorbed / (absorbed + main_proj), 0.0, 1.0))
    top = int(proj.argmax())
    full = (bool((acts[main] < EPS).all()) and float(cos[top]) >= COS_THRESHOLD
            and float(proj[top]) / probe_proj >= SHARE_THRESHOLD) if probe_proj > 0 else False
    return fraction, full, top


# --- words and prompts ------------------------------------------------------------------------

def alpha_words(model) -> list[tuple[int, str]]:
    """(token id, token text) of every token made only of ASCII letters, with at most one
    leading space (SAEBench's ``get_alpha_tokens``)."""
    from mechscope.probes.tokens import str_tokens

    if model.tokenizer is None:
        raise InputError("Absorption needs a model with a tokenizer.")
    out = []
    for i, s in enumerate(str_tokens(model, range(model.cfg.d_vocab))):
        w = s[1:] if s.startswith(" ") else s
        if w and w.isascii() and w.isalpha():
            out.append((i, s))
    return out


def first_letter(word: str) -> str:
    """The word's first letter, lower-cased."""
    return next(c for c in word if c.isalpha()).lower()


def icl_prompt(word: str, pool: list[str], rng: random.Random, n_examples: int = N_ICL) -> str:
    """SAEBench's ``create_icl_prompt`` for the first-letter template (separator before the
    first example; examples never include ``word``)."""
    for _ in range(1000):
        examples = rng.sample(pool, n_examples)
        if word not in examples:
            break
    else:
        raise InputError("Too few distinct words to build in-context examples.")
    lines = [TEMPLATE.format(word=e) + " " + first_letter(e).upper() for e in examples]
    return SEPARATOR + SEPARATOR.join(lines) + SEPARATOR + TEMPLATE.format(word=word)


# --- probes (scikit-learn) ----------------------------------------------------------------------

def _l1_kwargs() -> dict:
    import sklearn

    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    return {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}


def _fit_binary(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    n_pos = int(y.sum())
    weights = {0: 1.0, 1: (len(y) - n_pos) / n_pos}
    model = LogisticRegression(C=c, class_weight=weights, max_iter=5000, tol=1e-6)
    model.fit(x, y)
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


PARALLEL_MIN_WORDS = 2000  # fewer words: the 26 fits run in this process (starting workers costs more)


def _default_jobs(n_words: int) -> int:
    """joblib processes for the 26 per-letter fits: every core for SAEBench-sized word lists,
    one (no worker processes) for samples, where spawning the workers dominates."""
    return -1 if n_words >= PARALLEL_MIN_WORDS else 1


def fit_letter_probes(x: np.ndarray, y: np.ndarray, weight_decay: float = PROBE_WEIGHT_DECAY,
                      n_jobs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ground-truth probes: W [26, d], b [26] (score = x·W_l + b_l).

    One-vs-rest logistic regression per letter minimising
    ``(1/(26 n)) Σ_i c_i log-loss_i + (wd/2) |w|²`` with c_i = n_neg/n_pos on positives (the
    reference's objective). Solved on centred inputs divided by their RMS, with the penalty
    rescaled to match (both exact for an unpenalised intercept). Letters without a train
    word get w = 0, b = -inf (never positive).
    """
    from joblib import Parallel, delayed

    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(0)
    xc = x - mu
    s = float(np.sqrt((xc**2).mean())) or 1.0
    c = 1.0 / (len(LETTERS) * len(x) * weight_decay) * s * s
    present = [li for li in range(len(LETTERS)) if 0 < (y == li).sum() < len(y)]
    fits = Parallel(n_jobs=n_jobs or _default_jobs(len(x)))(delayed(_fit_binary)(xc / s, (y == li).astype(np.int64), c) for li in present)
    W = np.zeros((len(LETTERS), x.shape[1]))
    b = np.full(len(LETTERS), -np.inf)
    for li, (w, b0) in zip(present, fits):
        W[li] = w / s
        b[li] = b0 - float(W[li] @ mu)
    return W, b


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, zero_division=0.0))


def k_sparse_main_latents(f_train, y_train: np.ndarray, f_test, y_test: np.ndarray, max_k: int = 10,
                          f1_jump: float = 0.03, l1: float = 0.01) -> tuple[list[int], list[float]]:
    """SAEBench's k-sparse probing for one binary task (``y`` bool): (main latents, F1 per k tried).

    ``f_train``/``f_test`` [n, d_sae] SAE activations (dense or scipy sparse). Latents are
    ranked by the weights of an L1 logistic regression (objective ``(1/n) Σ c_i log-loss_i +
    l1 |w|_1``, c_i = n_neg/n_pos on positives); k grows from 1 while the test F1 of a
    balanced logistic regression on the top-k latents rises by more than ``f1_jump``.
    """
    from sklearn.linear_model import LogisticRegression

    y_train = np.asarray(y_train).astype(np.int64)
    y_test = np.asarray(y_test).astype(bool)
    n_pos = int(y_train.sum())
    if n_pos == 0 or n_pos == len(y_train):
        return [], []
    ranker = LogisticRegression(solver="liblinear", C=1.0 / (len(y_train) * l1), intercept_scaling=10.0,
                                class_weight={0: 1.0, 1: (len(y_train) - n_pos) / n_pos}, random_state=0,
                                max_iter=1000, **_l1_kwargs())
    ranker.fit(f_train, y_train)
    order = np.argsort(-ranker.coef_[0], kind="stable")
    chosen, f1s, best = [], [], -100.0
    for k in range(1, min(max_k, len(order)) + 1):
        feats = order[:k]
        xtr = _dense_cols(f_train, feats)
        probe = LogisticRegression(max_iter=500, class_weight="balanced").fit(xtr, y_train)
        score = _dense_cols(f_test, feats) @ probe.coef_[0] + probe.intercept_[0]
        f1 = _f1(y_test, score > 0)
        f1s.append(f1)
        if f1 > best + f1_jump:
            best, chosen = f1, [int(i) for i in feats]
        else:
            break
    return chosen, f1s


def _dense_cols(f, cols) -> np.ndarray:
    part = f[:, cols]
    return np.asarray(part.todense() if hasattr(part, "todense") else part, dtype=np.float64)


def mean_difference_main_latent(f_train, y_train: np.ndarray, cos: np.ndarray) -> list[int]:
    """One main latent: among latents with decoder cosine >= 0.025 with the probe, the one
    whose mean activation on the letter's train words most exceeds that on the others."""
    y_train = np.asarray(y_train).astype(bool)
    if y_train.sum() == 0 or (~y_train).sum() == 0:
        return []
    mean_pos = np.asarray(f_train[y_train].mean(0)).ravel()
    mean_neg = np.asarray(f_train[~y_train].mean(0)).ravel()
    sep = mean_pos - mean_neg
    sep[np.asarray(cos) < COS_THRESHOLD] = -np.inf
    return [int(np.argmax(sep))] if np.isfinite(sep).any() else []


def _encode(sae, x: np.ndarray, batch: int = 4096):
    from scipy import sparse

    dev, dt = sae.W_dec.device, sae.W_dec.dtype
    parts = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            f = sae.encode(torch.as_tensor(x[i : i + batch]).to(dev, dt)).float().cpu().numpy()
            parts.append(sparse.csr_matrix(f))
    return sparse.vstack(parts).tocsr() if parts else sparse.csr_matrix((0, sae.cfg.d_sae), dtype=np.float32)


# --- scoring one SAE ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeData:
    """Residuals at the word position: train/test prompts and the re-prompted test words."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_eval: np.ndarray  # the test words again, prompted with examples from the whole word list
    test_words: tuple[str, ...] = ()
    eval_prompts: tuple[str, ...] = ()


def score_sae(sae, data: ProbeData, probe: tuple[np.ndarray, np.ndarray], params: AbsorptionParams,
              name: str = "sae", n_jobs: int | None = None) -> tuple[list[dict], list[dict], dict]:
    """Table rows (per letter), word rows and the summary of one SAE (see the module doc).
    ``probe`` = (W [26, d], b [26]) from :func:`fit_letter_probes`; ``n_jobs`` processes fit
    the letters' k-sparse probes (default: every core for 2,000+ train words, else one)."""
    W, b = probe
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    P = np.divide(W, norms, out=np.zeros_like(W), where=norms > 0)  # unit probe directions [26, d]
    W_dec = sae.W_dec.detach().double().cpu().numpy()
    cos = (W_dec / np.linalg.norm(W_dec, axis=1, keepdims=True).clip(1e-12)) @ P.T  # [d_sae, 26]
    f_train, f_test = _encode(sae, data.x_train), _encode(sae, data.x_test)
    score_test = data.x_test.astype(np.float64) @ W.T + b
    pred = score_test.argmax(1)
    if params.method == "k_sparse":
        from joblib import Parallel, delayed

        mains = Parallel(n_jobs=n_jobs or _default_jobs(len(data.y_train)))(
            delayed(k_sparse_main_latents)(f_train, data.y_train == li, f_test, data.y_test == li, params.max_k,
                                           params.f1_jump, params.l1) for li in range(len(LETTERS)))
    else:
        mains = [(mean_difference_main_latent(f_train, data.y_train == li, cos[:, li]), [])
                 for li in range(len(LETTERS))]
    rows, words = [], []
    for li, letter in enumerate(LETTERS):
        is_te = data.y_test == li
        probe_f1 = _f1(is_te, score_test[:, li] > 0) if np.isfinite(b[li]) else float("nan")
        main, f1s = mains[li]
        sparse_f1 = f1s[len(main) - 1] if main and f1s else float("nan")
        tp = np.flatnonzero(is_te & (score_test[:, li] > 0))
        n_full, fractions, fired = 0, [], 0
        if len(tp) and main:
            f_eval = _encode(sae, data.x_eval[tp]).toarray()
            proj = data.x_eval[tp].astype(np.float64) @ P[li]
            cos_l = torch.from_numpy(cos[:, li])
            for j, w in enumerate(tp):
                acts = torch.from_numpy(f_eval[j]).double()
                frac, full, top = word_absorption(acts, cos_l, float(proj[j]), main)
                fractions.append(frac)
                n_full += full
                fired += bool((acts[main] > 0).any())
                words.append({"sae": name, "letter": letter,
                              "word": data.test_words[w] if data.test_words else str(w),
                              "prompt": data.eval_prompts[w] if data.eval_prompts else "",
                              "probe_projection": float(proj[j]), "absorption_fraction": frac,
                              "full_absorption": bool(full), "top_latent": top, "top_cos": float(cos[top, li])})
        n_tp = len(fractions)
        rows.append({"sae": name, "letter": letter, "n_test": int(is_te.sum()), "probe_f1": probe_f1,
                     "n_true_positives": n_tp, "main_latents": " ".join(map(str, main)),
                     "num_split_features": len(main), "sparse_f1": sparse_f1,
                     "main_cos": float(cos[main, li].mean()) if main else float("nan"),
                     "main_recall": fired / n_tp if n_tp else float("nan"),
                     "full_absorbed": int(n_full),
                     "full_absorption_rate": n_full / n_tp if n_tp else float("nan"),
                     "absorption_fraction": float(np.sum(fractions)) / n_tp if n_tp else float("nan")})
    f1_ok = sum(r["probe_f1"] > params.min_probe_f1 for r in rows)  # NaN compares False
    if params.method == "k_sparse":
        enough = f1_ok >= params.min_letters
        status = ("ok" if enough else
                  f"not scored: {f1_ok} letters have probe F1 > {params.min_probe_f1}, {params.min_letters} needed")
        for r in rows:
            r["scored"] = bool(enough and r["probe_f1"] > params.min_probe_f1 and r["n_true_positives"] > 0)
    else:
        status = "ok"
        for r in rows:
            r["scored"] = bool(r["n_true_positives"] > 0)
    scored = [r for r in rows if r["scored"]]

    def mean(key):
        return statistics.mean(r[key] for r in scored) if scored else float("nan")

    def std(key):
        return statistics.stdev(r[key] for r in scored) if len(scored) > 1 else float("nan")

    summary = {"sae": name, "hook": sae.cfg.metadata.hook_name, "method": params.method, "status": status,
               "letters_probe_f1_ok": int(f1_ok), "letters_scored": len(scored),
               "probe_accuracy": float((pred == data.y_test).mean()) if len(pred) else float("nan"),
               "mean_probe_f1": float(np.nanmean([r["probe_f1"] for r in rows])),
               "mean_absorption_fraction": mean("absorption_fraction"),
               "mean_full_absorption_rate": mean("full_absorption_rate"),
               "mean_num_split_features": mean("num_split_features"),
               "std_absorption_fraction": std("absorption_fraction"),
               "std_full_absorption_rate": std("full_absorption_rate")}
    return rows, words, summary


# --- the analysis ---------------------------------------------------------------------------------

@analysis(AbsorptionParams)
@torch.no_grad()
def absorption(model, params: AbsorptionParams, progress=None) -> AbsorptionResult:
    from mechscope.probes.capture import run
    from mechscope.probes.models import model_id
    from mechscope.probes.tokens import encode
    from mechscope.saes.store import load_sae
    from mechscope.saes.store import shipped_names

    names = list(params.saes) or shipped_names()
    saes = {n: load_sae(n, model=model, cached=True) for n in names}
    rng = random.Random(params.seed)
    vocab = alpha_words(model)
    if params.n_words:
        vocab = rng.sample(vocab, min(params.n_words, len(vocab)))
    else:
        rng.shuffle(vocab)
    n_train = int(TRAIN_FRACTION * len(vocab))
    if len(vocab) - n_train < N_ICL + 1:
        raise InputError(f"Too few words for the first-letter task ({len(vocab)}): use at least "
                         f"{int(np.ceil((N_ICL + 1) / (1 - TRAIN_FRACTION)))}.")
    train, test = [w for _, w in vocab[:n_train]], [w for _, w in vocab[n_train:]]
    everything = train + test
    prompts = ([icl_prompt(w, train, rng) for w in train] + [icl_prompt(w, test, rng) for w in test]
               + [icl_prompt(w, everything, rng) for w in test])
    seqs = [encode(model, p) for p in prompts]
    n_suffix = len(encode(model, TEMPLATE.format(word=""), prepend_bos=False))
    hooks = sorted({s.cfg.metadata.hook_name for s in saes.values()})
    acts = {h: torch.empty(len(seqs), model.cfg.d_model) for h in hooks}

    def reducer(h):
        def reduce(t, site, batch):  # noqa: ARG001
            pos = batch.lengths - 1 - n_suffix
            acts[h][batch.index] = t[torch.arange(t.shape[0], device=t.device), pos].float().cpu()
        return reduce

    run(model, seqs, reducers={h: reducer(h) for h in hooks}, batch_size=params.batch_size,
        progress=progress or False, desc="first-letter prompts")
    y = np.array([LETTERS.index(first_letter(w)) for w in everything])
    n_test = len(test)
    rows, word_rows, summary, probes = [], [], [], {}
    for name, sae in saes.items():
        x = acts[sae.cfg.metadata.hook_name].numpy()
        data = ProbeData(x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train : n_train + n_test],
                         y_test=y[n_train:], x_eval=x[n_train + n_test :], test_words=tuple(test),
                         eval_prompts=tuple(prompts[n_train + n_test :]))
        hook = sae.cfg.metadata.hook_name
        if hook not in probes:
            probes[hook] = fit_letter_probes(data.x_train, data.y_train)
        r, w, s = score_sae(sae, data, probes[hook], params, name=name)
        rows += r
        word_rows += w
        summary.append(s)
    hooks_in_order = [s.cfg.metadata.hook_name for s in saes.values()]
    return AbsorptionResult(model_id=model_id(model), params=params, table=pd.DataFrame(rows),
                            words=pd.DataFrame(word_rows, columns=WORD_COLUMNS), summary=pd.DataFrame(summary),
                            probe_weights=np.stack([probes[h][0] for h in hooks_in_order]).astype(np.float32),
                            probe_bias=np.stack([probes[h][1] for h in hooks_in_order]))
