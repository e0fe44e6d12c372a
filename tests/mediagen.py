"""Small real mp4 clips for tests: moving pictures with a tone, and the broken clips that real corpora contain.

Every clip is deterministic for its seed, so tests can compare decoded or extracted values run to run.
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from egmf.extract.media import write_mp4

SAMPLE_RATE = 16000

# The faults a corpus download really has (MELD ships a missing, a corrupt and several silent clips).
BAD_KINDS = ("truncated", "truncated_moov_first", "zero_bytes", "not_media", "no_audio",
             "shorter_than_one_frame", "missing")


def clip_frames(seconds: float, fps: float, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(N, H, W, 3) uint8: a bright square crossing a seed-coloured gradient, so consecutive frames differ."""
    width, height = size
    rng = np.random.default_rng(seed)
    count = max(1, round(seconds * fps))
    colour = rng.integers(40, 200, size=3)  # (3,)
    ramp = np.linspace(0.5, 1.0, width)[None, :, None]  # (1, W, 1)
    background = (ramp * colour).astype(np.uint8)  # (1, W, 3)
    frames = np.broadcast_to(background, (count, height, width, 3)).copy()  # (N, H, W, 3)
    side = max(2, min(width, height) // 4)
    for i in range(count):
        x = int((width - side) * i / max(count - 1, 1))
        y = (height - side) // 2
        frames[i, y:y + side, x:x + side] = 255
    return frames


def clip_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """(S,) float32 at SAMPLE_RATE: a seed-pitched tone that rises over the clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE  # (S,)
    pitch = rng.uniform(200.0, 600.0)
    return (0.3 * np.sin(2 * np.pi * pitch * t * (1 + 0.25 * t / max(seconds, 1e-3)))).astype(np.float32)


def make_clip(path, seconds: float = 1.0, fps: float = 10.0, size: tuple[int, int] = (64, 48),
              with_audio: bool = True, seed: int = 0) -> Path:
    """Write a real mp4 (H.264 + AAC) of `seconds` at `fps`, `size` = (width, height); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = clip_audio(seconds, seed) if with_audio else None
    write_mp4(path, clip_frames(seconds, fps, size, seed), fps, audio, SAMPLE_RATE)
    return path


def truncate(path, keep: float = 0.5) -> Path:
    """Cut the file to the first `keep` of its bytes, like an interrupted download."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def move_index_first(path) -> Path:
    """Remux with the mp4 index (moov) before the media data, as web videos are; a cut then still opens."""
    path = Path(path)
    remuxed = path.with_suffix(".faststart.mp4")
    with av.open(str(path)) as source, av.open(str(remuxed), "w", options={"movflags": "faststart"}) as target:
        streams = {s.index: target.add_stream_from_template(s) for s in source.streams}
        for packet in source.demux():
            if packet.dts is None:  # the flush packet at the end of each stream carries no data
                continue
            packet.stream = streams[packet.stream.index]
            target.mux(packet)
    remuxed.replace(path)
    return path


def make_bad_clip(path, kind: str, seed: int = 0) -> Path:
    """Write one of BAD_KINDS at path (for "missing", make sure nothing is there); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    if kind == "truncated":
        truncate(make_clip(path, seconds=2.0, seed=seed))
    elif kind == "truncated_moov_first":
        truncate(move_index_first(make_clip(path, seconds=2.0, seed=seed)), keep=0.6)
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "not_media":
        path.write_text("this is a transcript, not a video\n", encoding="utf-8")
    elif kind == "no_audio":
        make_clip(path, seed=seed, with_audio=False)
    elif kind == "shorter_than_one_frame":
        # 10 ms: less than one frame period at any usual rate, so the video track has no frame at all
        write_mp4(path, np.zeros((0, 48, 64, 3), np.uint8), 25.0, clip_audio(0.01, seed), SAMPLE_RATE)
    elif kind != "missing":
        raise ValueError(f"unknown bad clip kind {kind!r}; choose one of {BAD_KINDS}")
    return path
