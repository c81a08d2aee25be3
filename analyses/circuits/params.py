"""Parameters of the circuit analyses: patching ground truth, discrete-SAE discovery, comparison."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from mechscope.analyses.circuits.tasks import ALL_TASKS, check_task
from mechscope.probes import path_patching as pp
from mechscope.probes.errors import InputError
from mechscope.probes.results import Params


@dataclass(frozen=True)
class CircuitPatchParams(Params):
    """Activation patching of every head and MLP layer on a shipped task."""

    kind: ClassVar[str] = "circuit_patch"
    task: str = field(default="ioi", metadata={"help": "task: " + ", ".join(ALL_TASKS)})
    n_prompts: int = field(default=32, metadata={"help": "positive prompt pairs used"})
    directions: tuple[str, ...] = field(default=("noising", "denoising"), metadata={"help": "noising, denoising"})
    batch_size: int = field(default=8, metadata={"help": "prompt pairs per patching batch"})

    def __post_init__(self):
        object.__setattr__(self, "directions", tuple(self.directions))
        check_task(self.task)
        if self.n_prompts < 1 or self.batch_size < 1:
            raise InputError("n_prompts and batch_size must be at least 1.")
        for d in self.directions:
            if d not in ("noising", "denoising"):
                raise InputError(f"Direction must be 'noising' or 'denoising', not {d!r}.")


@dataclass(frozen=True)
class CircuitDiscoverParams(Params):
    """The discrete-SAE method (O'Neill & Bui 2024) on a shipped task."""

    kind: ClassVar[str] = "circuit_discover"
    task: str = field(default="ioi", metadata={"help": "task: " + ", ".join(ALL_TASKS)})
    n_prompts: int = field(default=32, metadata={"help": "positive prompt pairs used"})
    n_latents: int = field(default=200, metadata={"help": "latents of each SAE (reference 200)"})
    l1: float = field(default=0.02, metadata={"help": "L1 coefficient (reference 0.02)"})
    epochs: int = field(default=500, metadata={"help": "full-batch Adam steps (reference 500)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (reference 1e-3)"})
    shared: bool = field(default=True, metadata={"help": "one SAE shared by all heads on their d_model outputs (the reference); "
                                                         "off: per-head SAEs, one per head (ours)"})
    seed: int = field(default=0, metadata={"help": "SAE initialisation seed"})
    n_train: int = field(default=10, metadata={"help": "prompts the SAEs train on (reference 10; 0 = all)"})
    isometric: bool = field(default=True, metadata={"help": "per-head SAEs only: read each head's output in an orthonormal basis of its "
                                                            "output space (d_head coordinates, the d_model norms and inner products)"})
    positions: str = field(default="mean", metadata={"help": "head output averaged over positions (mean, the reference) or at the last position (last)"})

    def __post_init__(self):
        if self.positions not in ("mean", "last"):
            raise InputError(f"positions must be 'mean' (the reference) or 'last', not {self.positions!r}.")
        check_task(self.task)
        if self.n_prompts < 1:
            raise InputError("n_prompts must be at least 1.")


@dataclass(frozen=True)
class CircuitCompareParams(Params):
    """Every method on one task against the noising patching ground truth."""

    kind: ClassVar[str] = "circuit_compare"
    task: str = field(default="ioi", metadata={"help": "task: " + ", ".join(ALL_TASKS)})
    n_prompts: int = field(default=32, metadata={"help": "positive prompt pairs used"})
    batch_size: int = field(default=8, metadata={"help": "prompt pairs per batch"})
    thresholds: tuple[float, ...] = field(default=(0.01, 0.02, 0.05, 0.1), metadata={"help": "ground-truth thresholds on |effect|"})
    ig_steps: int = field(default=5, metadata={"help": "EAP-IG integration steps"})
    n_latents: int = field(default=200, metadata={"help": "latents of each SAE (reference 200)"})
    l1: float = field(default=0.02, metadata={"help": "SAE L1 coefficient (reference 0.02)"})
    epochs: int = field(default=500, metadata={"help": "SAE full-batch Adam steps (reference 500)"})
    shared: bool = field(default=True, metadata={"help": "one SAE shared by all heads on their d_model outputs (the reference); "
                                                         "off: per-head SAEs, one per head (ours)"})
    seed: int = field(default=0, metadata={"help": "SAE seed"})
    n_train: int = field(default=10, metadata={"help": "prompts the SAEs train on (reference 10; 0 = all)"})
    isometric: bool = field(default=True, metadata={"help": "per-head SAEs only: each head's output in an orthonormal basis of its "
                                                            "output space (d_head wide)"})
    sizes: tuple[int, ...] = field(default=(1, 2, 5, 10, 20, 40, 80), metadata={"help": "circuit sizes for faithfulness"})
    edge_top_n: int = field(default=10, metadata={"help": "edges: path-patch every pair among the top-N heads by |patching effect| (0 = no edges)"})
    edge_inputs: tuple[str, ...] = field(default=("qkv",), metadata={"help": "receiver inputs; the first is the edge ground truth (qkv, q, kv, ...)"})

    def __post_init__(self):
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))
        object.__setattr__(self, "edge_inputs", pp.check_inputs(self.edge_inputs))
        if self.edge_top_n < 0:
            raise InputError("edge_top_n must be 0 (no edges) or more.")
        check_task(self.task)
        if self.n_prompts < 1 or self.batch_size < 1 or self.ig_steps < 1:
            raise InputError("n_prompts, batch_size and ig_steps must be at least 1.")

    def discover_params(self) -> CircuitDiscoverParams:
        """The discrete-SAE settings of this comparison."""
        return CircuitDiscoverParams(task=self.task, n_prompts=self.n_prompts, n_latents=self.n_latents, l1=self.l1,
                                     epochs=self.epochs, shared=self.shared, seed=self.seed, n_train=self.n_train,
                                     isometric=self.isometric)
