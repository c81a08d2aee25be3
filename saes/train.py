"""Train residual-stream SAEs with SAE-Lens (nothing re-implemented here).

* :func:`train_resid_saes` — several SAEs from ONE forward pass per batch: SAE-Lens'
  ``MultiSAETrainingRunner`` with our own model object (``override_model``) and the local
  pre-tokenised corpus (``override_dataset``, rows from ``data/sae_corpus.py``). Position 0 of
  every row (no BOS; an attention-sink position with an outsized norm) is left out through
  SAE-Lens' ``seqpos_slice=(1, None)``; activations are scaled to mean norm sqrt(d_in)
  during training (``normalize_activations="expected_average_only_in"``) and the factor is
  folded back into the weights at the end, so the shipped SAE reads raw activations.
* :func:`train_on_activations` — one SAE-Lens SAE on an in-memory activation tensor
  [N, d_in] (SAE-Lens' ``SAETrainer`` with an iterator over shuffled batches). Small
  per-head or CPU-sized SAEs use this.
* :func:`estimate_seconds` — what a run would take on this device (the CLI prints it).

Architectures (SAE-Lens training configs): ``topk`` (Gao et al. 2024, with the AuxK loss),
``batchtopk`` (Bussmann et al. 2024; saved as a JumpReLU SAE with the learned global
threshold), ``matryoshka_batchtopk`` (Bussmann et al. 2025, "Learning Multi-Level Features with
Matryoshka SAEs": BatchTopK whose nested prefixes of ``matryoshka_fractions`` × d_sae latents
each reconstruct the input too; saved as a JumpReLU SAE like BatchTopK), ``jumprelu`` (Rajamanoharan et al. 2024; quadratic L0 penalty around a target
L0 as in Gemma Scope 2, so it can be compared with the others at equal L0; the straight-through
estimator also reaches the encoder, as in Anthropic's set-up, so L0 settles within a short run).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from mechscope.probes import hooknames
from mechscope.probes.errors import InputError

ARCHITECTURES = ("topk", "batchtopk", "matryoshka_batchtopk", "jumprelu")


@dataclass(frozen=True)
class TrainSpec:
    """Hyper-parameters of one multi-layer training run (all SAEs share them)."""

    layers: tuple[int, ...] = (0, 6, 12, 18, 24, 29)
    architecture: str = "topk"  # what ships: best of the three at equal L0 (saes/TRAINING.md)
    d_sae: int = 4096
    k: int = 60  # TopK/BatchTopK k; JumpReLU target L0
    training_tokens: int = 30_000_000
    batch_tokens: int = 4096
    lr: float = 4e-4
    warmup_steps: int = 500
    decay_fraction: float = 0.2  # linear decay to lr_end over the last fraction of steps
    context_size: int = 256
    point: str = "resid_post"
    seed: int = 42
    jumprelu_l0_coefficient: float = 2.0
    jumprelu_bandwidth: float = 0.05
    matryoshka_fractions: tuple[float, ...] = (1 / 16, 1 / 4, 1.0)  # nested widths as fractions of d_sae
    extra: tuple[tuple[str, int], ...] = ()  # (architecture, layer) SAEs trained alongside

    def hook(self, layer: int) -> str:
        return hooknames.name(self.point, layer)

    def validate(self, n_layers: int | None = None) -> None:
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"Unknown SAE architecture {self.architecture!r}: use one of {', '.join(ARCHITECTURES)}.")
        if not self.layers:
            raise InputError("No layers given to train SAEs on.")
        for arch, _ in self.extra:
            if arch not in ARCHITECTURES:
                raise InputError(f"Unknown SAE architecture {arch!r}: use one of {', '.join(ARCHITECTURES)}.")
        if n_layers is not None:
            for layer in list(self.layers) + [l for _, l in self.extra]:
                if not 0 <= layer < n_layers:
                    raise InputError(f"Layer {layer} is out of range: this model has {n_layers} layers (0..{n_layers - 1}).")
        if self.d_sae < 1 or self.k < 1 or self.k > self.d_sae:
            raise InputError(f"Need 1 <= k <= d_sae (got k={self.k}, d_sae={self.d_sae}).")
        if self.training_tokens < self.batch_tokens:
            raise InputError("training_tokens must be at least one batch.")


def sae_name(architecture: str, layer: int, point: str = "resid_post") -> str:
    return f"{architecture}-L{layer}"


def training_sae_config(architecture: str, d_in: int, spec: TrainSpec, device: str):
    """The SAE-Lens training config for one SAE of ``spec``."""
    from sae_lens import BatchTopKTrainingSAEConfig, JumpReLUTrainingSAEConfig, TopKTrainingSAEConfig

    common = dict(d_in=d_in, d_sae=spec.d_sae, dtype="float32", device=device,
                  normalize_activations="expected_average_only_in")
    if architecture == "topk":
        return TopKTrainingSAEConfig(k=spec.k, **common)
    if architecture == "batchtopk":
        return BatchTopKTrainingSAEConfig(k=float(spec.k), **common)
    if architecture == "matryoshka_batchtopk":
        from sae_lens import MatryoshkaBatchTopKTrainingSAEConfig

        return MatryoshkaBatchTopKTrainingSAEConfig(k=float(spec.k), matryoshka_widths=matryoshka_widths(spec),
                                                    **common)
    if architecture == "jumprelu":
        return JumpReLUTrainingSAEConfig(
            jumprelu_sparsity_loss_mode="quadratic", target_l0=float(spec.k),
            l0_coefficient=spec.jumprelu_l0_coefficient, jumprelu_bandwidth=spec.jumprelu_bandwidth,
            jumprelu_init_threshold=0.2, jumprelu_ste_to_input=True, **common)
    raise InputError(f"Unknown SAE architecture {architecture!r}: use one of {', '.join(ARCHITECTURES)}.")


def matryoshka_widths(spec: TrainSpec) -> list[int]:
    """The nested prefix widths (strictly increasing, the last = d_sae)."""
    widths = sorted({max(1, round(f * spec.d_sae)) for f in spec.matryoshka_fractions} | {spec.d_sae})
    return [w for w in widths if w <= spec.d_sae]


def _schedule(spec: TrainSpec) -> dict:
    steps = spec.training_tokens // spec.batch_tokens
    return dict(lr=spec.lr, lr_warm_up_steps=min(spec.warmup_steps, steps // 10),
                lr_decay_steps=int(steps * spec.decay_fraction), lr_end=0.0,
                lr_scheduler_name="constant")


def _hf_dataset(rows: np.ndarray):
    import datasets

    return datasets.Dataset.from_dict({"input_ids": np.asarray(rows, dtype=np.int64)})


def train_resid_saes(model, rows: np.ndarray, spec: TrainSpec, out_dir: Path, device: str = "cuda",
                     store_batch_prompts: int = 32, buffer_batches: int = 256, autocast_lm: bool = False,
                     autocast: bool = False, norm_batches: int = 50, log: Callable[[str], None] = print) -> dict:
    """Train one SAE per layer of ``spec`` (plus ``spec.extra``) from shared forward passes.

    ``rows``: uint16/int token rows [N, context_size] (the corpus' train split). Writes each SAE
    with SAE-Lens' ``save_inference_model`` to ``out_dir/<name>`` and returns
    ``{"names": {name: hook}, "seconds": ..., "tokens_per_s": ...}``. ``autocast_lm``: the model
    forward under bfloat16 autocast; ``autocast``: the SAEs' training steps too (SAE-Lens' options).
    ``norm_batches``: store batches read to estimate the activation-norm scale.
    """
    from sae_lens import MultiSAETrainingRunner, MultiSAETrainingRunnerConfig
    from sae_lens.config import LoggingConfig

    spec.validate(model.cfg.n_layers)
    if rows.ndim != 2 or rows.shape[1] < spec.context_size:
        raise InputError(f"Token rows must be [N, >= {spec.context_size}], got {tuple(rows.shape)}.")
    d_in = model.cfg.d_model
    entries = [(spec.architecture, l) for l in spec.layers] + [e for e in spec.extra if e not in
                                                               [(spec.architecture, l) for l in spec.layers]]
    saes = {sae_name(a, l): training_sae_config(a, d_in, spec, device) for a, l in entries}
    hooks = {sae_name(a, l): spec.hook(l) for a, l in entries}
    cfg = MultiSAETrainingRunnerConfig(
        saes=saes, hook_names=hooks, model_name="smollm2-135m", dataset_path="mechscope sae_corpus (local)",
        context_size=spec.context_size, seqpos_slice=(1, None), prepend_bos=False,
        training_tokens=spec.training_tokens, train_batch_size_tokens=spec.batch_tokens,
        store_batch_size_prompts=store_batch_prompts, n_batches_in_buffer=buffer_batches,
        device=device, seed=spec.seed, dtype="float32", n_batches_for_norm_estimate=norm_batches,
        output_path=str(out_dir), checkpoint_path=None, logger=LoggingConfig(log_to_wandb=False),
        dead_feature_window=1000, feature_sampling_window=2000, autocast_lm=autocast_lm, autocast=autocast,
        **_schedule(spec),
    )
    torch.manual_seed(spec.seed)
    runner = MultiSAETrainingRunner(cfg, override_dataset=_hf_dataset(rows[:, : spec.context_size]),
                                    override_model=model)
    t0 = time.perf_counter()
    runner.run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    info = {"names": hooks, "seconds": seconds, "tokens": spec.training_tokens, "autocast_lm": autocast_lm,
            "autocast": autocast,
            "tokens_per_s": spec.training_tokens / seconds, "spec": asdict(spec)}
    (Path(out_dir) / "train_info.json").write_text(json.dumps(info, indent=1))
    log(f"trained {len(hooks)} SAEs on {spec.training_tokens:,} tokens in {seconds:.0f} s "
        f"({info['tokens_per_s']:,.0f} tokens/s, model forward included)")
    return info


def train_on_activations(acts: torch.Tensor, architecture: str = "topk", d_sae: int = 256, k: int = 16,
                         training_tokens: int | None = None, batch_size: int = 1024, lr: float = 4e-4,
                         seed: int = 0, device: str = "cpu", hook_name: str = "", show_progress: bool = False):
    """Train one SAE-Lens SAE on an in-memory activation tensor ``acts`` [N, d_in].

    Returns the trained inference SAE (``sae_lens.SAE``; activation scaling folded in, so it
    reads raw activations). Batches are drawn from a seeded permutation, one epoch after
    another, until ``training_tokens`` (default 4 epochs) have been seen.
    """
    from sae_lens import SAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.registry import get_sae_training_class
    from sae_lens.training.sae_trainer import SAETrainer

    if not isinstance(acts, torch.Tensor) or acts.ndim != 2 or acts.shape[0] < 2:
        raise InputError("acts must be a float tensor [N, d_in] with N >= 2.")
    if not torch.isfinite(acts).all():
        raise InputError("acts contains NaN or inf.")
    n, d_in = acts.shape
    batch_size = min(batch_size, n)
    total = training_tokens if training_tokens is not None else 4 * n
    spec = TrainSpec(layers=(0,), architecture=architecture, d_sae=d_sae, k=k, training_tokens=total,
                     batch_tokens=batch_size, lr=lr, seed=seed)
    spec.validate()
    sae_cfg = training_sae_config(architecture, d_in, spec, device)
    sae_cfg.metadata.hook_name = hook_name
    torch.manual_seed(seed)
    sae_class, _ = get_sae_training_class(sae_cfg.architecture())
    sae = sae_class(sae_cfg)
    data = acts.detach().to(device=device, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[torch.Tensor]:
        while True:
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n - batch_size + 1, batch_size):
                yield data[perm[i : i + batch_size].to(device)]

    sched = _schedule(spec)
    trainer_cfg = SAETrainerConfig(
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False, total_training_samples=total,
        device=device, autocast=False, lr=sched["lr"], lr_end=0.0, lr_scheduler_name="constant",
        lr_warm_up_steps=sched["lr_warm_up_steps"], adam_beta1=0.9, adam_beta2=0.999,
        lr_decay_steps=sched["lr_decay_steps"], n_restart_cycles=1, train_batch_size_samples=batch_size,
        dead_feature_window=1000, feature_sampling_window=2000, logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=min(50, max(1, n // batch_size)),
    )
    import contextlib
    import io

    quiet = contextlib.redirect_stderr(io.StringIO()) if not show_progress else contextlib.nullcontext()
    with quiet:
        trained = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches(), evaluator=None,
                             save_checkpoint_fn=None).fit()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # training SAE -> inference SAE, as SAE-Lens saves it
        trained.save_inference_model(tmp)
        return SAE.load_from_disk(tmp, device=device)


# ---------------------------------------------------------------------------------------
# cost estimate


def flops_per_token(n_params_model: int, n_saes: int, d_in: int, d_sae: int) -> float:
    """Model forward (2·params) + each SAE's encoder/decoder forward and backward (3× forward)."""
    return 2.0 * n_params_model + n_saes * 3 * (2 * 2 * d_in * d_sae)


