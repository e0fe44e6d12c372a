"""Batches of token rows for the LLM: left padding, explicit positions, SDPA masks, pseudo-token splicing,
and the loss on the answer tokens.

Rows are left-padded so every prompt ends at the same position (its last logits are at index -1), and
positions are counted from each row's first real token, so padding changes nothing a row computes.
Masks are 4D bool (B, 1, L, L), True = may attend; every position may attend to itself, so padding rows
never softmax over nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .prompts import PLACEHOLDER


def pad_left(rows: list[list[int]], filler: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids (B, L) with filler in padding and placeholders, valid (B, L) bool."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), filler, dtype=torch.long)
    valid = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = torch.tensor(row, dtype=torch.long)
        valid[i, length - len(row):] = True
    return ids.to(device), valid.to(device)


def positions(valid: torch.Tensor) -> torch.Tensor:
    """(B, L) bool -> (B, L) long: 0 at each row's first real token."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, L) bool -> (B, 1, L, L): each real token sees the real tokens up to itself."""
    L = valid.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=valid.device).tril()  # (L, L)
    eye = torch.eye(L, dtype=torch.bool, device=valid.device)
    return ((causal & valid[:, None, :]) | eye).unsqueeze(1)


def embed_rows(lm, rows: list[list[int]], tokens: torch.Tensor, filler: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows with PLACEHOLDERs -> (inputs_embeds (B, L, H), valid (B, L)).

    tokens (B, K, H) are the pseudo tokens; row b must hold exactly K placeholders, filled in order.
    """
    B, K, _ = tokens.shape
    ids, valid = pad_left(rows, filler, tokens.device)
    placeholder = ids == PLACEHOLDER
    counts = placeholder.sum(-1)
    if not bool((counts == K).all()):
        raise ValueError(f"each prompt needs {K} pseudo-token placeholders, got {counts.tolist()}")
    embeds = lm.get_input_embeddings()(ids.masked_fill(placeholder, filler))  # (B, L, H)
    # masked_scatter fills row-major, so row b's placeholders take tokens[b, 0..K-1] in order.
    embeds = embeds.masked_scatter(placeholder.unsqueeze(-1), tokens.to(embeds.dtype))
    return embeds, valid


def embedding_rms(lm) -> float:
    """RMS of the token embeddings the LLM's layers read, which the pseudo tokens should match: the table's RMS
    times the scale that some embedding modules apply to the rows they look up (Gemma multiplies them by
    sqrt(hidden size): 25.3 for Gemma 3 270M, whose table alone has RMS ~0.03); 1 for Llama-style LLMs."""
    embedding = lm.get_input_embeddings()
    table = embedding.weight.detach()  # (V, H)
    row = table.norm(dim=-1).argmax().reshape(1)  # a row that is surely not zero (padding rows can be)
    with torch.no_grad():
        scale = embedding(row).norm() / table[row].norm()
    return table.pow(2).mean().sqrt().item() * scale.item()


def answer_loss(logits: torch.Tensor, answers: list[list[int]], weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens that end each row; with weights (B,), each row's tokens count that
    many times (divided by the number of answer tokens either way, so weights of mean 1 keep the loss's scale).

    logits (B, A+1, V) are the last A+1 positions of left-padded rows whose last len(answers[b]) tokens are
    the answer, A = the longest answer; position t predicts token t+1.
    """
    A = logits.shape[1] - 1
    targets = torch.full((len(answers), A), -100, dtype=torch.long)
    for i, answer in enumerate(answers):
        targets[i, A - len(answer):] = torch.tensor(answer, dtype=torch.long)
    targets = targets.to(logits.device)
    losses = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                             ignore_index=-100, reduction="none").view(len(answers), A)  # 0 where ignored
    per_row = losses.sum(1) if weights is None else losses.sum(1) * weights
    return per_row.sum() / (targets != -100).sum()
