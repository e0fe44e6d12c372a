"""Per-modality projection of cached feature sequences into the experts' common width.

Features are first standardised per dimension with statistics of the training split (set once by the trainer,
saved with the fusion weights): frozen encoders' outputs have a few dimensions hundreds of times larger than the
rest (Whisper's hidden states among them), and a linear layer + LayerNorm fed raw features attends to those alone.
Steps beyond a row's length, and whole modalities a row lacks, are masked: they come out as exact zeros
and every later block skips them, so padding never pretends to be data.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import sinusoidal_positions


class ModalityProjection(nn.Module):
    def __init__(self, modality_dims: dict[str, int], d_model: int, dropout: float):
        super().__init__()
        self.modalities = list(modality_dims)
        for m, dim in modality_dims.items():  # identity until set_statistics: a model saved before them loads as is
            self.register_buffer(f"mean_{m}", torch.zeros(dim))
            self.register_buffer(f"std_{m}", torch.ones(dim))
        self.linear = nn.ModuleDict({m: nn.Sequential(nn.Linear(dim, d_model), nn.LayerNorm(d_model))
                                     for m, dim in modality_dims.items()})
        # Which modality a token came from, and that a token summarises a preceding turn: the attention
        # experts mix tokens of every kind and need to tell them apart.
        self.modality_embedding = nn.Parameter(0.02 * torch.randn(len(modality_dims), d_model))
        self.turn_embedding = nn.Parameter(0.02 * torch.randn(d_model))
        self.dropout = nn.Dropout(dropout)

    def set_statistics(self, statistics: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """modality -> (mean, std), each (D_m,): what the training split's features are standardised with."""
        for m, (mean, std) in statistics.items():
            getattr(self, f"mean_{m}").copy_(mean)
            getattr(self, f"std_{m}").copy_(std)

    def _project(self, i: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D_m), mask (B, T) -> (B, T, d), zero where masked."""
        keep = mask.unsqueeze(-1)  # (B, T, 1)
        m = self.modalities[i]
        x = (x.float() - getattr(self, f"mean_{m}")) / getattr(self, f"std_{m}")
        x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))  # padding may hold anything
        h = self.linear[m](x)
        h = h + sinusoidal_positions(x.shape[1], h.shape[-1], h.device) + self.modality_embedding[i]
        return torch.where(keep, self.dropout(h), torch.zeros((), dtype=h.dtype, device=h.device))

    def forward(self, features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The utterance: one (B, T_m, d) sequence per modality, in the order of modality_dims."""
        missing = [m for m in self.modalities if m not in features]
        if missing:
            raise KeyError(f"the batch has no features for {missing}; the fusion network was built for "
                           f"{self.modalities}: build the model with the cache's modalities")
        return [self._project(i, features[m], masks[m]) for i, m in enumerate(self.modalities)]

    def context(self, context: dict[str, torch.Tensor], context_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The C preceding turns' pooled features as tokens: ((B, M*C, d), mask (B, M*C))."""
        tokens, masks = [], []
        for i, m in enumerate(self.modalities):
            x = context[m]  # (B, C, D_m)
            # The batch carries one mask per turn; a turn that lacked this modality pools to an all-zero vector.
            mask = context_mask & (x != 0).any(-1)  # (B, C)
            tokens.append(self._project(i, x, mask) + self.turn_embedding * mask.unsqueeze(-1))
            masks.append(mask)
        return torch.cat(tokens, 1), torch.cat(masks, 1)
