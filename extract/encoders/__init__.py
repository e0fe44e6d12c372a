"""Frozen encoders: one module per family turns a batch of decoded inputs into per-utterance feature sequences.

Inputs per modality (what the media decoder gives):
  audio  (speech_ssl): (S_i,) float32 mono at the preset's sample rate (16 kHz);
  visual (clip, face): (N_i, h, w, 3) uint8 frames sampled at the preset's fps, longer side <= 224;
  text   (text):       str transcripts.
encode(batch) returns, per item, a float32 array (T_i, D) with 1 <= T_i <= max_steps: longer sequences are
pooled down to max_steps (adaptive average over time), never truncated. An item that is None or empty (no
samples, no frames, "") comes back as None: the modality is missing for that row.

A row's features never depend on what else is in its batch (up to float rounding), so extraction with any
batch size or number of workers writes the same store.
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ...cache.schema import MODALITIES, EncoderSpec
from ...weights import pick_device
from ..random_models import encoder_source

# family (= module in this package) -> its encoder class
FAMILIES = {"speech_ssl": "SpeechSSLEncoder", "fbank": "FbankEncoder", "clip": "CLIPImageEncoder",
            "text": "TextEncoder", "whisper": "WhisperAudioEncoder",
            "e5": "E5TextEncoder", "face": "FaceEncoder"}
POOLING = "adaptive_avg"  # recorded in every EncoderSpec: how sequences longer than max_steps were shortened


@dataclass(frozen=True)
class EncoderConfig:
    """One modality's encoder as a preset names it."""

    modality: str  # "audio" | "visual" | "text"
    family: str  # a key of FAMILIES
    model: str  # model reference (egmf.weights): hub id, path, "package:...", "chunks:...", "random:..."
    max_steps: int  # T: longer feature sequences are pooled down to this many steps
    params: dict = field(default_factory=dict)  # family options, all recorded in the EncoderSpec
    why: str = ""  # why the preset chose this model (documentation only)

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"encoder modality {self.modality!r} is not one of {MODALITIES}")
        if self.family not in FAMILIES:
            raise ValueError(f"encoder family {self.family!r} is not one of {list(FAMILIES)}")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"{self.modality} encoder: max_steps must be a positive integer, not {self.max_steps!r}")


class Encoder(Protocol):
    spec: EncoderSpec

    def encode(self, batch: list) -> list[np.ndarray | None]: ...


def build_encoder(config: EncoderConfig, device: str = "auto") -> Encoder:
    """Load the model that config names (hub, local or random) onto device ("cpu", "cuda" or "auto")."""
    module = importlib.import_module(f"{__name__}.{config.family}")
    return getattr(module, FAMILIES[config.family])(config, pick_device(device))


def model_file(config: EncoderConfig, default: str, what: str) -> Path:
    """The one weights file a family reads: the file its reference names, or `default` in the directory it names;
    refused, saying `what` the family reads, when there is none."""
    source = encoder_source(config.model)
    path = source.path / (source.file or default) if source.path is not None else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"{config.model}: {what}; none found at {source.location}")
    return path


def autocast(device: torch.device):
    """fp16 autocast on CUDA (the encoders are frozen, fp16 is accurate enough and much faster); none on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def make_spec(config: EncoderConfig, weights: str, dim: int, **derived) -> EncoderSpec:
    """The EncoderSpec of a loaded encoder: the preset's params plus what the model itself decided."""
    params = {**config.params, **derived, "pooling": POOLING}
    return EncoderSpec(config.modality, config.family, config.model, weights, int(dim), config.max_steps, params)


def pool_steps(x: torch.Tensor, max_steps: int) -> torch.Tensor:
    """(T, D) -> (min(T, max_steps), D) by adaptive average pooling over time."""
    if x.shape[0] <= max_steps:
        return x
    return F.adaptive_avg_pool1d(x.T.unsqueeze(0), max_steps)[0].T  # (D, T) -> (D, max_steps) -> (max_steps, D)


def encode_present(batch: list, encode: Callable[[list], list[torch.Tensor]], max_steps: int) -> list:
    """Run encode on the non-empty items only, pool each to max_steps, and put None back where items were missing."""
    present = [i for i, item in enumerate(batch) if item is not None and len(item) > 0]
    out = [None] * len(batch)
    if present:
        for i, seq in zip(present, encode([batch[i] for i in present])):  # seq: (T_i, D)
            out[i] = pool_steps(seq.float(), max_steps).cpu().numpy()
    return out