def estimate_seconds(spec: TrainSpec, n_params_model: int = 135_000_000, d_in: int = 576,
                     device: str = "cpu", flops_per_s: float | None = None) -> float:
    """Rough wall time of :func:`train_resid_saes` at an assumed sustained rate.

    Default rates are measured ones: ~25 GFLOP/s for 2 shared CPU cores (float32), and
    the H100 rate measured for the shipped run (~23 TFLOP/s effective: 52.8k tokens/s, 6 SAEs).
    """
    n_saes = len(spec.layers) + len(spec.extra)
    rate = flops_per_s or (2.3e13 if device.startswith("cuda") else 2.5e10)
    return spec.training_tokens * flops_per_token(n_params_model, n_saes, d_in, spec.d_sae) / rate


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# ---------------------------------------------------------------------------------------
# command line (also what `mechscope sae train` runs)


def load_model_for_training(gguf: Path | None, device: str):
    """The embedded model, UNPROCESSED, float32: from the installed wheel or a GGUF path."""
    if gguf is None:
        from mechscope.probes.models import load

        model, _ = load("smollm2-135m", device=device)
        return model
    from mechscope.probes.smollm2 import SMOLLM2_SHA256, smollm2_from_gguf
    from mechscope.probes.checksums import verify_sha256

    verify_sha256(Path(gguf), SMOLLM2_SHA256)
    model = smollm2_from_gguf(Path(gguf), device, torch.float32)
    model.eval()
    return model


