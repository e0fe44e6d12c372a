"""Masked building blocks shared by the experts: pooling, positions, attention, feed-forward.

Masks are bool with True = a real step. Every block guarantees that masked steps cannot influence what it
returns for real steps, and that a query with no real key gets exactly zero (never NaN).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the steps where mask is True; zero where there are none. x (B, T, D), mask (B, T) -> (B, D)."""
    weights = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def sinusoidal_positions(n: int, dim: int, device=None) -> torch.Tensor:
    """Fixed position codes (n, dim): no learned table, so any sequence length from the cache works."""
    position = torch.arange(n, device=device, dtype=torch.float32).unsqueeze(1)  # (n, 1)
    frequency = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(1e4) / dim))
    codes = torch.zeros(n, dim, device=device)
    codes[:, 0::2] = torch.sin(position * frequency)
    codes[:, 1::2] = torch.cos(position * frequency)
    return codes


class MaskedAttention(nn.Module):
    """Multi-head attention from queries to keys that skips masked keys."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor,
                key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """queries (B, Q, D), keys (B, S, D), key_mask (B, S); key_bias (B, S): finite log-weights added to every
        query's attention scores, so that a gate can turn some keys up or down (a weight of 0 belongs in key_mask)."""
        B, Q, D = queries.shape
        allowed = key_mask.unsqueeze(1).expand(B, Q, keys.shape[1])  # (B, Q, S)
        has_key = allowed.any(-1, keepdim=True)  # (B, Q, 1)
        # A query without keys would softmax over nothing (NaN): let it see everything, then zero its output.
        allowed = (allowed | ~has_key).unsqueeze(1)  # (B, 1, Q, S)
        split = lambda t: t.view(B, t.shape[1], self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, h, T, d)
        q = split(self.query(queries))
        k, v = self.key_value(keys).chunk(2, dim=-1)
        if key_bias is not None:
            bias = key_bias[:, None, None, :].to(q.dtype)  # (B, 1, 1, S)
            allowed = bias.masked_fill(~allowed, float("-inf"))  # (B, 1, Q, S) additive mask
        attended = F.scaled_dot_product_attention(
            q, split(k), split(v), attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)  # (B, h, Q, d)
        return self.out(attended.transpose(1, 2).reshape(B, Q, D)) * has_key  # (B, Q, D)


class FeedForward(nn.Module):
    """Pre-norm position-wise MLP with its residual."""

    def __init__(self, d_model: int, dropout: float, expansion: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, expansion * d_model), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(expansion * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)
