"""SAE interventions as data (registered in ``probes.interventions.INTERVENTIONS``).

Each names its SAE by a shipped name or folder (``sae``) and optionally pins the weights'
sha256 (``sha256``); the weights are loaded (sha256-checked) when the hooks are built, and
cached per process. All act at the SAE's own hook point.

* ``sae_steer`` — add ``value`` × the latent's decoder direction (what the SAE's output gains
  when that latent's activation rises by ``value``, see :func:`decoder_directions`) at chosen positions (Templeton
  et al. 2024 "feature steering"; Neuronpedia's steering).
* ``sae_clamp`` — encode, set the latent's activation to ``value``, decode, and add back the
  SAE error term ``x - decode(encode(x))``, so the clamp is the only change
  (Templeton et al. 2024; SAE-Lens' ``HookedSAETransformer`` with ``use_error_term=True``).
* ``sae_splice`` — replace the activation by the SAE reconstruction, with or without the
  error term (with it the forward pass is unchanged; SAE-Lens ``use_error_term``).

Positions: the SAEs were trained on positions >= 1 (position 0 is an attention sink with an
outsized norm), so ``skip_first`` leaves position 0 alone in any forward of more than one
token (a prompt or a full sequence); single-token forwards are KV-cache decoding steps and
are always edited. ``positions`` (steering only) index the sequence axis of full forwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.probes.errors import InputError, check_range
from mechscope.probes.interventions import INTERVENTIONS, Data, HookList
from mechscope.saes.store import load_sae


@torch.no_grad()
def decoder_directions(sae, latents=None) -> torch.Tensor:
    """[n, d_in]: how the SAE's output moves per unit activation of each latent,
    ``decode(e_i) - decode(0)`` — W_dec rows, divided by their norms for SAEs that rescale
    activations by the decoder norm (SAE-Lens TopK)."""
    idx = torch.arange(sae.cfg.d_sae) if latents is None else torch.as_tensor(latents).reshape(-1)
    eye = torch.zeros(len(idx), sae.cfg.d_sae, dtype=sae.W_dec.dtype, device=sae.W_dec.device)
    eye[torch.arange(len(idx)), idx.to(eye.device)] = 1.0
    zero = sae.decode(torch.zeros(1, sae.cfg.d_sae, dtype=eye.dtype, device=eye.device))
    return (sae.decode(eye) - zero).float()


def _first(t: int, skip_first: bool) -> int:
    return 1 if (skip_first and t > 1) else 0


class _SkipFirst:
    skip_first: bool

    @property
    def positionwise(self) -> bool:
        """Only without ``skip_first``: which position is first depends on the pass."""
        return not self.skip_first


@INTERVENTIONS.register("sae_steer")
@dataclass(frozen=True)
class SaeSteer(Data):
    """Add ``value`` × the decoder direction of ``latent`` at ``positions`` (None: all)."""

    sae: str
    latent: int
    value: float
    positions: tuple[int, ...] | None = None
    skip_first: bool = True
    sha256: str | None = None

    def __post_init__(self):
        if self.positions is not None and not isinstance(self.positions, tuple):
            object.__setattr__(self, "positions", tuple(self.positions))

    @property
    def positionwise(self) -> bool:
        """Only when steering every position: ``positions`` and ``skip_first`` depend on the pass."""
        return self.positions is None and not self.skip_first

    def validate(self, model) -> None:
        sae = load_sae(self.sae, model=model, sha256=self.sha256, cached=True)
        check_range("latent", self.latent, sae.cfg.d_sae)
        if not isinstance(self.value, (int, float)) or self.value != self.value:
            raise InputError(f"Steering value must be a number, not {self.value!r}.")
        if self.positions is not None and any((not isinstance(p, int)) or p < 0 for p in self.positions):
            raise InputError(f"Positions must be non-negative integers, not {self.positions!r}.")

    def hooks(self, model) -> HookList:
        sae = load_sae(self.sae, model=model, sha256=self.sha256, cached=True)
        vec = decoder_directions(sae, [self.latent])[0] * float(self.value)
        positions = None if self.positions is None else sorted(set(self.positions))

        def steer(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
            if self.value == 0:
                return act
            out = act.clone()
            v = vec.to(act.dtype)
            if positions is None:
                out[:, _first(act.shape[1], self.skip_first):] += v
            else:
                ps = [p for p in positions if p < act.shape[1]]
                out[:, ps] += v
            return out

        return [(sae.cfg.metadata.hook_name, steer)]

    def describe(self) -> str:
        where = "" if self.positions is None else f" @ {list(self.positions)}"
        return f"SAE {self.sae} latent {self.latent} += {self.value:g}{where}"


@INTERVENTIONS.register("sae_clamp")
@dataclass(frozen=True)
class SaeClamp(_SkipFirst, Data):
    """Set ``latent``'s activation to ``value`` (encode → set → decode + error term)."""

    sae: str
    latent: int
    value: float
    skip_first: bool = True
    sha256: str | None = None

    def validate(self, model) -> None:
        sae = load_sae(self.sae, model=model, sha256=self.sha256, cached=True)
        check_range("latent", self.latent, sae.cfg.d_sae)
        if not isinstance(self.value, (int, float)) or self.value != self.value:
            raise InputError(f"Clamp value must be a number, not {self.value!r}.")

    def hooks(self, model) -> HookList:
        sae = load_sae(self.sae, model=model, sha256=self.sha256, cached=True)
        i, value = self.latent, float(self.value)

        def clamp(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
            s = _first(act.shape[1], self.skip_first)
            x = act[:, s:].float()
            feats = sae.encode(x)
            error = x - sae.decode(feats)
            feats = feats.clone()
            feats[..., i] = value
            out = act.clone()
            out[:, s:] = (sae.decode(feats) + error).to(act.dtype)
            return out

        return [(sae.cfg.metadata.hook_name, clamp)]

    def describe(self) -> str:
        return f"SAE {self.sae} latent {self.latent} = {self.value:g}"


@INTERVENTIONS.register("sae_splice")
@dataclass(frozen=True)
class SaeSplice(_SkipFirst, Data):
    """Replace the activation by the SAE's reconstruction (plus the error term if asked)."""

    sae: str
    error_term: bool = False
    skip_first: bool = True
    sha256: str | None = None

    def validate(self, model) -> None:
        load_sae(self.sae, model=model, sha256=self.sha256, cached=True)

    def hooks(self, model) -> HookList:
        sae = load_sae(self.sae, model=model, sha256=self.sha256, cached=True)

        def splice(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
            s = _first(act.shape[1], self.skip_first)
            x = act[:, s:].float()
            recon = sae.decode(sae.encode(x))
            if self.error_term:
                recon = recon + (x - recon)
            out = act.clone()
            out[:, s:] = recon.to(act.dtype)
            return out

        return [(sae.cfg.metadata.hook_name, splice)]

    def describe(self) -> str:
        return f"SAE {self.sae} splice" + (" + error" if self.error_term else "")
