"""Constrained decoding: the LLM scores every valid answer of a task exactly, in one forward pass.

The answers' token sequences form a trie. Its inner nodes (proper prefixes of answers) are appended to the
prompt as a tree: each node attends to the prompt and to its own ancestors only, at the position it would
have after the prompt. One pass therefore yields log p(token | prompt, prefix) for every branch, and an
answer's score is the sum along its path. The prompt is computed once per row and shared by all answers
(like sharing its KV cache), and shared prefixes are computed once: the 61 MOSEI scores "-3.0".."3.0",
four tokens each, need 18 extra positions instead of 244.

Only answers from the list can come out, so every prediction is a valid label or number by construction.
Scoring every answer (rather than masked greedy decoding through the trie) gives the whole distribution:
classification takes its argmax, regression its mean (see ModelConfig.score_readout for the measurement).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .sequences import causal_mask, positions


@dataclass(frozen=True)
class AnswerTrie:
    node_tokens: tuple[int, ...]  # token fed at each inner node
    node_depth: tuple[int, ...]  # 1 = the answer's first token
    ancestry: torch.Tensor  # (N, N) bool: [i, j] = node j is node i or one of its ancestors
    step_source: torch.Tensor  # (C, S) long: logits row predicting step s, 0 = prompt end, 1 + n = node n
    step_token: torch.Tensor  # (C, S) long: the answer's token at step s
    step_valid: torch.Tensor  # (C, S) bool: False past the answer's end

    @classmethod
    def build(cls, answers: list[list[int]]) -> "AnswerTrie":
        """answers: token ids per candidate. No candidate may be empty, repeated, or a prefix of another:
        such a set has no well-defined sequence scores."""
        for i, a in enumerate(answers):
            for j, b in enumerate(answers):
                if not a or (i != j and b[:len(a)] == a):
                    raise ValueError(f"answer {i} ({a}) is empty or a token prefix of answer {j} ({b}); "
                                     f"rename the class so no answer starts with another")
        nodes: dict[tuple[int, ...], int] = {}  # prefix -> node index
        for answer in answers:
            for k in range(1, len(answer)):
                nodes.setdefault(tuple(answer[:k]), len(nodes))
        N, S = len(nodes), max(len(a) for a in answers)
        ancestry = torch.zeros(N, N, dtype=torch.bool)
        for prefix, n in nodes.items():
            for k in range(1, len(prefix) + 1):
                ancestry[n, nodes[prefix[:k]]] = True
        source = torch.zeros(len(answers), S, dtype=torch.long)
        token = torch.zeros(len(answers), S, dtype=torch.long)
        valid = torch.zeros(len(answers), S, dtype=torch.bool)
        for c, answer in enumerate(answers):
            for s, t in enumerate(answer):
                source[c, s] = 0 if s == 0 else 1 + nodes[tuple(answer[:s])]
                token[c, s], valid[c, s] = t, True
        return cls(tuple(p[-1] for p in nodes), tuple(len(p) for p in nodes), ancestry, source, token, valid)


def score_answers(lm, prompt_embeds: torch.Tensor, prompt_valid: torch.Tensor, tries: list[AnswerTrie],
                  filler: int) -> list[torch.Tensor]:
    """Log-likelihood of every answer of each row's trie: a list of (C_b,) float tensors.

    prompt_embeds (B, P, H) and prompt_valid (B, P) hold left-padded prompts, as from embed_rows.
    """
    B, P, _ = prompt_embeds.shape
    device = prompt_embeds.device
    N = max(max(len(t.node_tokens) for t in tries), 1)
    node_ids = torch.full((B, N), filler, dtype=torch.long)
    node_depth = torch.zeros((B, N), dtype=torch.long)
    tree = torch.eye(N, dtype=torch.bool).repeat(B, 1, 1)  # (B, N, N): unused slots see only themselves
    for b, trie in enumerate(tries):
        n = len(trie.node_tokens)
        node_ids[b, :n] = torch.tensor(trie.node_tokens, dtype=torch.long)
        node_depth[b, :n] = torch.tensor(trie.node_depth, dtype=torch.long)
        tree[b, :n, :n] = trie.ancestry
    node_ids, node_depth, tree = node_ids.to(device), node_depth.to(device), tree.to(device)

    embeds = torch.cat([prompt_embeds, lm.get_input_embeddings()(node_ids)], 1)  # (B, P + N, H)
    prompt_positions = positions(prompt_valid)  # (B, P)
    node_positions = prompt_valid.sum(-1, keepdim=True) + node_depth - 1  # (B, N)
    mask = torch.zeros((B, P + N, P + N), dtype=torch.bool, device=device)
    mask[:, :P, :P] = causal_mask(prompt_valid)[:, 0]
    mask[:, P:, :P] = prompt_valid[:, None, :]
    mask[:, P:, P:] = tree
    logits = lm(inputs_embeds=embeds, attention_mask=mask.unsqueeze(1),
                position_ids=torch.cat([prompt_positions, node_positions], 1),
                logits_to_keep=N + 1, use_cache=False).logits  # (B, N + 1, V): prompt end, then the nodes
    log_probs = torch.log_softmax(logits.float(), -1)
    scores = []
    for b, trie in enumerate(tries):
        steps = log_probs[b][trie.step_source.to(device), trie.step_token.to(device)]  # (C, S)
        scores.append((steps * trie.step_valid.to(device)).sum(-1))
    return scores


@torch.no_grad()
def greedy_tokens(lm, prompt_embeds: torch.Tensor, prompt_valid: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps) long: the tokens free greedy decoding appends to each left-padded prompt, no constraint at all.

    It measures whether the LLM has learned the answer format by itself (a reading beside the constrained answer,
    which is valid by construction). The prompt is run once, then one token per step through the KV cache.
    """
    B = prompt_embeds.shape[0]
    out = lm(inputs_embeds=prompt_embeds, attention_mask=causal_mask(prompt_valid),
             position_ids=positions(prompt_valid), logits_to_keep=1, use_cache=True)
    seen, after = prompt_valid, prompt_valid.sum(-1, keepdim=True)  # (B, P), (B, 1) the first answer position
    tokens = [out.logits[:, -1].argmax(-1)]  # steps x (B,)
    for s in range(1, steps):
        seen = torch.cat([seen, torch.ones(B, 1, dtype=torch.bool, device=seen.device)], 1)  # (B, P + s)
        out = lm(inputs_embeds=lm.get_input_embeddings()(tokens[-1]).unsqueeze(1), attention_mask=seen[:, None, None],
                 position_ids=after + s - 1, past_key_values=out.past_key_values, use_cache=True)
        tokens.append(out.logits[:, -1].argmax(-1))
    return torch.stack(tokens, 1)


def spelled_answer(generated: list[int], answers: list[list[int]]) -> int | None:
    """Index of the answer whose tokens the generated ones start with (answers are prefix-free), else None."""
    return next((i for i, a in enumerate(answers) if generated[:len(a)] == a), None)
