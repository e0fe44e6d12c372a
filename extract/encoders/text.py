"""Text features: the token-level last hidden state of any transformers encoder (BERT, RoBERTa, MiniLM, ...).

One step per token, the special tokens included (a sentence-transformers mean pool over the sequence gives the
model's sentence embedding). Transcripts longer than the model's input limit (512 tokens for BERT-like models)
are cut at that limit; utterances in the supported corpora are far shorter.
"""
from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from . import EncoderConfig, autocast, encode_present, make_spec
from ...weights import weights_identity
from ..random_models import encoder_source


class TextEncoder:
    def __init__(self, config: EncoderConfig, device: torch.device):
        self.config, self.device = config, device
        self.tokenizer, model, weights = self._load(config)
        self.model = model.eval().to(device)
        limits = [self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", None)]
        self.max_tokens = min(n for n in limits if n)
        self.spec = make_spec(config, weights, self.model.config.hidden_size, max_tokens=self.max_tokens)

    def _load(self, config: EncoderConfig):
        """(tokenizer, model, weights identity) of the reference; families of other file formats override this."""
        source = encoder_source(config.model)
        location, options = source.directory(config.model), source.load_options
        return (AutoTokenizer.from_pretrained(location, **options), AutoModel.from_pretrained(location, **options),
                weights_identity(source))

    @torch.inference_mode()
    def encode(self, batch: list[str | None]) -> list[np.ndarray | None]:
        return encode_present(batch, self._encode, self.config.max_steps)

    def _encode(self, texts: list[str]) -> list[torch.Tensor]:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                                return_tensors="pt").to(self.device)
        with autocast(self.device):
            states = self.model(**tokens).last_hidden_state  # (B, L, D)
        mask = tokens["attention_mask"].bool()  # (B, L); a mask, not a length: some tokenizers pad on the left
        return [states[i][mask[i]] for i in range(len(texts))]
