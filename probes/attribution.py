"""Patching and gradient attribution of attention heads and MLP layers.

The probe layer's only code that runs with gradients. Nodes are every attention head — its
output ``z`` (``blocks.L.attn.hook_z``, [batch, pos, head, d_head]; TransformerLens expands
grouped-query K/V to the query heads before ``z``, so a node is a *query* head and GQA needs no
special case: SmolLM2's 9 query heads sharing 3 K/V heads are 9 nodes) — and every MLP layer
(``blocks.L.hook_mlp_out``). Everything works on :class:`Pairs`: clean and corrupted prompts of
equal token length, right-padded per pair, with answer / distractor token sets; the metric is
the logit difference ``mean(logit[answers]) − mean(logit[distractors])`` at each prompt's last
real position.

* :func:`patch_nodes` — activation patching (ground truth). ``direction="noising"`` runs the
  clean prompts with one node's activation (all positions) taken from the corrupted run;
  ``"denoising"`` the reverse. Batched: per layer, ONE forward from ``resid_pre`` of that
  layer (``start_at_layer``) over ``(n_heads + 1) × prompts`` rows — row block h patches head
  h, the last block patches the MLP.
* :func:`attribution_nodes` — attribution patching (AtP, Nanda 2023 / Syed et al. 2023):
  ``(a_src − a_tgt) · ∂metric/∂a`` at the target run, summed over positions and features; one
  forward+backward on the target prompts plus one forward on the source prompts. With
  ``steps = m > 1`` it is EAP-IG (Hanna et al. 2024, "EAP-IG-inputs" of hannamw/EAP-IG): the
  gradient is averaged over m runs of the target prompts whose input embeddings are
  ``e_src + (k/m)(e_tgt − e_src)``, k = 0..m−1 — a left Riemann sum that starts at the source
  run (in noising the corrupted run: the reference's ``corrupted + k/m·(clean − corrupted)``;
  in denoising, which the reference does not define, the clean run) and stops one step short of
  the target — times the same ``a_src − a_tgt`` of the real runs.
  ``steps=1`` is plain AtP, the gradient at the target run (tested). Cost: m forward+backward
  passes + 1 forward.

Both return the raw change of the mean metric; :func:`normalise` turns it into the fraction of
the clean–corrupt gap (``(LD_patched − LD_target) / (LD_source − LD_target)``).

:func:`mean_ablated_metric` runs the prompts with a chosen set of heads replaced by their mean
output (over the reference prompts and positions) — the faithfulness curves.
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import torch

from mechscope.probes import hooknames
from mechscope.probes.errors import InputError
from mechscope.probes.locks import model_lock
from mechscope.probes.readout import logits_from_resid
from mechscope.probes.tokens import check_length, single_token, text_ids

Direction = Literal["noising", "denoising"]
ProgressFn = Callable[[int, int], None]


@dataclass
class Pairs:
    """Clean / corrupted prompts (right-padded [N, T]) with per-prompt answer and distractor ids."""

    clean: torch.Tensor
    corrupt: torch.Tensor
    lengths: torch.Tensor  # [N]
    answers: torch.Tensor  # [N, ka] ids (padded with the first id)
    answer_mask: torch.Tensor  # [N, ka] bool
    distractors: torch.Tensor
    distractor_mask: torch.Tensor

    def __len__(self) -> int:
        return self.clean.shape[0]

    def subset(self, idx) -> "Pairs":
        idx = torch.as_tensor(idx, dtype=torch.long)
        t = int(self.lengths[idx].max())
        return Pairs(self.clean[idx, :t], self.corrupt[idx, :t], self.lengths[idx], self.answers[idx],
                     self.answer_mask[idx], self.distractors[idx], self.distractor_mask[idx])

    def tokens(self, which: str) -> torch.Tensor:
        return self.clean if which == "clean" else self.corrupt


def _id_sets(model, sets: Sequence[Sequence], what: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = []
    for i, s in enumerate(sets):
        if isinstance(s, (str, int)):
            s = [s]
        if not s:
            raise InputError(f"Prompt pair {i} has no {what}.")
        try:
            ids.append([single_token(model, x) for x in s])
        except InputError as e:
            raise InputError(f"Prompt pair {i}: every {what[:-1]} must be a single token — {e}") from None
    k = max(map(len, ids))
    out = torch.tensor([r + [r[0]] * (k - len(r)) for r in ids], dtype=torch.long)
    mask = torch.tensor([[j < len(r) for j in range(k)] for r in ids])
    return out, mask


def make_pairs(model, clean: Sequence, corrupt: Sequence, answers: Sequence, distractors: Sequence) -> Pairs:
    """Build :class:`Pairs` from texts (no BOS added: the model's policy is applied by the
    caller's texts) or id lists. Refuses, with one message, pairs of unequal token length,
    answers or distractors that are not single tokens, and empty input."""
    clean, corrupt = list(clean), list(corrupt)
    if not clean:
        raise InputError("The task has no prompts.")
    if not (len(clean) == len(corrupt) == len(answers) == len(distractors)):
        raise InputError("A task needs as many corrupted prompts, answers and distractors as clean prompts.")

    def ids(x):
        if isinstance(x, str):
            return text_ids(model, x)
        return [int(i) for i in x]

    rows_c, rows_k = [], []
    for i, (c, k) in enumerate(zip(clean, corrupt)):
        a, b = ids(c), ids(k)
        if len(a) != len(b):
            raise InputError(f"Prompt pair {i}: the clean prompt is {len(a)} tokens and the corrupted one "
                             f"{len(b)}; patching needs equal lengths.")
        check_length(len(a), model.cfg.n_ctx)
        rows_c.append(a)
        rows_k.append(b)
    lengths = torch.tensor([len(r) for r in rows_c])
    t = int(lengths.max())
    pad = lambda rows: torch.tensor([r + [0] * (t - len(r)) for r in rows], dtype=torch.long)  # noqa: E731
    ans, am = _id_sets(model, answers, "answers")
    dis, dm = _id_sets(model, distractors, "distractors")
    return Pairs(pad(rows_c), pad(rows_k), lengths, ans, am, dis, dm)


def logit_diff(logits: torch.Tensor, pairs: Pairs, rows: torch.Tensor | None = None) -> torch.Tensor:
    """[B] logit difference at each row's last real position. ``logits`` [B, T, V] (or [B, V]
    already at the last position); ``rows`` maps batch rows to pair indices (default 0..B−1)."""
    b = logits.shape[0]
    rows = torch.arange(b) if rows is None else rows
    if logits.ndim == 3:
        last = (pairs.lengths[rows] - 1).to(logits.device)
        logits = logits[torch.arange(b, device=logits.device), last]
    a, am = pairs.answers[rows].to(logits.device), pairs.answer_mask[rows].to(logits.device)
    d, dm = pairs.distractors[rows].to(logits.device), pairs.distractor_mask[rows].to(logits.device)
    la = (logits.gather(1, a) * am).sum(1) / am.sum(1)
    ld = (logits.gather(1, d) * dm).sum(1) / dm.sum(1)
    return la - ld


def last_logits(model, x: torch.Tensor, lengths: torch.Tensor, start_at_layer: int | None = None,
                tokens: torch.Tensor | None = None) -> torch.Tensor:
    """[B, d_vocab] logits at each row's last real position only: the blocks run to the end
    (``stop_at_layer=n_layers`` returns the final residual), then the final norm and the
    unembedding are applied to one position per row (the unembedding of every position — 49k ×
    576 per token on SmolLM2 — would cost a quarter of the forward pass for nothing)."""
    resid = model(x, start_at_layer=start_at_layer, stop_at_layer=model.cfg.n_layers, tokens=tokens)
    last = (lengths - 1).to(resid.device)
    return logits_from_resid(model, resid[torch.arange(resid.shape[0], device=resid.device), last])


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield torch.arange(s, min(n, s + size))


def _check_direction(direction: str) -> tuple[str, str]:
    if direction == "noising":
        return "clean", "corrupt"  # target run, source of the patched activation
    if direction == "denoising":
        return "corrupt", "clean"
    raise InputError(f"Direction must be 'noising' or 'denoising', not {direction!r}.")


def baseline_metrics(model, pairs: Pairs, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt logit difference on the clean and on the corrupted prompts."""
    out = {"clean": [], "corrupt": []}
    with model_lock(model), torch.no_grad():
        for idx in _chunks(len(pairs), batch_size):
            sub = pairs.subset(idx)
            for which in out:
                logits = last_logits(model, sub.tokens(which).to(model.cfg.device), sub.lengths)
                out[which].append(logit_diff(logits, sub).double().cpu())
    return torch.cat(out["clean"]).numpy(), torch.cat(out["corrupt"]).numpy()


