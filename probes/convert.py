"""Converting Hugging Face models into TransformerLens HookedTransformers, unprocessed.

No LayerNorm folding, no weight centring: hooks see the activations of the original model,
and "raw" readouts (the LM head without the final norm's γ) mean what they say.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from mechscope.probes.errors import MissingPackageError


# Storage order per parameter name: TransformerLens 3.9 rearranges these weights on every
# forward (``W.T.contiguous()`` in GatedMLP/Unembed, ``rearrange(W_Q, "h m d -> (h d) m")``
# in attention), i.e. it copies the whole model per call. Stored in the order it asks for,
# those copies become free views. Values, shapes and results are unchanged (bit-identical).
_FORWARD_ORDER = {
    "W_Q": (0, 2, 1), "W_K": (0, 2, 1), "W_V": (0, 2, 1), "_W_K": (0, 2, 1), "_W_V": (0, 2, 1),
    "W_O": (2, 0, 1),
    "W_in": (1, 0), "W_gate": (1, 0), "W_out": (1, 0), "W_U": (1, 0),
}


def contiguous_for_forward(model) -> int:
    """Re-lay out attention, gated-MLP and unembedding weights (same values and shapes,
    different strides) so TransformerLens' per-forward weight copies become no-ops.
    Returns how many parameters were re-laid out. Weights may then be non-contiguous:
    use ``.reshape``/``.contiguous()`` rather than ``.view`` on them."""
    from transformer_lens.components import Unembed
    from transformer_lens.components.abstract_attention import AbstractAttention
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    count = 0
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, (AbstractAttention, GatedMLP, Unembed)):
                continue
            for name, param in list(module.named_parameters(recurse=False)):
                order = _FORWARD_ORDER.get(name)
                if order is None or param.ndim != len(order) or type(param) is not torch.nn.Parameter:
                    continue
                stored = param.detach().permute(*order)
                if stored.is_contiguous():
                    continue
                inverse = [order.index(i) for i in range(len(order))]
                view = stored.contiguous().permute(*inverse)
                setattr(module, name, torch.nn.Parameter(view, requires_grad=param.requires_grad))
                count += 1
    return count


def quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def llama_cfg_kwargs(hf_config) -> dict:
    """JSON-able HookedTransformerConfig arguments for a HF Llama-architecture config."""
    c = hf_config
    rope = getattr(c, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None)
    return dict(
        d_model=c.hidden_size,
        d_head=head_dim,
        n_heads=c.num_attention_heads,
        n_key_value_heads=kv_heads if kv_heads and kv_heads != c.num_attention_heads else None,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=c.max_position_embeddings,
        d_vocab=c.vocab_size,
        eps=c.rms_norm_eps,
        act_fn=c.hidden_act,
        normalization_type="RMS",
        final_rms=True,
        gated_mlp=True,
        positional_embedding_type="rotary",
        rotary_dim=head_dim,
        rotary_base=float(rope_theta),
        rotary_adjacent_pairs=False,
        original_architecture="LlamaForCausalLM",
        tokenizer_prepends_bos=False,
        default_prepend_bos=False,
    )


_CFG_SKIP = ("dtype", "device", "init_weights", "n_params")


def cfg_json(cfg) -> dict:
    """A HookedTransformerConfig as JSON-able constructor arguments (dtype/device left out)."""
    import dataclasses

    init = {f.name for f in dataclasses.fields(cfg) if f.init}
    return {k: v for k, v in cfg.to_dict().items() if k in init and k not in _CFG_SKIP}


def empty_hooked(cfg_kwargs: dict, tokenizer, dtype: torch.dtype, init_weights: bool = True):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**cfg_kwargs, dtype=dtype, device="cpu", init_weights=init_weights)
    return HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="right")


def hooked_from_hf_llama(hf_model, tokenizer, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Convert a HF Llama-architecture model into a HookedTransformer (no weight processing).

    The config is built by hand from the HF config; weights go through TransformerLens'
    ``convert_llama_weights``. No LayerNorm folding or centring is applied, so hooks see the
    same activations as the HF model.
    """
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    model = empty_hooked(llama_cfg_kwargs(hf_model.config), tokenizer, dtype, init_weights=False)
    model.cfg.device = device
    state_dict = convert_llama_weights(hf_model, model.cfg)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return model.to(device)


def hf_from_gguf(path: Path):
    """A (sha256-checked) GGUF read by transformers: (float32 HF model, right-padding tokenizer)."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError("Package gguf is not installed: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.padding_side = "right"
    hf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return hf_model, tokenizer


