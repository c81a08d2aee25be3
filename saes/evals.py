"""SAE evals on held-out token rows, under two position protocols.

**Reference protocol** (SAE-Lens ``evals.run_evals`` / ``get_recons_loss``, also SAEBench's core
eval): every position of every row is encoded, spliced and ablated. Positions holding one of
the tokenizer's special tokens (BOS, EOS, PAD: SAE-Lens ``get_special_token_ids``) keep their
activation and are left out of every number.

* **L0** — mean number of non-zero latents per token.
* **explained variance** (SAE-Lens ``ExplainedVarianceCalculator``) —
  ``1 - E||x - x̂||² / (E||x||² - ||E x||²)``: against the total variance; float64 sums.
* **explained_variance_saebench** (SAEBench core ``get_sparsity_and_variance_metrics``) —
  ``1 - E||x - x̂||² / (E||x||² - m²)`` with ``m = E||x||² / d_in``, the mean over dimensions
  of the per-dimension mean square. The denominator is not the variance: it is close to the
  mean square ``E||x||²`` when ``m`` is small, smaller than the variance when ``m² > ||E x||²``,
  and negative when ``m² > E||x||²`` (the score then exceeds 1). SAEBench averages per-batch
  means; this is the token mean (equal for equal-sized batches).
* **CE loss recovered** (SAE-Lens ``ce_loss_score``) — ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``
  where CE_sae splices the reconstruction x̂ in at every position (no error term) and
  CE_zero replaces the activation by zero at every position; the CE is averaged over every
  predicted position whose input token is not special.
* **density** — fraction of tokens on which each latent fires; **dead** latents never fire
  on the eval tokens, **dense** ones fire on more than 10 % of them.

**Skip-position-0 protocol** (keys ending ``_skip0``; this project's, matching how the
shipped SAEs were trained, ``seqpos_slice=(1, None)``): position 0, the attention-sink
position, is left alone and not scored — the same numbers over positions >= 1, CE from the
prediction made at position 1, plus ``ce_recovered_mean_skip0`` where CE_abl replaces the
activation by its mean over the eval tokens (mean ablation). No special-token masking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from mechscope.probes.errors import InputError
from mechscope.probes.interventions import applied

DENSE_THRESHOLD = 0.1


@dataclass
class EvalStats:
    """Streaming accumulators; :meth:`summary` turns them into the eval numbers."""

    d_sae: int
    n_tokens: int = 0
    d_in: int = 0
    l0_sum: float = 0.0
    sum_x: torch.Tensor | None = None  # float64 [d_in]
    sum_sq_norm: float = 0.0
    sum_sq_resid: float = 0.0
    fire_counts: torch.Tensor | None = None  # int64 [d_sae]
    ce: dict = field(default_factory=dict)
    ce_tokens: int = 0

    def add_recon(self, x: torch.Tensor, x_hat: torch.Tensor, acts: torch.Tensor) -> None:
        """x, x_hat [N, d_in]; acts [N, d_sae]."""
        x64, xh64, acts = x.detach().double(), x_hat.detach().double(), acts.detach()
        self.n_tokens += x.shape[0]
        self.d_in = x.shape[-1]
        fired = acts != 0
        self.l0_sum += float(fired.sum())
        counts = fired.sum(0).to(torch.int64).cpu()
        self.fire_counts = counts if self.fire_counts is None else self.fire_counts + counts
        s = x64.sum(0).cpu()
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.sum_sq_norm += float(x64.pow(2).sum())
        self.sum_sq_resid += float((x64 - xh64).pow(2).sum())

    def add_ce(self, losses: dict[str, torch.Tensor]) -> None:
        """Per-token CE losses (same positions for every key)."""
        n = next(iter(losses.values())).numel()
        for k, v in losses.items():
            self.ce[k] = self.ce.get(k, 0.0) + float(v.double().sum())
        self.ce_tokens += n

    def summary(self) -> dict:
        if self.n_tokens == 0:
            raise InputError("No tokens were evaluated.")
        mean = self.sum_x / self.n_tokens
        mean_sq = self.sum_sq_norm / self.n_tokens
        variance = mean_sq - float(mean.pow(2).sum())
        mse = self.sum_sq_resid / self.n_tokens
        density = (self.fire_counts.double() / self.n_tokens).numpy()
        out = {
            "tokens": self.n_tokens,
            "l0": self.l0_sum / self.n_tokens,
            "explained_variance": explained_variance(mse, variance),
            "explained_variance_saebench": 1.0 - mse / (mean_sq - (mean_sq / self.d_in) ** 2),
            "mse": mse,
            "dead_fraction": float((density == 0).mean()),
            "dense_fraction": float((density > DENSE_THRESHOLD).mean()),
            "density": density,
        }
        if self.ce_tokens:
            ce = {k: v / self.ce_tokens for k, v in self.ce.items()}
            out.update({f"ce_{k}": v for k, v in ce.items()})
            out["ce_recovered"] = recovered(ce["clean"], ce["sae"], ce["zero"])
            if "mean" in ce:
                out["ce_recovered_mean"] = recovered(ce["clean"], ce["sae"], ce["mean"])
        return out


def explained_variance(mse: float, variance: float) -> float:
    """SAE-Lens' ``ExplainedVarianceCalculator.compute`` from E||x - x̂||² and the total variance."""
    if variance < 1e-10:
        return 1.0 if mse < 1e-10 else 0.0
    return 1.0 - mse / variance


