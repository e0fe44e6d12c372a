"""Model presets for egmf-train: data files (pipeline/presets/<name>.json) that name the LLM and size the fusion
network and the LoRA adapter, beside the encoder presets (extract/presets/).

A preset file:
  {"description": "...",
   "model": {"llm": a model reference (egmf.weights), "lora_r": 16, ..., "fusion": {"d_model": 256, ...}}}
"model" holds any ModelConfig field but the feature sizes and tasks, which come from the caches; fields it
leaves out keep ModelConfig's defaults. Shipped: offline (SmolLM2-135M, packaged, English), offline-bilingual
(Gemma 3 270M, packaged, Chinese and English), hub (Qwen2.5-0.5B-Instruct), tiny (a random 2-layer LM, for
tests). A path to a JSON file works as a preset name too. Options on the command line win over the preset.
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from ..fuse import FusionConfig
from .model import ModelConfig

PRESET_DIR = Path(__file__).parent / "presets"
FROM_CACHES = {"modality_dims", "tasks"}  # ModelConfig fields a preset cannot set


def available() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> dict:
    """The "model" settings of a shipped preset by name, or of a preset JSON file by path."""
    path = Path(name) if name.endswith(".json") else PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no model preset {name!r}: choose one of {available()} or give a path to a "
                                f"preset .json")
    try:
        settings = json.loads(path.read_text(encoding="utf-8")).get("model", {})
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}); fix the file") from e
    allowed = {f.name for f in fields(ModelConfig)} - FROM_CACHES
    unknown = set(settings) - allowed | set(settings.get("fusion", {})) - {f.name for f in fields(FusionConfig)}
    if unknown:
        raise ValueError(f"{path}: unknown settings {sorted(unknown)}; \"model\" takes {sorted(allowed)}, "
                         f"\"fusion\" takes FusionConfig's fields; fix the file")
    return settings


def model_config(name: str, modality_dims: dict[str, int], tasks, **overrides) -> ModelConfig:
    """The preset's ModelConfig for these feature sizes and tasks; overrides: ModelConfig fields (fusion: a dict
    of FusionConfig fields) that win over the preset's."""
    settings = load_preset(name)
    fusion = {**settings.pop("fusion", {}), **overrides.pop("fusion", {})}
    return ModelConfig(modality_dims=dict(modality_dims), tasks=list(tasks), fusion=FusionConfig(**fusion),
                       **{**settings, **overrides})
