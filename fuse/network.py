"""The fusion network: projections, the three experts, the expert gate and the pseudo-token pooler.

Input: an utterance's cached feature sequences (any subset of modalities present per row), the pooled
features of its preceding turns and the task index. Output: K pseudo tokens in the LLM's embedding space.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import EXPERTS, FusionConfig
from .experts import ContextExpert, CorrelationExpert, LocalExpert
from .gating import ExpertGate, balance_loss, modality_bias, token_modality, z_loss
from .layers import FeedForward, MaskedAttention, masked_mean
from .projection import ModalityProjection


@dataclass
class FusionOutput:
    tokens: torch.Tensor  # (B, K, H): pseudo tokens for the LLM's inputs_embeds
    expert_weights: torch.Tensor  # (B, 3): the expert gate, in EXPERTS order (0 for an expert the network lacks)
    modality_gates: torch.Tensor  # (B, 3, M): each expert's modality gate (0 for a missing modality or expert)
    modality_weights: torch.Tensor  # (B, M): the share of each modality in the pseudo tokens, sum_e expert_e * gate_e
    aux_loss: torch.Tensor  # (): the expert gate's balance loss + z-loss, weighted (balance_weight, z_weight)


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

    def forward(self, fused: torch.Tensor, mask: torch.Tensor, task: torch.Tensor,
                key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """fused (B, N, d), mask (B, N), task (B, d), key_bias (B, N) log-weights of the tokens -> (B, K, H)."""
        queries = self.queries.unsqueeze(0) + task.unsqueeze(1)  # (B, K, d)
        pooled = queries + self.attention(queries, self.norm(fused), mask, key_bias)
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
        build = {"local": lambda: LocalExpert(self.modalities, c.d_model, c.local_kernel, c.local_layers, c.dropout),
                 "correlation": lambda: CorrelationExpert(self.modalities, c.d_model, c.n_heads, c.dropout),
                 "context": lambda: ContextExpert(c.d_model, c.n_heads, c.context_layers, c.dropout)}
        kept = [i for i, e in enumerate(EXPERTS) if e in c.experts]  # positions in EXPERTS, in that order
        self.register_buffer("kept", torch.tensor(kept), persistent=False)
        self.experts = nn.ModuleList([build[EXPERTS[i]]() for i in kept])
        for expert in self.experts:
            expert.uniform = c.uniform_gates
        self.expert_gate = ExpertGate(c.d_model, len(self.experts), n_tasks, c.dropout)
        self.fused_norm = nn.LayerNorm(c.d_model)
        self.pooler = TokenPooler(c.d_model, c.n_heads, c.n_tokens, out_dim, out_scale, c.dropout)

    def forward(self, features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                context: dict[str, torch.Tensor], context_mask: torch.Tensor, task: torch.Tensor) -> FusionOutput:
        """features/masks/context/context_mask as in pipeline.batch.Batch; task (B,) long."""
        tokens = self.projection(features, masks)  # M x (B, T_m, d)
        mask_list = [masks[m] for m in self.modalities]
        turns, turn_mask = self.projection.context(context, context_mask)  # (B, M*C, d), (B, M*C)
        turn_modality = token_modality([context_mask.shape[1]] * len(tokens), turns.device)  # (M*C,)
        outputs, gates = zip(*(expert(tokens, mask_list, turns=turns, turn_mask=turn_mask, turn_modality=turn_modality)
                               for expert in self.experts))
        gates = torch.stack(gates, 1)  # (B, E, M)

        # The expert gate reads each modality's pooled utterance and turns in the proportion the experts keep it,
        # so a modality that every expert gates to 0 reaches nothing.
        kept = gates.mean(1).unsqueeze(-1)  # (B, M, 1)
        utterance = (kept * torch.stack([masked_mean(t, m) for t, m in zip(tokens, mask_list)], 1)).sum(1)  # (B, d)
        turn_tokens, turn_masks = turns.chunk(len(tokens), 1), turn_mask.chunk(len(tokens), 1)
        turn_pooled = (kept * torch.stack([masked_mean(t, m) for t, m in zip(turn_tokens, turn_masks)], 1)).sum(1)
        logits = self.expert_gate(utterance, turn_pooled, task)  # (B, E)
        if self.config.uniform_gates:
            weights, aux_loss = torch.full_like(logits, 1 / logits.shape[1]), logits.new_zeros(())
        else:
            weights = torch.softmax(logits, -1)
            aux_loss = self.config.balance_weight * balance_loss(weights) + self.config.z_weight * z_loss(logits)

        # Modality m's tokens are each expert's tokens of m, mixed by expert weight x that expert's gate on m; the
        # mixture is normalised (a LayerNorm follows), and how much of m the pseudo tokens see is its total share.
        share = weights.unsqueeze(-1) * gates  # (B, E, M)
        modality_weights = share.sum(1)  # (B, M)
        mix = share / modality_weights.unsqueeze(1).clamp(min=torch.finfo(share.dtype).tiny)  # (B, E, M)
        fused = torch.cat([(mix[:, :, i, None, None] * torch.stack([o[i] for o in outputs], 1)).sum(1)
                           for i in range(len(tokens))], 1)  # (B, N, d)
        mask = torch.cat(mask_list, 1)  # (B, N)
        key_mask, key_bias = modality_bias(modality_weights, token_modality([t.shape[1] for t in tokens],
                                                                             mask.device), mask)
        every = torch.zeros(weights.shape[0], len(EXPERTS), *gates.shape[2:], dtype=gates.dtype, device=gates.device)
        return FusionOutput(
            tokens=self.pooler(self.fused_norm(fused), key_mask, self.expert_gate.task_embedding(task), key_bias),
            expert_weights=every[..., 0].index_copy(1, self.kept, weights),
            modality_gates=every.index_copy(1, self.kept, gates),
            modality_weights=modality_weights,
            aux_loss=aux_loss,
        )