def recovered(clean: float, spliced: float, ablated: float) -> float:
    """Fraction of the ablation's CE increase that the reconstruction wins back."""
    denom = ablated - clean
    if abs(denom) < 1e-12:
        return float("nan")
    return (ablated - spliced) / denom


def density_histogram(density: np.ndarray, bins: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Counts of latents per log10-density bin (dead latents left out), and the bin edges."""
    live = density[density > 0]
    edges = np.linspace(-7, 0, bins + 1)
    counts, _ = np.histogram(np.log10(live), bins=edges) if live.size else (np.zeros(bins, int), edges)
    return counts, edges


def _rows_tensor(rows) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(rows, dtype=np.int64)) if not isinstance(rows, torch.Tensor) else rows.long()
    if t.ndim != 2 or t.shape[1] < 3:
        raise InputError(f"Token rows must be [N, T] with T >= 3, got {tuple(t.shape)}.")
    return t


def _per_token_ce(logits: torch.Tensor, tokens: torch.Tensor, skip: int) -> torch.Tensor:
    """[B, T - 1 - skip]: CE of the prediction made at each position >= skip."""
    lp = logits[:, skip:-1].float().log_softmax(-1)
    return -lp.gather(-1, tokens[:, skip + 1 :, None]).squeeze(-1)


@torch.no_grad()
def activation_mean(model, hook: str, rows: torch.Tensor, skip: int = 1, batch_size: int = 16) -> torch.Tensor:
    """Mean activation at ``hook`` over positions >= skip of ``rows`` (for mean ablation)."""
    total, n = None, 0
    for i in range(0, rows.shape[0], batch_size):
        store = {}

        def grab(act, hook):  # noqa: ARG001
            store["x"] = act[:, skip:].reshape(-1, act.shape[-1]).double().sum(0)
            return act

        toks = rows[i : i + batch_size].to(model.cfg.device)
        with applied(model, extra_hooks=[(hook, grab)]):
            model(toks, stop_at_layer=_stop(hook))
        total = store["x"] if total is None else total + store["x"]
        n += toks.shape[0] * (toks.shape[1] - skip)
    return (total / n).float()


def _stop(hook: str) -> int | None:
    parts = hook.split(".")
    return int(parts[1]) + 1 if parts[0] == "blocks" else None


def special_token_ids(model) -> list[int]:
    """The tokenizer's BOS/EOS/PAD/SEP ids (SAE-Lens ``get_special_token_ids``); none without one."""
    if model.tokenizer is None:
        return []
    from sae_lens.util import get_special_token_ids

    return sorted(get_special_token_ids(model.tokenizer))


@torch.no_grad()
def evaluate(model, sae, rows, batch_size: int = 8, ce: bool = True, mean_rows: int = 64,
             ignore_tokens: Sequence[int] | None = None, progress=None) -> dict:
    """All eval numbers of ``sae`` at its hook over ``rows`` [N, T] of held-out token ids: the
    reference protocol's under their plain names, the skip-position-0 protocol's with the
    suffix ``_skip0`` (see the module doc). ``ignore_tokens``: the ids the reference protocol
    leaves out (default: the tokenizer's special tokens)."""
    from mechscope.saes.store import check_fits

    hook = check_fits(sae, model)
    rows = _rows_tensor(rows)
    dev = model.cfg.device
    sae = sae.to(dev)
    ignore = torch.as_tensor(list(special_token_ids(model) if ignore_tokens is None else ignore_tokens),
                             dtype=torch.long)
    ref, skip0 = EvalStats(sae.cfg.d_sae), EvalStats(sae.cfg.d_sae)
    mu = activation_mean(model, hook, rows[:mean_rows], 1) if ce else None
    n_batches = (rows.shape[0] + batch_size - 1) // batch_size
    for bi, i in enumerate(range(0, rows.shape[0], batch_size)):
        toks = rows[i : i + batch_size].to(dev)
        keep = ~torch.isin(toks, ignore.to(dev))  # [B, T]: positions the reference protocol scores
        store: dict[str, torch.Tensor] = {}

        def grab(act, hook):  # noqa: ARG001
            feats = sae.encode(act.float())
            x_hat = sae.decode(feats).to(act.dtype)
            store["x_hat"] = x_hat
            ref.add_recon(act[keep], x_hat[keep], feats[keep])
            d, f = act.shape[-1], feats.shape[-1]
            skip0.add_recon(act[:, 1:].reshape(-1, d), x_hat[:, 1:].reshape(-1, d), feats[:, 1:].reshape(-1, f))
            return act

        if not ce:
            with applied(model, extra_hooks=[(hook, grab)]):
                model(toks, stop_at_layer=_stop(hook))
        else:
            with applied(model, extra_hooks=[(hook, grab)]):
                clean = _per_token_ce(model(toks), toks, 0)
            x_hat = store["x_hat"]

            def losses_with(fn) -> torch.Tensor:
                with applied(model, extra_hooks=[(hook, lambda act, hook: fn(act))]):
                    return _per_token_ce(model(toks), toks, 0)

            def from1(value):
                def fn(act):
                    act = act.clone()
                    act[:, 1:] = value(act[:, 1:])
                    return act
                return fn

            scored = keep[:, :-1]
            ref.add_ce({"clean": clean[scored],
                        "sae": losses_with(lambda a: torch.where(keep[..., None], x_hat, a))[scored],
                        "zero": losses_with(torch.zeros_like)[scored]})
            skip0.add_ce({"clean": clean[:, 1:],
                          "sae": losses_with(from1(lambda a: x_hat[:, 1:]))[:, 1:],
                          "zero": losses_with(from1(torch.zeros_like))[:, 1:],
                          "mean": losses_with(from1(lambda a: mu.to(a.dtype).expand_as(a)))[:, 1:]})
        if progress is not None:
            progress(bi + 1, n_batches)
    out = ref.summary()
    out.update({f"{k}_skip0": v for k, v in skip0.summary().items() if k != "density"})
    out["hook"] = hook
    out["d_sae"] = sae.cfg.d_sae
    out["architecture"] = sae.cfg.architecture()
    return out


def meets_targets(summary: dict, suffix: str = "") -> dict[str, bool]:
    """The shipped-SAE targets on every held-out domain (CE recovered >= 0.95, explained variance
    >= 0.90, L0 <= 64, dead <= 5 %) on one protocol: ``suffix=""`` the reference protocol,
    ``"_skip0"`` ours."""
    return {
        "ce_recovered>=0.95": summary.get(f"ce_recovered{suffix}", float("nan")) >= 0.95,
        "explained_variance>=0.90": summary[f"explained_variance{suffix}"] >= 0.90,
        "l0<=64": summary[f"l0{suffix}"] <= 64,
        "dead<=5%": summary[f"dead_fraction{suffix}"] <= 0.05,
    }


TABLE_KEYS = ("l0", "explained_variance", "explained_variance_saebench", "ce_recovered", "ce_clean", "ce_sae",
              "ce_zero", "dead_fraction", "dense_fraction", "tokens",
              "explained_variance_skip0", "explained_variance_saebench_skip0", "ce_recovered_skip0",
              "ce_recovered_mean_skip0", "ce_clean_skip0", "ce_sae_skip0", "ce_zero_skip0", "ce_mean_skip0",
              "tokens_skip0")


def table_row(name: str, s: dict) -> dict:
    return {"sae": name, **{k: (float(s[k]) if k in s else float("nan")) for k in TABLE_KEYS}}


__all__ = ["EvalStats", "evaluate", "explained_variance", "recovered", "density_histogram", "meets_targets",
           "special_token_ids", "table_row", "asdict"]


# ---------------------------------------------------------------------------------------
# the eval table as an analysis (CLI ``mechscope sae eval``; saved, reloaded and re-run)

from typing import ClassVar  # noqa: E402

import pandas as pd  # noqa: E402

from mechscope.probes.results import Result, analysis  # noqa: E402
from mechscope.probes.texts import TextInputs, max_tokens_field, n_texts_field, text_set_field  # noqa: E402


EVAL_SOURCES = ("domains", "corpus")
WEIGHT_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class SaeEvalParams(TextInputs):
    kind: ClassVar[str] = "sae_eval"
    LEGACY_FIELDS: ClassVar[dict] = {"rows": "n_texts"}
    text_set: str | None = text_set_field(None, "shipped text set (its texts of max_tokens+ tokens, cut to max_tokens) "
                                                "instead of the per-domain eval sets (None)")
    n_texts: int | None = n_texts_field(32, "token rows to evaluate on (per domain)")
    max_tokens: int | None = max_tokens_field(128, "tokens per row taken from texts or text_set")
    saes: tuple[str, ...] = field(default=(), metadata={"help": "SAE names (default: every shipped SAE)"})
    batch_size: int = 8
    source: str = field(default="domains", metadata={
        "help": "without texts/text_set: 'domains' (the shipped per-domain held-out sets, data/sae_eval) or "
                "'corpus' (the held-out rows of a built data/sae_corpus.py corpus)", "choices": EVAL_SOURCES})
    domains: tuple[str, ...] = field(default=(), metadata={"help": "eval domains (default: every shipped one)"})
    weights_dtype: str = field(default="float32", metadata={
        "help": "cast the SAE's weights to this dtype and back before evaluating (what storing them so costs)",
        "choices": WEIGHT_DTYPES})

    def __post_init__(self):
        super().__post_init__()
        if self.n_texts is None or self.max_tokens is None or self.batch_size < 1:
            raise InputError("n_texts, max_tokens and batch_size must be >= 1.")
        for name in ("saes", "domains"):
            if not isinstance(getattr(self, name), tuple):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.source not in EVAL_SOURCES:
            raise InputError(f"Unknown eval source {self.source!r}: use one of {', '.join(EVAL_SOURCES)}.")
        if self.weights_dtype not in WEIGHT_DTYPES:
            raise InputError(f"Unknown weights_dtype {self.weights_dtype!r}: use one of {', '.join(WEIGHT_DTYPES)}.")


@dataclass(frozen=True)
class SaeEvalResult(Result):
    kind: ClassVar[str] = "sae_eval"
    table: pd.DataFrame
    density: np.ndarray  # [n_saes, d_sae]

    def to_frame(self) -> pd.DataFrame:
        return self.table

    def figures(self) -> dict:
        import plotly.graph_objects as go

        fig = go.Figure()
        labels = (self.table["sae"] + " · " + self.table["domain"]) if "domain" in self.table else self.table["sae"]
        for name, d in zip(labels, self.density):
            counts, edges = density_histogram(d)
            fig.add_trace(go.Scatter(x=(edges[:-1] + edges[1:]) / 2, y=counts, mode="lines", name=name))
        fig.update_layout(title="latent density (log10 fraction of tokens; dead latents left out)",
                          xaxis_title="log10 density", yaxis_title="latents")
        return {"density": fig}


def heldout_rows(n: int) -> np.ndarray:
    """The first ``n`` rows of the SAE corpus' held-out split (built by data/sae_corpus.py)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "sae_corpus.py"
    spec = importlib.util.spec_from_file_location("mechscope_sae_corpus", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return np.asarray(module.load_split("heldout")[:n])


def text_rows(model, texts, n: int, length: int = 128) -> np.ndarray:
    """The first ``n`` of the given texts (``probes.texts.select_texts``) that have at least
    ``length`` tokens, cut to ``length`` (BOS as the model's policy)."""
    from mechscope.probes.texts import encode_texts

    seqs = [s.numpy() for s in encode_texts(model, texts, length) if len(s) >= length]
    if not seqs:
        raise InputError(f"No text has {length}+ tokens.")
    return np.stack(seqs[:n])


def eval_domains(data_dir=None) -> list[str]:
    """The shipped per-domain eval sets present (``data/sae_eval/<domain>.jsonl``), in the
    order of ``data.sae_corpus.EVAL_DOMAINS``."""
    from mechscope.data.sae_corpus import EVAL_DOMAINS
    from mechscope.probes.datasets import resolve_data_dir

    root = resolve_data_dir(data_dir) / "sae_eval"
    return [d for d in EVAL_DOMAINS if (root / f"{d}.jsonl").exists()]


def domain_rows(domain: str, n: int | None = None, data_dir=None) -> np.ndarray:
    """The first ``n`` token rows [n, ctx] of a shipped eval domain (sha256-checked against
    ``data/checksums.json``; held-out documents, never in the training corpora)."""
    from mechscope.probes.datasets import _jsonl, resolve_data_dir

    root = resolve_data_dir(data_dir)
    have = eval_domains(data_dir)
    if domain not in have:
        raise InputError(f"No shipped eval set {domain!r}: use one of {', '.join(have) or '(none in ' + str(root) + ')'}.")
    recs = _jsonl(root, root / "sae_eval" / f"{domain}.jsonl")[:n]
    return np.asarray([r["tokens"] for r in recs], dtype=np.int64)


def cast_weights(sae, dtype: str):
    """A copy of ``sae`` whose floating parameters were rounded to ``dtype`` (stored so) and
    back to their own dtype."""
    import copy

    if dtype == "float32":
        return sae
    out = copy.deepcopy(sae)
    with torch.no_grad():
        for prm in out.parameters():
            if prm.is_floating_point():
                prm.copy_(prm.to(getattr(torch, dtype)).to(prm.dtype))
    return out


@analysis(SaeEvalParams)
def sae_eval(model, params: SaeEvalParams, progress=None) -> SaeEvalResult:
    """The eval table: one row per SAE and eval domain — the shipped per-domain held-out sets
    (default), the held-out rows of a built corpus (``source="corpus"``, domain ``corpus``) or a
    text set (domain ``texts``)."""
    from mechscope.probes.models import model_id
    from mechscope.saes.store import load_sae, shipped_names

    names = list(params.saes) or shipped_names()
    if params.texts is not None or params.text_set:
        sets = {"texts": text_rows(model, params.selected(), params.n_texts, params.max_tokens)}
    elif params.source == "corpus":
        sets = {"corpus": heldout_rows(params.n_texts)}
    else:
        doms = list(params.domains) or eval_domains()
        if not doms:
            raise InputError("No shipped per-domain eval set was found (data/sae_eval): use source='corpus' or a text set.")
        sets = {d: domain_rows(d, params.n_texts) for d in doms}
    table, dens = [], []
    total, done = len(names) * len(sets), 0
    for name in names:
        sae = cast_weights(load_sae(name), params.weights_dtype)
        for dom, rows in sets.items():
            s = evaluate(model, sae, rows, batch_size=params.batch_size)
            table.append({**table_row(name, s), "domain": dom, **meets_targets(s)})
            dens.append(s["density"])
            done += 1
            if progress is not None:
                progress(done, total)
    frame = pd.DataFrame(table)
    frame.insert(1, "domain", frame.pop("domain"))
    return SaeEvalResult(model_id=model_id(model), params=params, table=frame, density=np.stack(dens))