@dataclass
class NodeEffects:
    """Mean metric change per node: heads [n_layers, n_heads], mlp [n_layers]; and the mean
    metric of the target and source runs (for :func:`normalise`)."""

    heads: np.ndarray
    mlp: np.ndarray
    target: float
    source: float
    passes: dict  # forward / backward passes (in prompt-batches of the whole set) spent

    def normalised(self) -> tuple[np.ndarray, np.ndarray]:
        return normalise(self.heads, self.target, self.source), normalise(self.mlp, self.target, self.source)


def normalise(delta: np.ndarray, target: float, source: float) -> np.ndarray:
    """Fraction of the target→source gap moved: ``delta / (source − target)``."""
    gap = source - target
    if abs(gap) < 1e-12:
        raise InputError("The clean and corrupted prompts give the same mean logit difference: nothing to patch.")
    return np.asarray(delta, dtype=np.float64) / gap


def patch_nodes(model, pairs: Pairs, direction: Direction = "noising", batch_size: int = 8,
                mlp: bool = True, progress: ProgressFn | None = None, layers: Sequence[int] | None = None) -> NodeEffects:
    """Activation patching of every head (and MLP layer), batched by layer (see module doc).
    ``layers`` restricts the sweep (other layers' effects are left at 0)."""
    tgt_name, src_name = _check_direction(direction)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    sums = torch.zeros(L, H + 1, dtype=torch.float64)
    base_t = base_s = 0.0
    n = len(pairs)
    z_names = [hooknames.name("z", l) for l in range(L)]
    mlp = mlp and not model.cfg.attn_only
    m_names = [hooknames.name("mlp_out", l) for l in range(L)] if mlp else []
    r_names = [hooknames.name("resid_pre", l) for l in range(L)]
    sweep = list(range(L)) if layers is None else [int(l) for l in layers]
    done, total = 0, n * len(sweep)
    dev = model.cfg.device
    with model_lock(model), torch.no_grad():
        for idx in _chunks(n, batch_size):
            sub = pairs.subset(idx)
            b = len(idx)
            src, tgt = {}, {}
            with model.hooks(fwd_hooks=[(nm, _keep_into(src)) for nm in z_names + m_names], reset_hooks_end=True):
                logits_s = last_logits(model, sub.tokens(src_name).to(dev), sub.lengths)
            base_s += float(logit_diff(logits_s, sub).double().sum())
            with model.hooks(fwd_hooks=[(r, _keep_into(tgt)) for r in r_names], reset_hooks_end=True):
                logits_t = last_logits(model, sub.tokens(tgt_name).to(dev), sub.lengths)
            base_t += float(logit_diff(logits_t, sub).double().sum())
            nb = H + 1 if mlp else H
            rows = torch.arange(b).repeat(nb)
            for l in sweep:
                resid = tgt[r_names[l]].repeat(nb, 1, 1)
                zs, ms = src[z_names[l]], (src[m_names[l]] if mlp else None)

                def patch_z(z, hook, zs=zs, b=b):
                    z = z.clone()
                    for h in range(H):
                        z[h * b:(h + 1) * b, :, h] = zs[:, :, h]
                    return z

                def patch_m(m, hook, ms=ms, b=b):
                    m = m.clone()
                    m[H * b:(H + 1) * b] = ms
                    return m

                hooks = [(z_names[l], patch_z)] + ([(m_names[l], patch_m)] if mlp else [])
                with model.hooks(fwd_hooks=hooks, reset_hooks_end=True):
                    logits = last_logits(model, resid, sub.lengths.repeat(nb), start_at_layer=l,
                                         tokens=sub.tokens(tgt_name).repeat(nb, 1).to(dev))
                ld = logit_diff(logits, sub, rows).double().cpu().reshape(nb, b).sum(1)
                sums[l, :nb] += ld
                done += b
                if progress:
                    progress(done, total)
    mean = sums / n
    t, s = base_t / n, base_s / n
    swept = torch.zeros(L, dtype=torch.bool)
    swept[sweep] = True
    mean[~swept] = t
    return NodeEffects(heads=(mean[:, :H] - t).numpy(), mlp=(mean[:, H] - t).numpy() if mlp else np.zeros(L),
                       target=t, source=s,
                       passes={"forward_prompt_sets": 2 + len(sweep) * (H + 1 if mlp else H),
                               "note": f"per layer one forward over {H + 1 if mlp else H}× the prompts, from that layer on"})


