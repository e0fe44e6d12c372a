"""The fusion network's hyper-parameters: one dataclass, saved with every run."""
from __future__ import annotations

from dataclasses import dataclass


EXPERTS = ("local", "correlation", "context")  # the order of expert_weights and modality_gates


@dataclass
class FusionConfig:
    d_model: int = 128  # width of every expert: the frozen encoders already did the heavy lifting
    n_heads: int = 4  # attention heads in the correlation and context experts and in the token pooler
    local_kernel: int = 5  # temporal window of the local expert's depthwise convolutions (odd)
    local_layers: int = 2  # stacked conv blocks, dilation doubling per block: 2 blocks of 5 see 13 steps
    context_layers: int = 1  # attention layers of the global context expert
    n_tokens: int = 4  # K pseudo tokens spliced into the prompt; each one costs an LLM position
    dropout: float = 0.1
    balance_weight: float = 0.01  # weight of the expert-gate load-balance loss added to the LM loss
    z_weight: float = 0.0  # weight of the expert gate's router z-loss (fuse/gating.py: z_loss), 0 = none
    # Ablations (egmf-train --ablate): the experts the network has, and gates fixed at uniform weights.
    experts: tuple[str, ...] = EXPERTS
    uniform_gates: bool = False

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"FusionConfig: d_model {self.d_model} must be a multiple of n_heads {self.n_heads}")
        self.experts = tuple(self.experts)
        if not self.experts or any(e not in EXPERTS for e in self.experts) or len(set(self.experts)) < len(self.experts):
            raise ValueError(f"FusionConfig: experts {list(self.experts)} must be distinct names among {list(EXPERTS)}")
        if self.n_tokens < 0:
            raise ValueError(f"FusionConfig: n_tokens {self.n_tokens} must be at least 0 (0 = no pseudo tokens)")
        if self.local_kernel % 2 == 0:
            raise ValueError(f"FusionConfig: local_kernel must be odd (got {self.local_kernel}) to keep steps aligned")
