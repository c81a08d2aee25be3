"""Contrastive search beside greedy and nucleus sampling: repetition, diversity and the
isotropy of what each generates (Su et al.; docs/isotropy.md#contrastive-search)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch

from mechscope.analyses.isotropy.scores import mean_pair_cosine
from mechscope.probes import capture, hooknames
from mechscope.probes import contrastive as _contrastive  # noqa: F401  (registers the "contrastive" strategy)
from mechscope.probes.errors import InputError
from mechscope.probes.models import model_id
from mechscope.probes.results import Result, analysis
from mechscope.probes.texts import TextInputs, encode_texts, max_tokens_field, n_texts_field, text_set_field, texts_field


def rep_n(tokens: Sequence[int], n: int) -> float:
    """Su et al.'s rep-n = 100 × (1 − |unique n-grams| / |n-grams|) of one generation."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return float("nan")
    return 100.0 * (1 - len(set(grams)) / len(grams))


def diversity(tokens: Sequence[int]) -> float:
    """Π_{n=2..4} (1 − rep-n / 100)."""
    return float(np.prod([1 - rep_n(tokens, n) / 100 for n in (2, 3, 4)]))


def final_states(model, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> torch.Tensor:
    """Last-layer states after the final norm for the generated tokens [n, d] (teacher-forced)."""
    site = hooknames.name("resid_post", model.cfg.n_layers - 1)
    out = capture.run(model, [list(prompt_ids) + list(new_ids)], capture=[site]).activations[site][0]
    from mechscope.probes.readout import final_norm

    with torch.no_grad():
        return final_norm(model, out.to(model.cfg.device))[len(prompt_ids):].double().cpu()


@dataclass(frozen=True)
class DecodingIsotropyResult(Result):
    """Per strategy and prompt: rep-2/3/4, diversity, isotropy of the generation's states."""

    table: pd.DataFrame
    texts: tuple  # (strategy, prompt index, continuation) per row

    kind = "decoding_isotropy"

    def summary(self) -> pd.DataFrame:
        cols = ["rep_2", "rep_3", "rep_4", "diversity", "isotropy", "ms_per_token"]
        return self.table.groupby("strategy", sort=False)[cols].mean().reset_index()

    def to_frame(self) -> pd.DataFrame:
        return self.table.drop(columns=["ms_per_token"])  # wall-clock time: not part of what re-runs

    def figures(self) -> dict:
        import plotly.express as px

        df = self.summary().melt(id_vars=["strategy"], value_vars=["rep_2", "rep_3", "rep_4"], var_name="metric")
        f1 = px.bar(df, x="metric", y="value", color="strategy", barmode="group", title="Repetition rate (%)")
        df2 = self.summary().melt(id_vars=["strategy"], value_vars=["diversity", "isotropy"], var_name="metric")
        f2 = px.bar(df2, x="metric", y="value", color="strategy", barmode="group",
                    title="Diversity and isotropy (1 − mean cosine of the generated tokens' final-layer states)")
        return {"repetition": f1, "diversity_isotropy": f2}


@dataclass(frozen=True)
class DecodingIsotropyParams(TextInputs):
    """Parameters of :func:`decoding_isotropy`: the prompts are ``texts`` (used whole), or
    the first ``n_texts`` prose texts cut to ``max_tokens``. Su et al. use 32-token prefixes;
    defaults are kept small for a CPU."""

    kind: ClassVar[str] = "decoding_isotropy"
    LEGACY_FIELDS: ClassVar[dict] = {"prompts": "texts", "n_prompts": "n_texts", "prompt_tokens": "max_tokens"}
    texts: tuple | dict | None = texts_field("prompts (strings or token-id lists; None: prefixes of text_set)")
    text_set: str | None = text_set_field("prose", "shipped text set the prompts are prefixes of")
    n_texts: int | None = n_texts_field(4, "prefixes to use (None: every text of the set)")
    max_tokens: int | None = max_tokens_field(32, "tokens per prompt (None: whole texts)")
    max_new_tokens: int = field(default=64, metadata={"help": "tokens to generate"})
    alpha: float = field(default=0.6, metadata={"help": "contrastive search α"})
    k: int = field(default=4, metadata={"help": "contrastive search k"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling p"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})

    def __post_init__(self):
        from mechscope.probes.contrastive import check_alpha_k

        super().__post_init__()
        check_alpha_k(self.alpha, self.k)
        v = self.max_new_tokens
        if isinstance(v, bool) or not isinstance(v, int) or v < 4:
            raise InputError(f"max_new_tokens must be an integer >= 4, not {v!r}.")

    @classmethod
    def upgrade_saved(cls, fields: dict) -> dict:
        """Results saved with ``prompts`` used them whole: their ``max_tokens`` becomes None."""
        out = super().upgrade_saved(fields)
        if fields.get("prompts") is not None:
            out["max_tokens"] = None
        return out


@analysis(DecodingIsotropyParams)
def decoding_isotropy(model, params: DecodingIsotropyParams, progress: Callable[[int, int], None] | None = None):
    """Greedy, nucleus sampling and contrastive search on the same prompts: repetition,
    diversity and the isotropy of what each generates."""
    import time

    from mechscope.probes.contrastive import Contrastive
    from mechscope.probes.decoding import Greedy, Sample, generate

    prompts = [s.tolist() for s in encode_texts(model, params.selected(), params.max_tokens, prepend_bos=False)]
    strategies = {"greedy": Greedy(), f"sampling (top-p {params.top_p:g})": Sample(top_p=params.top_p, seed=params.seed),
                  f"contrastive (α {params.alpha:g}, k {params.k})": Contrastive(params.alpha, params.k)}
    rows, texts = [], []
    total, done = len(prompts) * len(strategies), 0
    for name, strat in strategies.items():
        for i, p in enumerate(prompts):
            t0 = time.perf_counter()
            gen = generate(model, p, params.max_new_tokens, strat, stop_at_eos=False)
            ms = 1000 * (time.perf_counter() - t0) / max(len(gen.new_tokens), 1)
            new = list(gen.new_tokens)
            hs = final_states(model, p, new)
            rows.append({"strategy": name, "prompt": i, "n_tokens": len(new), "rep_2": rep_n(new, 2),
                         "rep_3": rep_n(new, 3), "rep_4": rep_n(new, 4), "diversity": diversity(new),
                         "isotropy": 1 - mean_pair_cosine(hs) if len(new) >= 2 else float("nan"), "ms_per_token": ms})
            texts.append((name, i, gen.text))
            done += 1
            if progress is not None:
                progress(done, total)
    return DecodingIsotropyResult(model_id=model_id(model), params=params, table=pd.DataFrame(rows), texts=tuple(texts))