def _keep_into(store: dict):
    def hook(x, hook):
        store[hook.name] = x.detach()

    return hook


def _embed_hooks(model):
    """Hook names of the input embeddings (token, and positional where the model has one)."""
    embed, pos_embed = hooknames.name("embed"), hooknames.name("pos_embed")
    names = [embed] if embed in model.hook_dict else []
    if model.cfg.positional_embedding_type in ("standard", "shortformer") and pos_embed in model.hook_dict:
        names.append(pos_embed)
    return names


def attribution_nodes(model, pairs: Pairs, direction: Direction = "noising", steps: int = 1,
                      batch_size: int = 8, progress: ProgressFn | None = None) -> NodeEffects:
    """Attribution patching (``steps=1``) or EAP-IG (``steps>1``) scores for every head and MLP
    layer: the estimated change of the mean metric when the node takes its source-run value."""
    if not isinstance(steps, int) or steps < 1:
        raise InputError("EAP-IG needs steps >= 1.")
    tgt_name, src_name = _check_direction(direction)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    z_names = [hooknames.name("z", l) for l in range(L)]
    m_names = [] if model.cfg.attn_only else [hooknames.name("mlp_out", l) for l in range(L)]
    e_names = _embed_hooks(model)
    heads = torch.zeros(L, H, dtype=torch.float64)
    mlps = torch.zeros(L, dtype=torch.float64)
    base_t = base_s = 0.0
    n = len(pairs)
    dev = model.cfg.device
    done = 0
    with model_lock(model):
        for idx in _chunks(n, batch_size):
            sub = pairs.subset(idx)
            keep = set(z_names + m_names + e_names)
            with torch.no_grad():
                src, tgt = {}, {}
                with model.hooks(fwd_hooks=[(nm, _keep_into(src)) for nm in keep], reset_hooks_end=True):
                    logits_s = last_logits(model, sub.tokens(src_name).to(dev), sub.lengths)
                with model.hooks(fwd_hooks=[(nm, _keep_into(tgt)) for nm in keep], reset_hooks_end=True):
                    logits_t = last_logits(model, sub.tokens(tgt_name).to(dev), sub.lengths)
            base_s += float(logit_diff(logits_s, sub).double().sum())
            base_t += float(logit_diff(logits_t, sub).double().sum())
            grads = ig_gradients(model, sub, sub.tokens(tgt_name).to(dev), src, tgt, e_names, z_names + m_names, steps)
            mask = torch.arange(sub.clean.shape[1])[None, :] < sub.lengths[:, None]
            mask = mask.to(dev)
            for l in range(L):
                dz = (src[z_names[l]] - tgt[z_names[l]]) * grads[z_names[l]]  # [b, T, H, dh]
                heads[l] += (dz.sum(-1) * mask[..., None]).sum((0, 1)).double().cpu()
                if m_names:
                    dm = (src[m_names[l]] - tgt[m_names[l]]) * grads[m_names[l]]
                    mlps[l] += (dm.sum(-1) * mask).sum().double().cpu()
            done += len(idx)
            if progress:
                progress(done, n)
    t, s = base_t / n, base_s / n
    return NodeEffects(heads=(heads / n).numpy(), mlp=(mlps / n).numpy(), target=t, source=s,
                       passes={"forward_prompt_sets": 2 + steps, "backward_prompt_sets": steps})


