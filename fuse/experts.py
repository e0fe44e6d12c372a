"""The three experts. Each maps the projected modality sequences to new sequences of the same shapes and has
its own modality gate, scored from the pooled input of each modality: the correlation expert sizes each
cross-modal message by it, the context expert adds it to its attention scores (gating.modality_bias), and the
network mixes the experts' outputs with it (fuse/network.py).

- LocalExpert: short-range cues inside each modality (dilated depthwise temporal convolutions).
- CorrelationExpert: cross-modal attention from every modality to every other one.
- ContextExpert: attention over the whole utterance (all modalities) and the preceding turns of its dialogue.
"""
from __future__ import annotations

import torch
from torch import nn

from .gating import ModalityGate, modality_bias, relative_weights, token_modality
from .layers import FeedForward, MaskedAttention, masked_mean


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x * mask.unsqueeze(-1).to(x.dtype)


class _GatedExpert(nn.Module):
    """Scores its modality gate from the pooled inputs and hands the weights to transform(); with uniform set (an
    ablation), every present modality gets the same weight."""

    def __init__(self, d_model: int):
        super().__init__()
        self.gate = ModalityGate(d_model)
        self.uniform = False

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor], **context
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """tokens: M x (B, T_m, d), masks: M x (B, T_m) -> (M x (B, T_m, d), modality weights (B, M))."""
        pooled = torch.stack([masked_mean(t, m) for t, m in zip(tokens, masks)], 1)  # (B, M, d)
        present = torch.stack([m.any(-1) for m in masks], 1)  # (B, M)
        weights = self.gate(pooled, present)
        if self.uniform:
            weights = present.to(weights.dtype) / present.sum(-1, keepdim=True).clamp(min=1).to(weights.dtype)
        outputs = self.transform(tokens, masks, weights, **context)
        return [_masked(out, mask) for out, mask in zip(outputs, masks)], weights


class _ConvBlock(nn.Module):
    def __init__(self, d_model: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=dilation * (kernel // 2), dilation=dilation,
                                   groups=d_model)
        self.pointwise = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d); masked steps enter the convolution as zeros, so they add nothing."""
        h = _masked(self.norm(x), mask).transpose(1, 2)  # (B, d, T)
        return _masked(x + self.pointwise(self.depthwise(h).transpose(1, 2)), mask)


class LocalExpert(_GatedExpert):
    def __init__(self, modalities: list[str], d_model: int, kernel: int, layers: int, dropout: float):
        super().__init__(d_model)
        self.blocks = nn.ModuleDict({m: nn.ModuleList([_ConvBlock(d_model, kernel, 2 ** i, dropout)
                                                       for i in range(layers)]) for m in modalities})

    def transform(self, tokens, masks, weights, **_):
        """Each modality on its own: its weight acts only where the network mixes the experts."""
        outputs = []
        for blocks, x, mask in zip(self.blocks.values(), tokens, masks):
            for block in blocks:
                x = block(x, mask)
            outputs.append(x)
        return outputs


class CorrelationExpert(_GatedExpert):
    """Modality a attends to each other modality b with its own attention a<-b; the messages add up, each sized by
    b's gate weight relative to uniform (a modality at weight 0 sends nothing)."""

    def __init__(self, modalities: list[str], d_model: int, n_heads: int, dropout: float):
        super().__init__(d_model)
        self.modalities = modalities
        # One modality has no pair to attend across: no norm and no attention, so that every parameter reaches
        # the loss (DDP without find_unused_parameters fails on one that does not).
        self.norm = nn.LayerNorm(d_model) if len(modalities) > 1 else None
        self.cross = nn.ModuleDict({f"{a}<-{b}": MaskedAttention(d_model, n_heads, dropout)
                                    for a in modalities for b in modalities if a != b})
        self.dropout = nn.Dropout(dropout)
        self.feed_forward = FeedForward(d_model, dropout)

    def transform(self, tokens, masks, weights, **_):
        if self.norm is None:
            return [self.feed_forward(x) for x in tokens]
        normed = [self.norm(x) for x in tokens]
        size = relative_weights(weights)[:, :, None, None]  # (B, M, 1, 1)
        outputs = []
        for i, (a, x) in enumerate(zip(self.modalities, tokens)):
            for j, b in enumerate(self.modalities):
                if b != a:
                    x = x + size[:, j] * self.dropout(self.cross[f"{a}<-{b}"](normed[i], normed[j], masks[j]))
            outputs.append(self.feed_forward(x))
        return outputs


class ContextExpert(_GatedExpert):
    """Self-attention over every token of the utterance, with the preceding turns' tokens as extra keys; each key's
    score is shifted by its modality's log gate weight (relative to uniform)."""

    def __init__(self, d_model: int, n_heads: int, layers: int, dropout: float):
        super().__init__(d_model)
        self.norms = nn.ModuleList([nn.LayerNorm(d_model) for _ in range(layers)])
        self.attention = nn.ModuleList([MaskedAttention(d_model, n_heads, dropout) for _ in range(layers)])
        self.feed_forward = nn.ModuleList([FeedForward(d_model, dropout) for _ in range(layers)])
        self.dropout = nn.Dropout(dropout)

    def transform(self, tokens, masks, weights, *, turns: torch.Tensor, turn_mask: torch.Tensor,
                  turn_modality: torch.Tensor):
        """turns (B, C', d) with turn_mask (B, C') and turn_modality (C',) long: the preceding utterances' pooled
        tokens and the modality of each, C' = 0 without dialogues."""
        lengths = [t.shape[1] for t in tokens]
        x, mask = torch.cat(tokens, 1), torch.cat(masks, 1)  # (B, N, d), (B, N)
        modality = torch.cat([token_modality(lengths, x.device), turn_modality])  # (N + C',)
        key_mask, key_bias = modality_bias(weights, modality, torch.cat([mask, turn_mask], 1))  # (B, N + C')
        for norm, attention, feed_forward in zip(self.norms, self.attention, self.feed_forward):
            keys = norm(torch.cat([x, turns], 1))  # (B, N + C', d)
            x = x + self.dropout(attention(keys[:, :x.shape[1]], keys, key_mask, key_bias))
            x = _masked(feed_forward(x), mask)
        return list(x.split(lengths, 1))