def main(argv: Sequence[str] | None = None) -> int:
    d = TrainSpec()  # every default from the spec
    ap = argparse.ArgumentParser(prog="saes.train", description="Train residual-stream SAEs with SAE-Lens.")
    ap.add_argument("--layers", default=",".join(map(str, d.layers)), help="layers such as 0,6,12 or 0-3")
    ap.add_argument("--arch", default=d.architecture, choices=ARCHITECTURES)
    ap.add_argument("--extra", default="", help="more SAEs from the same forward: arch:layer,arch:layer")
    ap.add_argument("--d-sae", type=int, default=d.d_sae)
    ap.add_argument("--k", type=int, default=d.k)
    ap.add_argument("--tokens", type=float, default=float(d.training_tokens))
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--corpus", type=Path, default=None, help="folder of data/sae_corpus.py output")
    ap.add_argument("--rows", type=Path, default=None, help="a raw uint16 rows file instead of --corpus")
    ap.add_argument("--gguf", type=Path, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ship", type=Path, default=None, help="also export fp16 shippable SAEs here")
    ap.add_argument("--yes", action="store_true", help="train on CPU without asking")
    args = ap.parse_args(argv)

    extra = tuple((a.split(":")[0], int(a.split(":")[1])) for a in args.extra.split(",") if a.strip())
    spec = TrainSpec(layers=tuple(hooknames.parse_layers(args.layers) or ()), architecture=args.arch, d_sae=args.d_sae, k=args.k,
                     training_tokens=int(args.tokens), lr=args.lr, extra=extra)
    spec.validate()
    est = estimate_seconds(spec, device=args.device)
    print(f"{len(spec.layers) + len(extra)} SAEs × {spec.training_tokens:,} tokens on {args.device}: "
          f"about {format_duration(est)}", flush=True)
    if not args.device.startswith("cuda") and not args.yes:
        print("No GPU here: this would take about that long on CPU. Re-run with --yes to train anyway, "
              "or run it on a machine with a GPU.")
        return 0
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.rows is not None:
        rows = np.fromfile(args.rows, dtype=np.uint16).reshape(-1, spec.context_size)
    else:
        from mechscope.data.sae_corpus import load_split

        rows = load_split("train", args.corpus)
    model = load_model_for_training(args.gguf, args.device)
    info = train_resid_saes(model, rows, spec, args.out, device=args.device)
    if args.ship is not None:
        from mechscope.saes.store import export_dir

        for name in info["names"]:
            export_dir(args.out / name, args.ship / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
