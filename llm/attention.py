"""The LLM's attention: torch's SDPA on CUDA, plain matmul-softmax attention on the CPU.

On the CPU, SDPA dispatches to a fused flash kernel whose backward pass is slow for the short rows stage two
trains on: SmolLM2-135M (9 heads of 64, 3 KV heads), a batch of 16 rows of 64 tokens, bf16, one layer's forward
and backward take 20.4 ms fused against 5.2 ms as two matmuls and a softmax; over 30 layers that was 0.45 s of a
2.9 s MELD training step. The plain form computes the same function (the softmax in float32, as transformers'
eager attention does), and reads the boolean masks of llm.sequences as they are.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "egmf"  # the attn_implementation load_causal_lm asks for


def plain_attention(module, query, key, value, attention_mask, scaling, dropout: float = 0.0,
                    softcap: float | None = None):
    """query (B, Hq, Lq, D), key/value (B, Hkv, Lk, D), attention_mask (B, 1, Lq, Lk) bool (True = may attend) or
    additive float, or None for causal -> (B, Lq, Hq, D), the attention weights (B, Hq, Lq, Lk). softcap: the
    logit soft-capping of Gemma 2, softcap * tanh(scores / softcap) before the mask, as its eager attention does."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)  # grouped-query heads
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, Hq, Lq, Lk)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is None:  # causal, the queries being the last Lq positions
        q, k = scores.shape[-2:]
        attention_mask = torch.ones(q, k, dtype=torch.bool, device=scores.device).tril(k - q)
    if attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    else:
        scores = scores + attention_mask
    weights = torch.softmax(scores, -1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def device_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs):
    """transformers' attention interface: SDPA on CUDA, plain_attention elsewhere. Keyword arguments that only
    SDPA reads (sliding_window: our 4D masks already say what each token sees) are passed to SDPA and dropped by
    the plain form, which reads softcap."""
    if query.device.type == "cuda":
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return plain_attention(module, query, key, value, attention_mask, scale, dropout, kwargs.get("softcap"))


AttentionInterface.register(NAME, device_attention)
