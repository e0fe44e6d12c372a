"""egmf-predict: one clip through the run's own encoders and the trained model.

The encoders are rebuilt from what the training caches recorded (family, model, parameters) and must produce
features with the same fingerprint, so a prediction never mixes feature spaces.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..cache.schema import CacheError, EncoderSpec, features_fingerprint
from ..extract.encoders import EncoderConfig, build_encoder
from ..extract.media import decode_clip
from ..fuse import EXPERTS
from .batch import Batch
from .runfolder import RunFolder
from .train import pick_device

DERIVED_PARAMS = {"pooling"}  # written into EncoderSpec.params by the encoder itself, not preset options


def rebuild_encoders(run: RunFolder, modalities, device: str) -> dict:
    recorded = run.caches_json()[0]
    specs = {m: EncoderSpec.from_dict(e) for m, e in recorded["encoders"].items() if m in modalities}
    encoders = {m: build_encoder(EncoderConfig(m, s.family, s.model_id, s.max_steps,
                                               {k: v for k, v in s.params.items() if k not in DERIVED_PARAMS}),
                                 device) for m, s in specs.items()}
    rebuilt = {m: e.spec for m, e in encoders.items()}
    if features_fingerprint(rebuilt) != features_fingerprint(specs):
        raise CacheError(f"the encoders rebuilt from {run.path / 'caches.json'} do not reproduce the training "
                         "features (other weights behind the same model name?). Fix: install the same model files")
    return encoders


@torch.no_grad()
def predict_clip(run_dir, clip: Path, text: str, language: str, task: int = 0, device: str = "auto") -> dict:
    run = RunFolder(Path(run_dir))
    dev = pick_device(device)
    model = run.load_model().to(dev).eval()
    encoders = rebuild_encoders(run, run.modalities, device)
    text = text if "text" in encoders else ""  # as in training: no text modality, no transcript in the prompt
    want_audio, want_frames = "audio" in encoders, "visual" in encoders
    params = {**encoders["audio"].spec.params} if want_audio else {}
    if want_frames:
        params.update(encoders["visual"].spec.params)
    decoded = decode_clip(clip, fps=params.get("fps", 1.0), max_frames=params.get("max_frames", 1),
                          sample_rate=params.get("sample_rate", 16000), want_audio=want_audio,
                          want_frames=want_frames)
    inputs = {"audio": decoded.audio, "visual": decoded.frames, "text": text or None}
    missing = {m: decoded.problems.get(m, "empty transcript" if m == "text" else "not decodable")
               for m in encoders if inputs[m] is None}
    features, masks, context = {}, {}, {}
    for m, enc in encoders.items():
        x = enc.encode([inputs[m]])[0] if inputs[m] is not None else None
        dim = enc.spec.dim
        x = np.zeros((1, dim), np.float32) if x is None else x  # (T, D)
        features[m] = torch.from_numpy(x)[None].float()  # (1, T, D)
        masks[m] = torch.full((1, len(x)), m not in missing)  # (1, T): all False = modality missing
        context[m] = torch.zeros(1, 1, dim)  # (1, C=1, D): a single clip has no dialogue context
    batch = Batch(features, masks, context, torch.zeros(1, 1, dtype=torch.bool), [text], [language],
                  torch.tensor([task]), [None], torch.tensor([-1])).to(dev)
    p = model.predict(batch)
    return {"task": model.config.tasks[task].name, "answer": p.answers[0], "value": p.values[0],
            "expert_weights": dict(zip(EXPERTS, p.expert_weights[0].tolist())),
            "modality_weights": dict(zip(model.fusion.modalities, p.modality_weights[0].tolist())), "missing": missing}
