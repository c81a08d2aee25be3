"""MLP neurons read through the unembedding, their activity, and clamp verification.

One module per job: ``common`` (methods, directions), ``decode``, ``search``,
``activity`` and ``clamp``; this package re-exports their public names.

* :func:`decode_neurons` — every neuron of every layer pushed through the LM head (Davies et
  al. 2025, "Decoding specialised feature neurons in LLMs with the final projection layer",
  arXiv 2501.02688): top- and bottom-k tokens with their logits (optionally the softmax
  probability of the top token). Chunked: the [neurons × vocab] matrix never exists.
* :func:`neurons_for_token` — "which neurons most promote token / string X": one mat-vec over
  all neurons, milliseconds.
* :func:`neuron_activity` — streaming statistics over a text set and a taxonomy after Voita
  et al. 2023 ("Neurons in LLMs: Dead, N-gram, Positional"); :func:`max_activating` — the
  top contexts of one neuron.
* :func:`clamp_verification` — clamp a neuron through :class:`probes.interventions.NeuronClamp`
  and check that the probability of its decoded top token rises (the paper's verification).

**What is decoded.** A neuron n of layer l adds ``a_n · W_out[l][n]`` to the residual stream
(``a_n`` = ``blocks.l.mlp.hook_post``, for gated MLPs act(gate)·up). If nothing later cancels
it, the final RMSNorm turns the residual h into ``γ ⊙ h / rms(h)``, so the neuron's direct
effect on the logits is ``(a_n / rms(h)) · W_Uᵀ (γ ⊙ W_out[l][n])``. The division by rms(h) is
one positive scalar per position: it scales all of a neuron's logits alike and cannot change
their ranking, so ``norm="final"`` (default) decodes ``W_Uᵀ (γ ⊙ w)`` — γ, the final norm's
weight, is folded into the unembedding once. ``norm="raw"`` decodes ``W_Uᵀ w`` (LM head
alone, as LLM-Microscope and the paper's code apply it). The unembedding bias, if any, is
the same for every neuron and is left out. Top tokens are what the neuron promotes when its
activation is positive; SiLU-gated activations can also be negative, when it promotes the
bottom tokens.

**Two named methods** (every table and page says which one produced a label):

* ``method="paper"`` — the paper's (arXiv 2501.02688): the *up-projection* column of a
  neuron (``W_in[l][:, n]``, the direction it reads; for gated MLPs the "up" matrix, not the
  gate, because the paper decodes Llama's ``up_proj``) through the LM head alone, no norm,
  softmax over the vocabulary. The top token labels the neuron.
* ``method="write"`` — what the neuron *writes* (``W_out[l][n]``) through the unembedding
  with the final norm's γ folded in: the neuron's direct effect on the logits, and what a
  clamp acts through.

On SmolLM2-135M the two agree on the top-1 token for a small minority of neurons (measured
by :func:`method_agreement`), so a label must name its method. ``norm``/``direction`` remain
available for other combinations (``method="custom"``).
"""

from __future__ import annotations

from mechscope.analyses.neurons.common import (  # noqa: F401
    Direction,
    METHODS,
    context,
    method_label,
    neuron_directions,
    resolve_method,
    str_token,
)
from mechscope.analyses.neurons.decode import (  # noqa: F401
    DecodeParams,
    NeuronDecodeResult,
    decode_neurons,
    method_agreement,
)
from mechscope.analyses.neurons.search import (  # noqa: F401
    NeuronSearchResult,
    SearchParams,
    neurons_for_token,
)
from mechscope.analyses.neurons.activity import (  # noqa: F401
    ActivityParams,
    MaxActParams,
    MaxActivatingResult,
    NeuronActivityResult,
    max_activating,
    neuron_activity,
)
from mechscope.analyses.neurons.clamp import (  # noqa: F401
    ClampParams,
    ClampVerificationResult,
    clamp_verification,
)
from mechscope.probes.readout import (  # noqa: F401  (direction readout lives in probes)
    NEUTRAL_PROMPTS,
    Norm,
    decode_directions,
    topk_both,
    unembedding,
)
