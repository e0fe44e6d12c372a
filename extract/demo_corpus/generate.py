"""The demo corpus on disk: <root>/clips/<id>.mp4, <root>/labels.csv, and <root>/manifest.json (the generator's
parameters and the labels' sha256, written last: a root without it, or made with other parameters, is generated
again)."""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from ..media import write_mp4
from .face import render_face
from .plan import DemoConfig, plan
from .voice import render_voice

GENERATOR_VERSION = "2"  # bump when the clips or labels change (here or in write_mp4): old roots are made anew
COLUMNS = ("id", "split", "language", "emotion", "sentiment", "voice_shows", "face_shows", "text_shows", "text")


def generate(root, cfg: DemoConfig, progress: bool = True) -> None:
    """Write the clips, labels.csv, then manifest.json (last, so an interrupted run is generated again)."""
    root = Path(root)
    clips_dir = root / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").unlink(missing_ok=True)
    clips = plan(cfg)
    for clip in tqdm(clips, desc="demo corpus: rendering clips", unit="clip", disable=not progress):
        write_mp4(clips_dir / f"{clip.id}.mp4", render_face(clip, cfg), cfg.fps, render_voice(clip, cfg),
                  cfg.sample_rate)
    wanted = {f"{clip.id}.mp4" for clip in clips}
    for stale in clips_dir.glob("demo*.mp4"):  # left by an earlier, larger corpus
        if stale.name not in wanted:
            stale.unlink()
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for c in clips:
            writer.writerow((c.id, c.split, c.language, c.emotion, f"{c.sentiment:.1f}", c.shows["audio"],
                             c.shows["visual"], c.shows["text"], c.text))
    (root / "manifest.json").write_text(json.dumps(manifest(root, cfg), indent=2) + "\n", encoding="utf-8")


def manifest(root: Path, cfg: DemoConfig) -> dict:
    """What manifest.json holds for a root generated with cfg."""
    labels = hashlib.sha256((root / "labels.csv").read_bytes()).hexdigest()
    return {"corpus": "egmf demo", "generator_version": GENERATOR_VERSION, "config": asdict(cfg),
            "labels_sha256": labels}


def is_generated(root: Path, cfg: DemoConfig) -> bool:
    """Whether root holds a whole corpus generated with cfg by this version of the generator."""
    try:
        written = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        return written == manifest(root, cfg)
    except (OSError, ValueError):
        return False

