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
3. **absorption** on test words the probe gets right: the main latent does not fire, and an
   active latent whose decoder direction has cosine >= 0.025 with the letter's probe
   direction carries at least 40 % of the positive projection of the SAE's active latents
   onto that direction (``act_j · <d_j, p>``). Rate = absorbed / probe-correct words.
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
COS_THRESHOLD = 0.025
SHARE_THRESHOLD = 0.4
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


def vocab_words(model, n: int, seed: int = 0) -> list[tuple[int, str]]:
    """(token id, word) of single-token lower-case words with a leading space."""
    tok = model.tokenizer
    if tok is None:
        raise InputError("Absorption needs a model with a tokenizer.")
    pat = re.compile(r"^ [a-z]{2,}$")
    words = []
    for i in range(model.cfg.d_vocab):
        s = tok.decode([i])
        if pat.match(s):
            words.append((i, s[1:]))
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
        raw_dirs = decoder_directions(sae).cpu()
        proj = raw_dirs @ P.T  # per unit activation, projection on each letter direction
        for li, letter in enumerate(LETTERS):
            is_l = labels[tr] == li
            if is_l.sum() < 2:
                continue
            sep = f[tr][is_l].mean(0) - f[tr][~is_l].mean(0)
            sep[cos[:, li] < COS_THRESHOLD] = -float("inf")
            main = int(sep.argmax())
            test_l = te[labels[te] == li]
            correct = test_l[pred[test_l] == li]
            absorbed = 0
            for w in correct.tolist():
                if f[w, main] > 0:
                    continue
                contrib = f[w] * proj[:, li]
                pos = contrib.clamp(min=0)
                total = float(pos.sum())
                if total <= 0:
                    continue
                cand = torch.where(cos[:, li] >= COS_THRESHOLD, pos, torch.zeros_like(pos))
                j = int(cand.argmax())
                if float(cand[j]) >= SHARE_THRESHOLD * total:
                    absorbed += 1
                    if len(examples) < 400:
                        examples.append({"sae": name, "letter": letter, "word": words[w][1], "main_latent": main,
                                         "absorbing_latent": j, "absorbing_cos": float(cos[j, li]),
                                         "share": float(cand[j]) / total})
            n_correct = len(correct)
            rows.append({"sae": name, "letter": letter, "n_test": len(test_l),
                         "probe_accuracy": float((pred[test_l] == li).float().mean()) if len(test_l) else float("nan"),
                         "main_latent": main, "main_cos": float(cos[main, li]),
                         "main_recall": float((f[correct, main] > 0).float().mean()) if n_correct else float("nan"),
                         "absorbed": absorbed, "absorption_rate": absorbed / n_correct if n_correct else float("nan")})
        t = pd.DataFrame([r for r in rows if r["sae"] == name])
        summary.append({"sae": name, "hook": sae.cfg.metadata.hook_name,
                        "probe_accuracy": float((pred[te] == labels[te]).float().mean()),
                        "mean_absorption_rate": float(t["absorption_rate"].mean()),
                        "mean_main_recall": float(t["main_recall"].mean())})
    return AbsorptionResult(model_id=model_id(model), params=params, table=pd.DataFrame(rows),
                            examples=pd.DataFrame(examples), summary=pd.DataFrame(summary))
