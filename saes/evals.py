"""SAE evals on held-out token rows (the definitions SAE-Lens' ``evals.run_evals`` and SAEBench use).

Per token position t >= 1 of each row (position 0, the attention-sink position the SAEs
were not trained on, is left alone and not scored):

* **L0** — mean number of non-zero latents per token.
* **explained variance** — ``1 - E||x - x̂||² / Var(x)`` with the total variance
  ``Var(x) = E||x||² - ||E x||²`` (against the mean, not zero); accumulated in float64 as
  SAE-Lens' ``ExplainedVarianceCalculator`` does.
* **CE loss recovered** — ``(CE_abl - CE_sae) / (CE_abl - CE_clean)`` where CE_sae splices the
  reconstruction x̂ in at the hook (no error term), and CE_abl replaces the activation by zero
  (SAE-Lens' ``ce_loss_score``) or by its mean over the eval tokens (mean ablation).
* **density** — fraction of tokens on which each latent fires; **dead** latents never fire
  on the eval tokens, **dense** ones fire on more than 10 % of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from probes.errors import InputError
from probes.interventions import applied

DENSE_THRESHOLD = 0.1


@dataclass
class EvalStats:
    """Streaming accumulators; :meth:`summary` turns them into the eval numbers."""

    d_sae: int
    n_tokens: int = 0
    l0_sum: float = 0.0
    sum_x: torch.Tensor | None = None  # float64 [d_in]
    sum_sq_norm: float = 0.0
    sum_sq_resid: float = 0.0
    fire_counts: torch.Tensor | None = None  # int64 [d_sae]
    ce: dict = field(default_factory=lambda: {"clean": 0.0, "sae": 0.0, "zero": 0.0, "mean": 0.0})
    ce_tokens: int = 0

    def add_recon(self, x: torch.Tensor, x_hat: torch.Tensor, acts: torch.Tensor) -> None:
        """x, x_hat [N, d_in]; acts [N, d_sae]."""
        x64, xh64, acts = x.detach().double(), x_hat.detach().double(), acts.detach()
        self.n_tokens += x.shape[0]
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
            self.ce[k] += float(v.double().sum())
        self.ce_tokens += n

    def summary(self) -> dict:
        if self.n_tokens == 0:
            raise InputError("No tokens were evaluated.")
        mean = self.sum_x / self.n_tokens
        variance = self.sum_sq_norm / self.n_tokens - float(mean.pow(2).sum())
        density = (self.fire_counts.double() / self.n_tokens).numpy()
        out = {
            "tokens": self.n_tokens,
            "l0": self.l0_sum / self.n_tokens,
            "explained_variance": 1.0 - (self.sum_sq_resid / self.n_tokens) / variance,
            "mse": self.sum_sq_resid / self.n_tokens,
            "dead_fraction": float((density == 0).mean()),
            "dense_fraction": float((density > DENSE_THRESHOLD).mean()),
            "density": density,
        }
        if self.ce_tokens:
            ce = {k: v / self.ce_tokens for k, v in self.ce.items()}
            out.update({f"ce_{k}": v for k, v in ce.items()})
            out["ce_recovered_zero"] = recovered(ce["clean"], ce["sae"], ce["zero"])
            out["ce_recovered_mean"] = recovered(ce["clean"], ce["sae"], ce["mean"])
        return out


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
    lp = logits[:, skip:-1].float().log_softmax(-1)
    return -lp.gather(-1, tokens[:, skip + 1 :, None]).squeeze(-1).reshape(-1)


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


@torch.no_grad()
def evaluate(model, sae, rows, batch_size: int = 8, skip: int = 1, ce: bool = True,
             mean_rows: int = 64, progress=None) -> dict:
    """All eval numbers of ``sae`` at its hook over ``rows`` [N, T] of held-out token ids."""
    from saes.store import check_fits

    hook = check_fits(sae, model)
    rows = _rows_tensor(rows)
    dev = model.cfg.device
    sae = sae.to(dev)
    stats = EvalStats(sae.cfg.d_sae)
    mu = activation_mean(model, hook, rows[:mean_rows], skip) if ce else None
    n_batches = (rows.shape[0] + batch_size - 1) // batch_size
    for bi, i in enumerate(range(0, rows.shape[0], batch_size)):
        toks = rows[i : i + batch_size].to(dev)
        store: dict[str, torch.Tensor] = {}

        def grab(act, hook):  # noqa: ARG001
            x = act[:, skip:]
            feats = sae.encode(x.float())
            store["x_hat"] = sae.decode(feats).to(act.dtype)
            stats.add_recon(x.reshape(-1, x.shape[-1]), store["x_hat"].reshape(-1, x.shape[-1]),
                            feats.reshape(-1, feats.shape[-1]))
            return act

        if not ce:
            with applied(model, extra_hooks=[(hook, grab)]):
                model(toks, stop_at_layer=_stop(hook))
        else:
            with applied(model, extra_hooks=[(hook, grab)]):
                clean = model(toks)
            losses = {"clean": _per_token_ce(clean, toks, skip)}
            for key, fn in (("sae", lambda a: store["x_hat"]), ("zero", lambda a: torch.zeros_like(a)),
                            ("mean", lambda a: mu.to(a.dtype).expand_as(a))):
                def splice(act, hook, fn=fn):  # noqa: ARG001
                    act = act.clone()
                    act[:, skip:] = fn(act[:, skip:])
                    return act

                with applied(model, extra_hooks=[(hook, splice)]):
                    losses[key] = _per_token_ce(model(toks), toks, skip)
            stats.add_ce(losses)
        if progress is not None:
            progress(bi + 1, n_batches)
    out = stats.summary()
    out["hook"] = hook
    out["d_sae"] = sae.cfg.d_sae
    out["architecture"] = sae.cfg.architecture()
    return out


def meets_targets(summary: dict) -> dict[str, bool]:
    """The shipped-SAE targets of issue 10."""
    return {
        "ce_recovered>=0.90": summary.get("ce_recovered_zero", float("nan")) >= 0.90,
        "explained_variance>=0.85": summary["explained_variance"] >= 0.85,
        "l0<=64": summary["l0"] <= 64,
        "dead<=5%": summary["dead_fraction"] <= 0.05,
    }


def table_row(name: str, s: dict) -> dict:
    keys = ("l0", "explained_variance", "ce_recovered_zero", "ce_recovered_mean", "ce_clean", "ce_sae",
            "ce_zero", "ce_mean", "dead_fraction", "dense_fraction", "tokens")
    return {"sae": name, **{k: (float(s[k]) if k in s else float("nan")) for k in keys}}


__all__ = ["EvalStats", "evaluate", "recovered", "density_histogram", "meets_targets", "table_row", "asdict"]


# ---------------------------------------------------------------------------------------
# the eval table as an analysis (CLI ``mechscope sae eval``; saved, reloaded and re-run)

from typing import ClassVar  # noqa: E402

import pandas as pd  # noqa: E402

from probes.results import Params, Result, analysis  # noqa: E402


@dataclass(frozen=True)
class SaeEvalParams(Params):
    kind: ClassVar[str] = "sae_eval"
    saes: tuple[str, ...] = field(default=(), metadata={"help": "SAE names (default: every shipped SAE)"})
    rows: int = field(default=32, metadata={"help": "token rows to evaluate on"})
    texts: str = field(default="", metadata={"help": "a shipped text set (128-token rows) instead of the held-out corpus"})
    batch_size: int = 8

    def __post_init__(self):
        if self.rows < 1 or self.batch_size < 1:
            raise InputError("rows and batch_size must be >= 1.")
        if not isinstance(self.saes, tuple):
            object.__setattr__(self, "saes", tuple(self.saes))


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
        for name, d in zip(self.table["sae"], self.density):
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


def text_rows(model, name: str, n: int, length: int = 128) -> np.ndarray:
    from probes.datasets import load_texts
    from probes.tokens import encode_batch

    seqs = [s[:length].numpy() for s in encode_batch(model, load_texts(name)) if len(s) >= length]
    if not seqs:
        raise InputError(f"Text set {name!r} has no text of {length}+ tokens.")
    return np.stack(seqs[:n])


@analysis(SaeEvalParams)
def sae_eval(model, params: SaeEvalParams, progress=None) -> SaeEvalResult:
    """The eval table (one row per SAE) over held-out corpus rows or a shipped text set."""
    from probes.models import model_id
    from saes.store import load_sae, shipped_names

    names = list(params.saes) or shipped_names()
    rows = text_rows(model, params.texts, params.rows) if params.texts else heldout_rows(params.rows)
    table, dens = [], []
    for i, name in enumerate(names):
        s = evaluate(model, load_sae(name), rows, batch_size=params.batch_size)
        table.append({**table_row(name, s), **meets_targets(s)})
        dens.append(s["density"])
        if progress is not None:
            progress(i + 1, len(names))
    return SaeEvalResult(model_id=model_id(model), params=params, table=pd.DataFrame(table), density=np.stack(dens))
