"""Clips of a real corpus's size for benchmark 1: H.264 1280x720 at 30 fps, 3-8 s long, with 48 kHz stereo AAC
(MELD's and MOSEI's clips are of this kind), written as a folder corpus (labels.csv) for egmf-extract's folder
adapter. Written by PyAV frame by frame: a clip never sits in memory whole."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

WORDS = ("I", "you", "really", "think", "that", "we", "should", "go", "now", "oh", "no", "it", "was", "great",
         "what", "are", "doing", "here", "never", "again", "told", "him", "about", "the", "party", "yesterday")
EMOTIONS = ("neutral", "joy", "anger", "sadness")


@dataclass(frozen=True)
class ClipSize:
    width: int = 1280
    height: int = 720
    fps: int = 30
    sample_rate: int = 48000
    channels: int = 2
    min_seconds: float = 3.0
    max_seconds: float = 8.0
    words_per_second: float = 2.5  # conversational speech rate, for the transcripts' length


def write_clip(path: Path, seconds: float, size: ClipSize, rng: np.random.Generator) -> None:
    """A textured scene panning slowly with a moving bright patch, so that H.264 spends a bitrate of a few Mbit/s
    on it, as on real video (decoding cost grows with it); a voiced tone plus noise per channel."""
    h, w = size.height, size.width
    # blotches of 16x16 px, softened: detail like a real scene's (pure noise would cost 20 Mbit/s)
    coarse = rng.integers(0, 256, ((h + 64) // 16, (w + 64) // 16, 3)).astype(np.float32)
    texture = np.repeat(np.repeat(coarse, 16, 0), 16, 1)  # (H + 64, W + 64, 3), panned across by the camera
    texture = ((texture + np.roll(texture, 8, 0) + np.roll(texture, 8, 1)) / 3).astype(np.uint8)
    n = round(seconds * size.fps)
    t = np.arange(round(seconds * size.sample_rate)) / size.sample_rate  # (S,)
    pitch = rng.uniform(120, 260)
    voice = 0.3 * np.sin(2 * np.pi * pitch * t * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t)))  # (S,)
    audio = np.stack([voice + 0.02 * rng.standard_normal(len(t)) for _ in range(size.channels)]).astype(np.float32)
    with av.open(str(path), mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=size.fps, options={"preset": "ultrafast", "crf": "23"})
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        sound = container.add_stream("aac", rate=size.sample_rate, layout="stereo")
        for i in range(n):
            dx, dy = (i * 2) % 64, (i // 2) % 64
            frame = texture[dy: dy + h, dx: dx + w].copy()  # (H, W, 3)
            x = int((w - 200) * i / max(n - 1, 1))
            frame[h // 3: h // 3 + 200, x: x + 200] = 230
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = i
            container.mux(video.encode(video_frame))
        container.mux(video.encode(None))
        audio_frame = av.AudioFrame.from_ndarray(audio, format="fltp", layout="stereo")
        audio_frame.sample_rate, audio_frame.pts = size.sample_rate, 0
        container.mux(sound.encode(audio_frame))
        container.mux(sound.encode(None))


def write_corpus(root: Path, n_clips: int, size: ClipSize = ClipSize(), seed: int = 0,
                 progress: bool = True) -> dict:
    """root/clips/*.mp4 and root/labels.csv (id, path, text, label, split: all train); returns what was written:
    clips, seconds of media and the video bitrate."""
    rng = np.random.default_rng(seed)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    rows, seconds = [], []
    for i in tqdm(range(n_clips), desc="real-sized clips", unit="clip", disable=not progress):
        length = float(rng.uniform(size.min_seconds, size.max_seconds))
        path = root / "clips" / f"clip{i:03d}.mp4"
        write_clip(path, length, size, rng)
        text = " ".join(rng.choice(WORDS, max(1, round(length * size.words_per_second)))).capitalize() + "."
        rows.append({"id": f"clip{i:03d}", "path": f"clips/{path.name}", "text": text,
                     "label": EMOTIONS[i % len(EMOTIONS)], "split": "train"})
        seconds.append(length)
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    video_bytes = sum((root / r["path"]).stat().st_size for r in rows)
    return {"clips": n_clips, "media_seconds": sum(seconds), "mean_seconds": sum(seconds) / n_clips,
            "megabits_per_second": video_bytes * 8 / 1e6 / sum(seconds),
            "size": f"{size.width}x{size.height} at {size.fps} fps, {size.sample_rate} Hz x{size.channels} AAC"}
