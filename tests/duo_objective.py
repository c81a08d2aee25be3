"""DuoAttention's gate training written out directly, for tests (Xiao et al. 2024; the
reference's ``duo_attn/train.py``): an independent statement of the objective and of the
optimiser, to check :func:`analyses.duo_attention.train_gates` against.

* Streaming attention: query t sees key j ≤ t when j < n_sink or t − j < window.
* A query head h of layer l is gated by its KV head's α[l, h // group] (GQA):
  ``"shared"``: pattern = α·softmax(scores) + (1 − α)·softmax(streaming scores);
  ``"reference"``: z = α·z_unmodified + (1 − α)·z_streaming (the full branch is the unmodified
  model's attention output on the same text).
* Final hidden states: the last block's residual stream through the final RMS norm,
  x / √(mean x² + ε) · w, computed here by hand.
* loss = mean over the answer positions (≥ answer_start) of mean_d (h_gated − h)² + λ · mean|α|.
* AdamW (β = 0.9, 0.999, ε = 1e-8, no weight decay), learning rate lr · the reference's
  schedule factor, α clamped to [0, 1] before every step and after the last.
"""

from __future__ import annotations

import torch

from mechscope.analyses.duo_attention import reference_lr_factor
from mechscope.probes.interventions import applied


def keep_mask(T: int, n_sink: int, window: int) -> torch.Tensor:
    return torch.tensor([[j <= t and (j < n_sink or t - j < window) for j in range(T)] for t in range(T)])


def _final_rms(model, resid: torch.Tensor) -> torch.Tensor:
    x = resid.double()
    return x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt() * model.ln_final.w.double()


def objective(model, ids, start: int, gates: torch.Tensor, n_sink: int, window: int, branch: str,
              reg_weight: float) -> torch.Tensor:
    """The training loss for one sample at ``gates`` [layers, KV heads] (differentiable in them)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    group = H // gates.shape[1]
    tokens = torch.tensor([list(ids)])
    last = f"blocks.{L - 1}.hook_resid_post"
    plain: dict = {}
    grab = [(f"blocks.{l}.attn.hook_z", (lambda z, hook=None, l=l: plain.__setitem__(l, z.detach()))) for l in range(L)]
    grab.append((last, lambda r, hook=None: plain.__setitem__("resid", r.detach())))
    with applied(model, extra_hooks=grab), torch.no_grad():
        model(tokens)
    target = _final_rms(model, plain["resid"])[:, start:]
    keep = keep_mask(len(ids), n_sink, window)

    def alpha(l):  # [H]: each query head's gate
        return torch.stack([gates[l, h // group] for h in range(H)])

    hooks, out = [], {}
    for l in range(L):
        if branch == "shared":
            stash: dict = {}

            def on_scores(s, hook=None, stash=stash):
                stash["p"] = torch.softmax(s.masked_fill(~keep, float("-inf")), -1)
                return s

            def on_pattern(p, hook=None, stash=stash, l=l):
                a = alpha(l).to(p.dtype)[None, :, None, None]
                return a * p + (1 - a) * stash["p"]

            hooks += [(f"blocks.{l}.attn.hook_attn_scores", on_scores), (f"blocks.{l}.attn.hook_pattern", on_pattern)]
        else:
            def on_scores(s, hook=None):
                return s.masked_fill(~keep, float("-inf"))

            def on_z(z, hook=None, l=l):
                a = alpha(l).to(z.dtype)[None, None, :, None]
                return a * plain[l] + (1 - a) * z

            hooks += [(f"blocks.{l}.attn.hook_attn_scores", on_scores), (f"blocks.{l}.attn.hook_z", on_z)]
    hooks.append((last, lambda r, hook=None: out.__setitem__("resid", r)))
    with applied(model, extra_hooks=hooks):
        model(tokens)
    h = _final_rms(model, out["resid"])[:, start:]
    return (h - target).pow(2).mean(-1).mean() + reg_weight * gates.abs().mean()


def gradient(model, ids, start, gates, n_sink, window, branch, reg_weight) -> torch.Tensor:
    g = gates.detach().double().clone().requires_grad_(True)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        objective(model, ids, start, g, n_sink, window, branch, reg_weight).backward()
    finally:
        for p, f in flags:
            p.requires_grad_(f)
    return g.grad


def train(model, samples, n_sink, window, lr, reg_weight, branch, init=1.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Gates after one AdamW step per ``(ids, answer_start)`` sample, and each step's gradient."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    a = torch.full((model.cfg.n_layers, model.cfg.n_key_value_heads or model.cfg.n_heads), float(init),
                   dtype=torch.float64)
    m, v, grads = torch.zeros_like(a), torch.zeros_like(a), []
    for i, (ids, start) in enumerate(samples):
        a = a.clamp(0.0, 1.0)
        g = gradient(model, ids, start, a, n_sink, window, branch, reg_weight)
        grads.append(g)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** (i + 1)), v / (1 - b2 ** (i + 1))
        a = a - lr * reference_lr_factor(i, len(samples)) * m_hat / (v_hat.sqrt() + eps)
    return a.clamp(0.0, 1.0), grads
