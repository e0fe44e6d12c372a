"""Audio features from any transformers speech SSL model (wav2vec2, HuBERT, WavLM, ...) via AutoModel.

Params: sample_rate (must match the model's feature extractor), layer: an index into the hidden states
(0 = the CNN features entering the transformer, -1 = the last layer) or "mean_last_<k>" (the mean of the last k
transformer layers). One step per ~20 ms of audio (50 Hz for the usual conv stack) before pooling.

Batching: models whose CNN feature encoder uses layer norm and whose feature extractor returns an attention mask
are padded and masked. Group-norm feature encoders (wav2vec2-base, HuBERT-base, WavLM-base...) normalise each
channel over the whole time axis, so padding would change every frame: those clips run unpadded, batched only
with clips of exactly the same length.
"""
from __future__ import annotations

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoModel

from . import EncoderConfig, autocast, encode_present, make_spec
from ...weights import weights_identity
from ..random_models import encoder_source

MEAN_LAST = "mean_last_"


class SpeechSSLEncoder:
    def __init__(self, config: EncoderConfig, device: torch.device):
        source = encoder_source(config.model)
        location, options = source.directory(config.model), source.load_options
        self.config, self.device = config, device
        self.extractor = AutoFeatureExtractor.from_pretrained(location, **options)
        self.model = AutoModel.from_pretrained(location, **options).eval().to(device)
        self.sample_rate = self.extractor.sampling_rate
        if config.params.get("sample_rate", self.sample_rate) != self.sample_rate:
            raise ValueError(f"{config.model}: the preset says sample_rate {config.params['sample_rate']} but the "
                             f"model expects {self.sample_rate}; fix the preset's sample_rate")
        self.layer = config.params.get("layer", -1)
        self._check_layer()
        norm = getattr(self.model.config, "feat_extract_norm", "layer")
        self.pad_batches = bool(getattr(self.extractor, "return_attention_mask", False)) and norm == "layer"
        self.min_samples = self._receptive_field()
        self.spec = make_spec(config, weights_identity(source), self.model.config.hidden_size,
                              sample_rate=self.sample_rate, layer=self.layer)

    def _check_layer(self):
        n = self.model.config.num_hidden_layers  # hidden states: n + 1 (the CNN features, then each layer)
        if isinstance(self.layer, str) and self.layer.startswith(MEAN_LAST) and self.layer[len(MEAN_LAST):].isdigit():
            k = int(self.layer[len(MEAN_LAST):])
            ok = 1 <= k <= n
        else:
            ok = isinstance(self.layer, int) and -(n + 1) <= self.layer <= n
        if not ok:
            raise ValueError(f"{self.config.model}: layer {self.layer!r} is not an index in [-{n + 1}, {n}] nor "
                             f"'{MEAN_LAST}<k>' with 1 <= k <= {n}; fix the preset's layer")

    def _receptive_field(self) -> int:
        """Fewest samples that give one output frame; shorter clips are zero-padded up to it."""
        config = self.model.config
        if not hasattr(config, "conv_kernel"):
            raise ValueError(f"{self.config.model} ({config.model_type}) has no wav2vec2-style CNN feature encoder; "
                             f"the speech_ssl family takes wav2vec2, HuBERT, WavLM and their relatives")
        samples = 1
        for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
            samples = (samples - 1) * stride + kernel
        return samples

    @torch.inference_mode()
    def encode(self, batch: list[np.ndarray | None]) -> list[np.ndarray | None]:
        return encode_present(batch, self._encode, self.config.max_steps)

    def _encode(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        clips = [np.pad(c.astype(np.float32), (0, max(0, self.min_samples - len(c)))) for c in clips]
        if self.pad_batches:
            return self._forward(clips)
        out = [None] * len(clips)
        for length in sorted({len(c) for c in clips}):
            group = [i for i, c in enumerate(clips) if len(c) == length]
            for i, seq in zip(group, self._forward([clips[i] for i in group])):
                out[i] = seq
        return out

    def _forward(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        inputs = self.extractor(clips, sampling_rate=self.sample_rate, padding=True, return_tensors="pt",
                                return_attention_mask=self.pad_batches)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with autocast(self.device):
            hidden = self.model(**inputs, output_hidden_states=True).hidden_states  # n + 1 x (B, T, D)
        if isinstance(self.layer, int):
            states = hidden[self.layer]  # (B, T, D)
        else:
            k = int(self.layer[len(MEAN_LAST):])
            states = torch.stack([h.float() for h in hidden[-k:]]).mean(0)  # (B, T, D)
        lengths = self.model._get_feat_extract_output_lengths(torch.tensor([len(c) for c in clips]))  # (B,)
        return [states[i, :int(n)] for i, n in enumerate(lengths)]
