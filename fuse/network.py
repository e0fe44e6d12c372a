"""The fusion network: projections, the three experts, the expert gate and the pseudo-token pooler.

Input: an utterance's cached feature sequences (any subset of modalities present per row), the pooled
features of its preceding turns and the task index. Output: K pseudo tokens in the LLM's embedding space.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import FusionConfig
from .experts import ContextExpert, CorrelationExpert, LocalExpert
from .gating import ExpertGate, balance_loss
from .layers import FeedForward, MaskedAttention, masked_mean
from .projection import ModalityProjection

EXPERTS = ("local", "correlation", "context")  # the order of expert_weights and modality_gates


@dataclass
class FusionOutput:
    tokens: torch.Tensor  # (B, K, H): pseudo tokens for the LLM's inputs_embeds
    expert_weights: torch.Tensor  # (B, 3): the expert gate, in EXPERTS order
    modality_gates: torch.Tensor  # (B, 3, M): each expert's modality gate (0 for a missing modality)
    aux_loss: torch.Tensor  # (): load-balance loss of the expert gate, already weighted by balance_weight


class TokenPooler(nn.Module):
    """K learned queries (shifted by the task) attend over the fused tokens, then map to the LLM width."""

    def __init__(self, d_model: int, n_heads: int, n_tokens: int, out_dim: int, out_scale: float, dropout: float):
        super().__init__()
        self.queries = nn.Parameter(0.02 * torch.randn(n_tokens, d_model))
        self.norm = nn.LayerNorm(d_model)
        self.attention = MaskedAttention(d_model, n_heads, dropout)
        self.feed_forward = FeedForward(d_model, dropout)
        self.out = nn.Linear(d_model, out_dim)
        # Pseudo tokens should look like word embeddings to the LLM: unit-RMS rows scaled like its table.
        self.out_norm = nn.LayerNorm(out_dim)
        nn.init.constant_(self.out_norm.weight, out_scale)

    def forward(self, fused: torch.Tensor, mask: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """fused (B, N, d), mask (B, N), task (B, d) -> (B, K, H)."""
        queries = self.queries.unsqueeze(0) + task.unsqueeze(1)  # (B, K, d)
        pooled = queries + self.attention(queries, self.norm(fused), mask)
        return self.out_norm(self.out(self.feed_forward(pooled)))


class FusionNetwork(nn.Module):
    def __init__(self, config: FusionConfig, modality_dims: dict[str, int], out_dim: int, n_tasks: int,
                 out_scale: float = 1.0):
        """modality_dims: feature size per modality, read from the cache; out_dim: the LLM's hidden size;
        out_scale: the RMS of the LLM's token embeddings, which the pseudo tokens start at."""
        super().__init__()
        if not modality_dims:
            raise ValueError("FusionNetwork needs at least one modality (modality_dims is empty)")
        c = config
        self.config, self.modalities = c, list(modality_dims)
        self.projection = ModalityProjection(modality_dims, c.d_model, c.dropout)
        self.experts = nn.ModuleList([
            LocalExpert(self.modalities, c.d_model, c.local_kernel, c.local_layers, c.dropout),
            CorrelationExpert(self.modalities, c.d_model, c.n_heads, c.dropout),
            ContextExpert(c.d_model, c.n_heads, c.context_layers, c.dropout),
        ])
        self.expert_gate = ExpertGate(c.d_model, len(self.experts), n_tasks, c.dropout)
        self.fused_norm = nn.LayerNorm(c.d_model)
        self.pooler = TokenPooler(c.d_model, c.n_heads, c.n_tokens, out_dim, out_scale, c.dropout)

    def forward(self, features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                context: dict[str, torch.Tensor], context_mask: torch.Tensor, task: torch.Tensor) -> FusionOutput:
        """features/masks/context/context_mask as in pipeline.batch.Batch; task (B,) long."""
        tokens = self.projection(features, masks)  # M x (B, T_m, d)
        mask_list = [masks[m] for m in self.modalities]
        turns, turn_mask = self.projection.context(context, context_mask)  # (B, M*C, d), (B, M*C)
        outputs, gates = zip(*(expert(tokens, mask_list, turns=turns, turn_mask=turn_mask) for expert in self.experts))

        mask = torch.cat(mask_list, 1)  # (B, N)
        weights = self.expert_gate(masked_mean(torch.cat(tokens, 1), mask), masked_mean(turns, turn_mask), task)
        expert_tokens = torch.stack([torch.cat(o, 1) for o in outputs], 1)  # (B, E, N, d)
        fused = self.fused_norm((weights[:, :, None, None] * expert_tokens).sum(1))  # (B, N, d)
        return FusionOutput(
            tokens=self.pooler(fused, mask, self.expert_gate.task_embedding(task)),
            expert_weights=weights,
            modality_gates=torch.stack(gates, 1),
            aux_loss=self.config.balance_weight * balance_loss(weights),
        )
