"""egmf-predict: one clip through the run's own encoders and the trained model.

The encoders are rebuilt from what the training caches recorded (family, model, parameters) and must produce
features with the same fingerprint, so a prediction never mixes feature spaces. The clip is decoded and encoded
by extraction's own steps, and its features take the way of a cached row (float16, then the collate of training
and evaluation), so that predicting a clip answers as egmf-eval does on that clip's row.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..cache.schema import CacheError, EncoderSpec, features_fingerprint
from ..extract.api import EncoderConfig, Utterance, build_encoder, encode_block, submit_decodes
from ..fuse import EXPERTS
from ..weights import pick_device
from .data import SplitData, collate
from .evaluate import run_bf16
from .precision import autocast
from .runfolder import RunFolder

DERIVED_PARAMS = {"pooling"}  # written into EncoderSpec.params by the encoder itself, not preset options


def rebuild_encoders(run: RunFolder, modalities, device: torch.device) -> dict:
    recorded = run.caches_json()[0]
    specs = {m: EncoderSpec.from_dict(e) for m, e in recorded["encoders"].items() if m in modalities}
    encoders = {m: build_encoder(EncoderConfig(m, s.family, s.model_id, s.max_steps,
                                               {k: v for k, v in s.params.items() if k not in DERIVED_PARAMS}),
                                 str(device)) for m, s in specs.items()}
    rebuilt = {m: e.spec for m, e in encoders.items()}
    if features_fingerprint(rebuilt) != features_fingerprint(specs):
        raise CacheError(f"the encoders rebuilt from {run.path / 'caches.json'} do not reproduce the training "
                         "features (other weights behind the same model name?). Fix: install the same model files")
    return encoders


def encode_clip(encoders: dict, clip: Path, text: str, language: str) -> tuple[dict, dict, dict]:
    """-> (modality -> (1, T, D) float16 features, modality -> (1,) lengths, modality -> why it is missing),
    as a cache row holds them: zero-padded, length 0 where the modality is missing."""
    utterance = Utterance(Path(clip).stem, "test", text, language, {}, media=Path(clip))
    with ThreadPoolExecutor(1) as pool:
        rows, problems = encode_block([utterance], submit_decodes(pool, [utterance], encoders), encoders, 1)
    features, lengths, missing = {}, {}, {}
    for m, enc in encoders.items():
        x = rows[m][0]  # (T, D) or None
        if x is None:
            missing[m] = problems[m][0]
        features[m] = (np.zeros((1, enc.spec.dim)) if x is None else x)[None].astype(np.float16)  # (1, T, D)
        lengths[m] = np.array([0 if x is None else len(x)], np.int32)
    return features, lengths, missing


@torch.no_grad()
def predict_clip(run_dir, clip: Path, text: str, language: str, task: int = 0, device: str = "auto",
                 speaker: str = "") -> dict:
    run = RunFolder(Path(run_dir))
    chosen = pick_device(device)
    model = run.load_model().to(chosen).eval()
    if model.config.speaker_pattern is not None:
        raise ValueError(f"{run.path}: the model reads features standardised per speaker over many clips "
                         f"(--speaker-pattern {model.config.speaker_pattern!r}); one clip alone has no speaker "
                         f"statistics. Fix: extract the speaker's clips into a cache and score it with egmf-eval, or "
                         f"train without --speaker-pattern")
    if speaker and not model.config.speaker_names:
        raise ValueError(f"{run.path}: the model was trained without speaker names in its prompts, so a speaker "
                         f"({speaker!r}) would give it a prompt it never saw. Fix: leave out --speaker, or use a "
                         f"model trained with --speaker-names")
    encoders = rebuild_encoders(run, model.config.modality_dims, chosen)
    text = text if "text" in encoders else ""  # as in training: no text modality, no transcript in the prompt
    features, lengths, missing = encode_clip(encoders, clip, text, language)
    # A single clip has no preceding turns: all of the model's context_turns are absent.
    no_context = np.full((1, model.config.context_turns), -1, np.int64)
    row = SplitData(features, lengths, no_context, [text], [language], [None], np.array([-1]), task,
                    [speaker] if "text" in encoders else [])
    with autocast(chosen, run_bf16(run, chosen)):  # the precision egmf-eval uses too
        p = model.predict(collate(row, np.arange(1)).to(chosen))
    return {"task": model.config.tasks[task].name, "answer": p.answers[0], "value": p.values[0],
            "expert_weights": dict(zip(EXPERTS, p.expert_weights[0].tolist())),
            "modality_weights": dict(zip(model.fusion.modalities, p.modality_weights[0].tolist())), "missing": missing}
