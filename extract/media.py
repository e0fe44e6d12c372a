"""Media I/O with PyAV (no system ffmpeg): write small mp4 clips, decode clips into audio samples and frames.

decode_clip never raises for bad media: a modality it cannot read comes back as None with a short reason in
DecodedClip.problems, so one broken clip in a corpus of thousands is reported, not fatal.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

VIDEO_CODECS = ("libx264", "mpeg4")  # H.264 when this PyAV build has it, else MPEG-4 part 2


def _video_codec() -> str:
    for name in VIDEO_CODECS:
        try:
            av.codec.Codec(name, "w")
            return name
        except av.codec.codec.UnknownCodecError:
            continue
    raise RuntimeError(f"this PyAV build has none of the video encoders {VIDEO_CODECS}; reinstall av from PyPI")


def write_mp4(path, frames: np.ndarray | None, fps: float, audio: np.ndarray | None,
              sample_rate: int = 16000) -> None:
    """Write an mp4 with an H.264 (or MPEG-4) video track and an AAC mono track; either may be None.

    frames: (N, H, W, 3) uint8 RGB. Odd H or W is padded by one edge pixel (yuv420p needs even sizes).
    audio: (S,) float32 in [-1, 1] at sample_rate.
    """
    if frames is None and audio is None:
        raise ValueError(f"{path}: nothing to write; give frames, audio or both")
    with av.open(str(path), mode="w", format="mp4") as container:
        video = audio_stream = None
        if frames is not None:
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                raise ValueError(f"{path}: frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
            n, h, w, _ = frames.shape
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # (N, H', W', 3)
            video = container.add_stream(_video_codec(), rate=Fraction(fps).limit_denominator(1001))
            video.width, video.height = frames.shape[2], frames.shape[1]
            video.pix_fmt = "yuv420p"
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        if video is not None:
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = i
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
        if audio_stream is not None:
            samples = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)[None, :]  # (1, S)
            frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, 0
            container.mux(audio_stream.encode(frame))
            container.mux(audio_stream.encode(None))
