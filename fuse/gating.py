"""Hierarchical dynamic gating: modality gates inside each expert, and the gate over the experts.

A modality gate weighs the modalities a row actually has (a missing one gets weight 0); the expert gate
weighs the three experts per row from the pooled utterance, its dialogue context and the task. Both
return their weights so runs can log and plot them.

A gate that only rescales tokens is undone by the next LayerNorm, which removes any positive scale. So
modality weights act where modalities compete and no norm follows: as log-weights added to attention
scores (modality_bias), as the size of a cross-modal message, and as mixing weights between experts. A
weight of 0 masks the modality out entirely.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to mask; rows with nothing allowed come out all zero."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, -1) * mask


class ModalityGate(nn.Module):
    """Scores each modality's expert output and rescales its tokens by its share."""

    def __init__(self, d_model: int):
        super().__init__()
        self.score = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, 1))

    def forward(self, pooled: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """pooled (B, M, d), present (B, M) bool -> weights (B, M) summing to 1 over present modalities."""
        return masked_softmax(self.score(pooled).squeeze(-1), present)


def relative_weights(weights: torch.Tensor) -> torch.Tensor:
    """(B, M) weights summing to 1 over the present modalities -> weights * (number present): uniform = all 1."""
    return weights * (weights > 0).sum(-1, keepdim=True).to(weights.dtype)


def token_modality(lengths: list[int], device=None) -> torch.Tensor:
    """(sum of lengths,) long: the modality index of each token when M sequences are concatenated."""
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))


def modality_bias(weights: torch.Tensor, modality: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention key bias for tokens of several modalities.

    weights (B, M) modality weights, modality (S,) long the modality of each key, mask (B, S) -> key_mask (B, S)
    with the keys of a 0-weight modality removed, and key_bias (B, S) = log(relative weight): uniform weights
    add nothing, a modality with twice the weight of another counts as twice as many keys.
    """
    relative = relative_weights(weights)[:, modality]  # (B, S)
    return mask & (relative > 0), relative.clamp(min=torch.finfo(relative.dtype).tiny).log()


class ExpertGate(nn.Module):
    """Weights over the experts from the pooled utterance, the pooled preceding turns and the task."""

    def __init__(self, d_model: int, n_experts: int, n_tasks: int, dropout: float):
        super().__init__()
        self.task_embedding = nn.Embedding(n_tasks, d_model)
        self.mlp = nn.Sequential(nn.LayerNorm(3 * d_model), nn.Linear(3 * d_model, d_model), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(d_model, n_experts))

    def forward(self, utterance: torch.Tensor, context: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """utterance (B, d), context (B, d), task (B,) -> logits (B, E); the weights are their softmax."""
        features = torch.cat([utterance, context, self.task_embedding(task)], -1)  # (B, 3d)
        return self.mlp(features)


def balance_loss(weights: torch.Tensor) -> torch.Tensor:
    """KL(batch-mean gate || uniform): 0 when the experts share the batch evenly, log E when one takes all.

    Penalising the batch mean rather than each row leaves every row free to prefer an expert, while the
    gate as a whole cannot collapse onto one expert.
    """
    mean = weights.mean(0)  # (E,)
    return (mean * (mean.clamp(min=1e-9).log() + math.log(weights.shape[-1]))).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """The router z-loss of ST-MoE (Zoph et al., 2022): mean over rows of logsumexp(logits) ** 2.

    Once a softmax gate saturates (one expert ~1, the rest ~0), the balance loss and the LM loss reach its
    logits through softmax's vanishing gradient, so the gate stays collapsed (MELD, lr 2e-3: most runs ended with
    one expert at 1.00). This loss acts on the logits themselves, with a gradient that grows with their size:
    it bounds them, which keeps the gate able to move, not balanced (README, MELD: at 1e-3 one of two seeds still
    collapsed).
    """
    return torch.logsumexp(logits.float(), -1).pow(2).mean()
