"""Feature absorption on the first-letter task (Chanin et al. 2024, "A is for Absorption";
SAEBench's absorption eval).

Ground truth: single-token lower-case words of the vocabulary (a leading space, 2+ letters
a–z); the label is the first letter. Each word is read at its own position in an in-context
prompt ("tiger has the first letter: T\\nmoon has the first letter: M\\n<word>").

Per layer with an SAE:

1. a 26-way logistic-regression probe on the residual at the word position (80 % train,
   20 % test; its per-letter weight rows are the letter directions);
2. the letter's **main latent**: among latents whose decoder direction has cosine >= 0.025
   with the probe direction, the one whose mean activation most separates the letter's words
   from the others (a 1-sparse probe, as the paper's k-sparse probing with k = 1);
3. on test words the probe classifies correctly, SAEBench's two scores
   (``feature_absorption_calculator.py``; projections use each latent's unit decoder
   direction, ``act_j · cos(d_j, p)``, against the activation's own probe projection ``x·p``):

   * **full absorption**: the main latent does not fire, the latent with the largest
     projection has cosine >= 0.025 with the probe, ``x·p > 0``, and that latent's projection
     is >= 40 % of ``x·p``;
   * **absorption fraction**: the share of ``x·p`` carried by up to 3 other latents with
     cosine >= 0.1 (0 when the main latent already accounts for ``x·p`` or those latents
     carry < 40 % of it; 1 when the main latent contributes nothing).

   Rates per letter = mean over those words.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from probes.errors import InputError
from probes.results import Params, Result, analysis

LETTERS = string.ascii_lowercase
COS_THRESHOLD = 0.025  # full absorption: top latent vs probe
FRACTION_COS_THRESHOLD = 0.1  # absorption fraction: candidate absorbers vs probe
SHARE_THRESHOLD = 0.4
MAX_ABSORBERS = 3
EPS = 1e-8
PREFIX = "tiger has the first letter: T\nmoon has the first letter: M\n"


@dataclass(frozen=True)
class AbsorptionParams(Params):
    kind: ClassVar[str] = "sae_absorption"
    saes: tuple[str, ...] = field(default=(), metadata={"help": "SAEs (default: every shipped one)"})
    n_words: int = field(default=3000, metadata={"help": "vocabulary words sampled"})
    seed: int = 0
    batch_size: int = 32


@dataclass(frozen=True)
class AbsorptionResult(Result):
    kind: ClassVar[str] = "sae_absorption"
    table: pd.DataFrame  # per (sae, letter): probe accuracy, main latent, recall, absorption rate
    examples: pd.DataFrame  # absorbed words with their absorbing latent
    summary: pd.DataFrame  # per SAE: mean absorption rate, probe accuracy

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def figures(self) -> dict:
        import plotly.graph_objects as go

        fig = go.Figure()
        for sae, g in self.table.groupby("sae", sort=False):
            fig.add_trace(go.Bar(x=g["letter"], y=g["absorption_rate"], name=sae))
        fig.update_layout(title="first-letter absorption rate per letter", barmode="group",
                          xaxis_title="letter", yaxis_title="absorption rate")
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
    full = (bool((acts[main] < EPS).all()) and float(cos[top]) >= COS_THRESHOLD and probe_proj >= 0
            and float(proj[top]) / probe_proj >= SHARE_THRESHOLD) if probe_proj > 0 else False
    return fraction, full, top


def vocab_words(model, n: int, seed: int = 0) -> list[tuple[int, str]]:
    """(token id, word) of single-token lower-case words with a leading space."""
    from probes.tokens import str_tokens

    if model.tokenizer is None:
        raise InputError("Absorption needs a model with a tokenizer.")
    pat = re.compile(r"^ [a-z]{2,}$")
    words = [(i, s[1:]) for i, s in enumerate(str_tokens(model, range(model.cfg.d_vocab))) if pat.match(s)]
    random.Random(seed).shuffle(words)
    return words[:n]


def _fit_probe(x: torch.Tensor, y: torch.Tensor, steps: int = 300, wd: float = 1e-3) -> torch.nn.Linear:
    torch.manual_seed(0)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    lin = torch.nn.Linear(x.shape[1], len(LETTERS))
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
    xs = (x - mu) / sd

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xs), y) + wd * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():  # fold the standardisation into the weights: act-space directions
        lin.weight.div_(sd)
        lin.bias.sub_((lin.weight * mu).sum(1))
    return lin


@analysis(AbsorptionParams)
@torch.no_grad()
def absorption(model, params: AbsorptionParams, progress=None) -> AbsorptionResult:
    from probes.capture import run
    from probes.models import model_id
    from probes.tokens import encode
    from saes.interventions import decoder_directions, sae_for
    from saes.store import shipped_names

    names = list(params.saes) or shipped_names()
    saes = {n: sae_for(n, model=model) for n in names}
    words = vocab_words(model, params.n_words, params.seed)
    if len(words) < 52:
        raise InputError("Too few single-token words in this vocabulary for the first-letter task.")
    prefix = encode(model, PREFIX, prepend_bos=False).tolist()
    seqs = [prefix + [i] for i, _ in words]
    labels = torch.tensor([LETTERS.index(w[0]) for _, w in words])
    hooks = sorted({s.cfg.metadata.hook_name for s in saes.values()})
    acts: dict[str, torch.Tensor] = {h: torch.empty(len(seqs), model.cfg.d_model) for h in hooks}

    def reducer(h):
        def reduce(t, site, batch):  # noqa: ARG001
            last = batch.lengths - 1
            acts[h][batch.index] = t[torch.arange(t.shape[0]), last].float().cpu()
        return reduce

    run(model, seqs, reducers={h: reducer(h) for h in hooks}, batch_size=params.batch_size, progress=progress or False,
        desc="first-letter prompts")
    g = torch.Generator().manual_seed(params.seed)
    perm = torch.randperm(len(seqs), generator=g)
    n_train = int(0.8 * len(seqs))
    tr, te = perm[:n_train], perm[n_train:]
    rows, examples, summary = [], [], []
    for name, sae in saes.items():
        x = acts[sae.cfg.metadata.hook_name]
        with torch.enable_grad():
            probe = _fit_probe(x[tr], labels[tr])
        pred = probe(x).argmax(1)
        P = torch.nn.functional.normalize(probe.weight.detach(), dim=1)  # [26, d]
        dirs = torch.nn.functional.normalize(decoder_directions(sae), dim=1).cpu()  # [d_sae, d]
        cos = dirs @ P.T  # [d_sae, 26]
        f = sae.encode(x.to(sae.W_dec.device)).cpu()  # [N, d_sae]
        for li, letter in enumerate(LETTERS):
            is_l = labels[tr] == li
            if is_l.sum() < 2:
                continue
            sep = f[tr][is_l].mean(0) - f[tr][~is_l].mean(0)
            sep[cos[:, li] < COS_THRESHOLD] = -float("inf")
            main = int(sep.argmax())
            test_l = te[labels[te] == li]
            correct = test_l[pred[test_l] == li]
            fractions, n_full = [], 0
            for w in correct.tolist():
                frac, full, top = word_absorption(f[w], cos[:, li], float(x[w] @ P[li]), [main])
                fractions.append(frac)
                if full:
                    n_full += 1
                    if len(examples) < 400:
                        examples.append({"sae": name, "letter": letter, "word": words[w][1], "main_latent": main,
                                         "absorbing_latent": top, "absorbing_cos": float(cos[top, li]),
                                         "absorption_fraction": frac})
            n_correct = len(correct)
            rows.append({"sae": name, "letter": letter, "n_test": len(test_l),
                         "probe_accuracy": float((pred[test_l] == li).float().mean()) if len(test_l) else float("nan"),
                         "main_latent": main, "main_cos": float(cos[main, li]),
                         "main_recall": float((f[correct, main] > 0).float().mean()) if n_correct else float("nan"),
                         "full_absorbed": n_full,
                         "absorption_rate": n_full / n_correct if n_correct else float("nan"),
                         "absorption_fraction": float(np.mean(fractions)) if fractions else float("nan")})
        t = pd.DataFrame([r for r in rows if r["sae"] == name])
        summary.append({"sae": name, "hook": sae.cfg.metadata.hook_name,
                        "probe_accuracy": float((pred[te] == labels[te]).float().mean()),
                        "mean_absorption_rate": float(t["absorption_rate"].mean()),
                        "mean_absorption_fraction": float(t["absorption_fraction"].mean()),
                        "mean_main_recall": float(t["main_recall"].mean())})
    return AbsorptionResult(model_id=model_id(model), params=params, table=pd.DataFrame(rows),
                            examples=pd.DataFrame(examples), summary=pd.DataFrame(summary))
