"""Named encoder presets: data files (extract/presets/<name>.json) that pick a family, model and params per modality.

A preset file:
  {"description": "...",
   "encoders":  {"audio": ENTRY, "visual": ENTRY, "text": ENTRY},     used for every language
   "languages": {"zh": {"audio": ENTRY, ...}}}                        optional per-language replacements
  ENTRY = {"family": a key of encoders.FAMILIES ("whisper", "face", "e5", ...),
           "model": a model reference (egmf.weights), "max_steps": int, "params": {...}, "why": "why this model"}
Shipped: hub (the real defaults, English and Chinese), offline (real packaged speech, face and text weights),
offline-v1 (the earlier offline preset: log-mel, random CLIP, MiniLM; reproduces the README's older
results), tiny (all small random models, for tests), hub-sized (the hub preset's English architectures at full
size with random weights, for benchmarks). A path to a JSON file works as a preset name too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .encoders import EncoderConfig

PRESET_DIR = Path(__file__).parent / "presets"
ENTRY_KEYS = {"family", "model", "max_steps", "params", "why"}


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path  # the JSON file it was read from
    description: str
    default: dict[str, EncoderConfig]  # modality -> encoder, for every language
    languages: dict[str, dict[str, EncoderConfig]] = field(default_factory=dict)  # language -> replacements

    def encoders(self, language: str) -> dict[str, EncoderConfig]:
        """modality -> encoder for a corpus in this language ("en", "zh", ...)."""
        return {**self.default, **self.languages.get(language, {})}

    def encoders_for(self, language: str, modalities) -> dict[str, EncoderConfig]:
        """As encoders(language), refused with the fix when the preset has no encoder for one of modalities."""
        configs = self.encoders(language)
        missing = [m for m in modalities if m not in configs]
        if missing:
            others = [m for m in modalities if m in configs]
            leave_out = f", or leave them out with --modalities {','.join(others)}" if others else ""
            raise ValueError(f"{self.path}: preset {self.name!r} has no encoder for {', '.join(missing)} (corpus "
                             f"language {language}). Fix: add {', '.join(missing)} to the preset's \"encoders\""
                             f"{leave_out}")
        return configs


def available() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> Preset:
    """A shipped preset by name ("hub", "offline", "tiny"), or a preset JSON file by path."""
    path = Path(name) if name.endswith(".json") else PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no preset {name!r}: choose one of {available()} or give a path to a preset .json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}); fix the file") from e
    default = _entries(path, "encoders", data.get("encoders"))
    languages = {lang: _entries(path, f"languages.{lang}", entries)
                 for lang, entries in data.get("languages", {}).items()}
    return Preset(path.stem, path, data.get("description", ""), default, languages)


def _entries(path: Path, where: str, entries) -> dict[str, EncoderConfig]:
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"{path}: {where!r} must map modalities (audio, visual, text) to encoders; fix the file")
    configs = {}
    for modality, entry in entries.items():
        missing = {"family", "model", "max_steps"} - set(entry)
        unknown = set(entry) - ENTRY_KEYS
        if missing or unknown:
            raise ValueError(f"{path}: {where}.{modality} lacks {sorted(missing)} / has unknown keys "
                             f"{sorted(unknown)}; an entry has {sorted(ENTRY_KEYS)}")
        try:
            configs[modality] = EncoderConfig(modality, entry["family"], entry["model"], entry["max_steps"],
                                              dict(entry.get("params", {})), entry.get("why", ""))
        except ValueError as e:
            raise ValueError(f"{path}: {where}.{modality}: {e}") from e
    return configs
