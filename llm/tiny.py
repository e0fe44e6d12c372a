"""A tiny randomly initialised causal LM with its own byte-level tokenizer, saved like any hub model
("random:llama-tiny").

For tests and smoke runs: it goes through the same loading, LoRA, prompt and decoding code as a real LLM,
but a training step takes milliseconds. Its answers mean nothing until it is trained.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..weights import RandomModel
from .prompts import TEMPLATES, score_strings

# Words the merges are learnt from: the prompt templates, common label names, every score string. Any other
# text still encodes, byte by byte.
_CORPUS = [
    *(f"{t.head}{t.classify}{t.score}" for t in TEMPLATES.values()),
    "Emotion Sentiment score from to neutral surprise fear sadness joy disgust anger negative positive",
    "情绪 情感 愤怒 厌恶 恐惧 高兴 平静 悲伤 惊奇",
    " ".join(score_strings(-3.0, 3.0)),
]


def save_tiny_lm(directory, hidden: int = 64, layers: int = 2, vocab: int = 400, seed: int = 0) -> Path:
    """Write a Llama-architecture LM and its tokenizer to directory; returns it (a valid LLM reference)."""
    directory = Path(directory)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_CORPUS, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(directory)

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2,
                         # 1/sqrt(hidden) rather than 0.02: with tied embeddings that small, no hidden state can
                         # give any token more than ~1% probability, and the model could never learn an answer.
                         initializer_range=hidden ** -0.5)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def _build(recipe: dict, out: Path) -> None:
    save_tiny_lm(out, recipe["hidden"], recipe["layers"], recipe["vocab"])


# "random:llama-tiny": the tiny LM as a portable reference, built once under $EGMF_HOME/models (egmf.weights).
RANDOM_LMS = {"llama-tiny": RandomModel({"kind": "llama", "hidden": 64, "layers": 2, "vocab": 400}, _build)}
