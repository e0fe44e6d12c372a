"""Log-mel filterbank features: the classic speech front end (Kaldi-style fbank), computed, not learnt.

Pitch level, pitch range, loudness and speaking rate, the paralinguistic cues of emotion, are plainly visible
in log-mel frames; they need no pretrained weights, so this is the offline preset's audio encoder where no speech
SSL weights can be had. 25 ms windows every 10 ms; frames are then pooled to max_steps like every other family.
"""
from __future__ import annotations

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from ...cache.schema import digest
from . import EncoderConfig, encode_present, make_spec


class FbankEncoder:
    def __init__(self, config: EncoderConfig, device: torch.device):
        p = config.params
        self.config = config
        self.rate = p.get("sample_rate", 16000)
        self.frame, self.hop = int(0.025 * self.rate), int(0.010 * self.rate)
        self.fft = 1 << (self.frame - 1).bit_length()
        self.window = window_function(self.frame, "hann")
        self.mels = mel_filter_bank(self.fft // 2 + 1, p.get("n_mels", 80), 20.0, self.rate / 2, self.rate,
                                    norm="slaney", mel_scale="slaney")
        # No weights: the "weights" identity is the front end's own settings.
        self.spec = make_spec(config, digest({"fbank": [self.rate, self.frame, self.hop, self.fft]}),
                              self.mels.shape[1])

    def encode(self, batch: list[np.ndarray | None]) -> list[np.ndarray | None]:
        return encode_present(batch, self._encode, self.config.max_steps)

    def _encode(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        out = []
        for audio in clips:
            audio = np.pad(audio, (0, max(0, self.frame - len(audio))))  # at least one frame
            frames = spectrogram(audio, self.window, self.frame, self.hop, self.fft, power=2.0,
                                 mel_filters=self.mels, log_mel="log10")  # (n_mels, T)
            out.append(torch.from_numpy(frames.T.copy()))  # (T, n_mels)
        return out