def ig_fractions(steps: int) -> list[float]:
    """Where EAP-IG takes its gradients: the fractions β of the way from the source run's input
    embeddings to the target's, ``e = e_src + β (e_tgt − e_src)``. ``steps = m > 1``: β = k/m,
    k = 0 … m − 1 (hannamw/EAP-IG ``get_scores_eap_ig``: ``corrupted + k/m·(clean − corrupted)``
    with the corrupted run as the source); ``steps = 1``: β = 1, the target run (attribution
    patching)."""
    if not isinstance(steps, int) or steps < 1:
        raise InputError("EAP-IG needs steps >= 1.")
    return [1.0] if steps == 1 else [k / steps for k in range(steps)]


def ig_gradients(model, sub: Pairs, tokens: torch.Tensor, emb_src: dict, emb_tgt: dict, e_names: Sequence[str],
                 names: Sequence[str], steps: int, context=contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """Gradients of the summed logit difference (run on ``tokens``, the target prompts) w.r.t.
    the activations at ``names``, averaged over the points :func:`ig_fractions` of the straight
    line from the source's input embeddings (``emb_src``) to the target's (``emb_tgt``) at hooks
    ``e_names``; ``steps = 1`` is the plain gradient at the target (attribution patching).
    ``context()`` is entered around each forward (e.g. split per-head inputs)."""
    grads: dict[str, torch.Tensor] = {}
    fractions = ig_fractions(steps)
    for beta in fractions:
        kept: dict[str, torch.Tensor] = {}

        def embed(x, hook, beta=beta):
            s, t = emb_src[hook.name], emb_tgt[hook.name]
            e = t if beta == 1.0 else s + beta * (t - s)
            return e.detach().clone().requires_grad_(True)

        def keep(x, hook):
            kept[hook.name] = x
            return x

        hooks = [(e, embed) for e in e_names] + [(nm, keep) for nm in names]
        with torch.enable_grad(), context(), model.hooks(fwd_hooks=hooks, reset_hooks_end=True):
            metric = logit_diff(last_logits(model, tokens, sub.lengths), sub).sum()
            gs = torch.autograd.grad(metric, [kept[nm] for nm in names])
        for nm, g in zip(names, gs):
            g = g.detach() / len(fractions)
            grads[nm] = grads[nm] + g if nm in grads else g
    return grads


def _z_batches(model, tokens: torch.Tensor, lengths: torch.Tensor, batch_size: int):
    """Per batch of prompts: (row indices, padded length t, every layer's ``z`` [b, t, H, d_head]),
    the blocks run under the model's lock and stopped after the last layer's attention."""
    L = model.cfg.n_layers
    names = [hooknames.name("z", l) for l in range(L)]
    with model_lock(model), torch.no_grad():
        for idx in _chunks(tokens.shape[0], batch_size):
            t = int(lengths[idx].max())
            cache = {}
            with model.hooks(fwd_hooks=[(nm, _keep_into(cache)) for nm in names], reset_hooks_end=True):
                model(tokens[idx, :t].to(model.cfg.device), stop_at_layer=L)
            yield idx, t, [cache[nm] for nm in names]


def head_means(model, tokens: torch.Tensor, lengths: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """[n_layers, n_heads, d_head]: each head's ``z`` averaged over the prompts' real positions."""
    L = model.cfg.n_layers
    acc = torch.zeros(L, model.cfg.n_heads, model.cfg.d_head, dtype=torch.float64)
    count = 0
    for idx, t, zs in _z_batches(model, tokens, lengths, batch_size):
        mask = (torch.arange(t)[None, :] < lengths[idx][:, None]).to(model.cfg.device)
        for l, z in enumerate(zs):
            acc[l] += (z * mask[..., None, None]).sum((0, 1)).double().cpu()
        count += int(lengths[idx].sum())
    return (acc / count).to(model.cfg.dtype)


def mean_ablated_metric(model, pairs: Pairs, ablate: np.ndarray, means: torch.Tensor, which: str = "clean",
                        batch_size: int = 16) -> float:
    """Mean logit difference with the heads where ``ablate`` [n_layers, n_heads] is True replaced
    (at every position) by ``means`` (from :func:`head_means`)."""
    ablate = torch.as_tensor(np.asarray(ablate, dtype=bool))
    if tuple(ablate.shape) != (model.cfg.n_layers, model.cfg.n_heads):
        raise InputError(f"The ablation mask must be [{model.cfg.n_layers}, {model.cfg.n_heads}].")
    hooks = []
    for l in range(model.cfg.n_layers):
        hs = torch.nonzero(ablate[l]).flatten().tolist()
        if not hs:
            continue

        def fn(z, hook, hs=hs, mu=means[l].to(model.cfg.device)):
            z = z.clone()
            z[:, :, hs] = mu[hs].to(z.dtype)
            return z

        hooks.append((hooknames.name("z", l), fn))
    total = 0.0
    with model_lock(model), torch.no_grad(), model.hooks(fwd_hooks=hooks, reset_hooks_end=True):
        for idx in _chunks(len(pairs), batch_size):
            sub = pairs.subset(idx)
            logits = last_logits(model, sub.tokens(which).to(model.cfg.device), sub.lengths)
            total += float(logit_diff(logits, sub).double().sum())
    return total / len(pairs)


def head_vectors(model, tokens: torch.Tensor, lengths: torch.Tensor, batch_size: int = 16,
                 isometric: bool = False, positions: str = "mean") -> torch.Tensor:
    """[N, n_layers * n_heads, d_model]: each head's output ``z_h W_O[h]`` averaged over each
    prompt's real positions (the discrete-SAE method's input, O'Neill & Bui 2024);
    ``positions="last"``: at each prompt's last real position instead (a diagnostic variant).

    ``isometric=True`` returns [N, nodes, d_head] instead (the input of the per-head-SAE
    variant): the same vectors in an orthonormal basis of the row space of ``W_O[h]`` (where
    every output of head h lies), so a head's norms and inner products are exactly those of its
    d_model vectors while the input is d_head wide."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    basis = None
    if isometric:  # Q_h: [d_model, r] orthonormal columns spanning the rows of W_O[l, h]
        basis = []
        for l in range(L):
            q, _ = torch.linalg.qr(model.W_O[l].detach().double().transpose(1, 2))  # [H, d_model, d_head]
            basis.append(q.to(model.cfg.dtype))
    if positions not in ("mean", "last"):
        raise InputError(f"Head-vector positions must be 'mean' or 'last', not {positions!r}.")
    out = []
    with torch.no_grad():
        for idx, t, zs in _z_batches(model, tokens, lengths, batch_size):
            mask = (torch.arange(t)[None, :] < lengths[idx][:, None]).to(model.cfg.device).to(model.cfg.dtype)
            per_layer = []
            for l, z in enumerate(zs):
                if positions == "last":
                    zmean = z[torch.arange(len(idx)), (lengths[idx] - 1).to(z.device)]  # [b, H, dh]
                else:
                    zmean = (z * mask[..., None, None]).sum(1) / mask.sum(1)[:, None, None]
                out_l = torch.einsum("bhd,hdm->bhm", zmean, model.W_O[l])
                if basis is not None:
                    out_l = torch.einsum("bhm,hmr->bhr", out_l, basis[l])
                per_layer.append(out_l)
            out.append(torch.cat(per_layer, 1).cpu())
    return torch.cat(out)

