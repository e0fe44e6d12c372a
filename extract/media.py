"""Media I/O with PyAV (no system ffmpeg): write small mp4 clips, decode clips into audio samples and frames.

decode_clip never raises for bad media: a modality it cannot read comes back as None with a short reason in
DecodedClip.problems, so one broken clip in a corpus of thousands is reported, not fatal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
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
            if video.codec_context.name == "libx264":
                # x264's macroblock tree (its default rate control look-ahead) makes the bitstream differ from one
                # encode of the same frames to the next (seen in 18 of 21 demo clips); without it every encode is
                # byte-identical, so a generated corpus and the features extracted from it repeat exactly.
                video.options = {"x264-params": "mbtree=0"}
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


# A track may end this much earlier than its header says before it counts as truncated: encoders routinely
# leave the audio and video ends a frame or two apart, and that is not damage worth dropping a clip for.
LOST_TAIL_TOLERANCE_S = 0.25

# Leading bytes of the containers a corpus ships (ISO-BMFF "ftyp" at offset 4, Matroska/WebM, AVI/WAV, Ogg,
# FLAC, MP3): a file that starts like one of these but does not open is damaged, anything else is not media.
_MEDIA_MAGIC = ((4, b"ftyp"), (0, b"\x1a\x45\xdf\xa3"), (0, b"RIFF"), (0, b"OggS"), (0, b"fLaC"), (0, b"ID3"))


@dataclass
class DecodedClip:
    """What decode_clip read from one clip; a None modality always has its reason in problems."""

    audio: np.ndarray | None  # (S,) float32 mono at the requested sample rate; None = missing
    frames: np.ndarray | None  # (N, h, w, 3) uint8 RGB, longer side <= frame_size; None = missing
    problems: dict[str, str] = field(default_factory=dict)  # "audio" | "visual" -> why it is None


def decode_clip(path, *, fps: float, max_frames: int, sample_rate: int = 16000, start: float | None = None,
                end: float | None = None, want_audio: bool = True, want_frames: bool = True,
                frame_size: int = 224) -> DecodedClip:
    """Decode one clip (or the span start..end seconds of a longer video) in a single pass over the file.

    Audio is resampled to `sample_rate` mono float32. Frames are taken at `fps`, at the centres of equal steps
    over the span, or at `max_frames` such centres spread over the whole span when fps would give more; each is
    the picture on screen at that moment, scaled down (never up) so its longer side is at most `frame_size`.

    Never raises for bad media: a modality it cannot read is None, with a short reason in `problems`
    ("missing file", "zero-byte file", "not a media file: ...", "truncated or corrupt: ...", "no audio track",
    "no video track", "no decodable audio", "no decodable frames", "span ... lies outside the track ...").
    A track that cannot be read to its end (a decode error, or it stops more than LOST_TAIL_TOLERANCE_S before
    the length its header declares) is dropped whole, not kept in part: features of half an utterance would
    silently disagree with its transcript and label, and the researcher wants to hear that the clip needs
    fetching again.
    """
    wanted = [m for m, on in (("audio", want_audio), ("visual", want_frames)) if on]
    path = Path(path)
    unreadable = _unreadable_file(path)
    if unreadable:
        return DecodedClip(None, None, {m: unreadable for m in wanted})
    try:
        container = av.open(str(path), metadata_errors="replace")
    except (av.FFmpegError, OSError) as error:
        kind = "truncated or corrupt" if _starts_like_media(path) else "not a media file"
        return DecodedClip(None, None, {m: f"{kind}: {_short(error)}" for m in wanted})
    with container:
        problems, readers = {}, {}
        tracks = {"audio": container.streams.audio, "visual": container.streams.video}
        for modality in wanted:
            if not tracks[modality]:
                problems[modality] = "no audio track" if modality == "audio" else "no video track"
                continue
            stream = tracks[modality][0]
            span = _span(path, container, stream, start, end)
            if span[0] >= span[1]:
                problems[modality] = f"span {start}-{end} s lies outside the track, which ends at {span[1]:.2f} s"
                continue
            readers[modality] = (_AudioReader(stream, span, sample_rate) if modality == "audio"
                                 else _FrameReader(stream, span, fps, max_frames, frame_size))
        _read(container, readers, start)
        results = {}
        for modality, reader in readers.items():
            results[modality], problem = reader.result()
            if problem:
                problems[modality] = problem
    return DecodedClip(results.get("audio"), results.get("visual"), problems)


def _read(container, readers: dict, start: float | None) -> None:
    """Demux the wanted tracks once, feeding each reader until it has what it needs or its track fails."""
    if not readers:
        return
    by_index = {reader.stream.index: reader for reader in readers.values()}
    try:
        if start:
            container.seek(int(start * 1_000_000), backward=True)  # microseconds: to the keyframe before start
        for packet in container.demux([reader.stream for reader in readers.values()]):
            reader = by_index[packet.stream.index]
            if reader.done:
                if all(r.done for r in readers.values()):
                    break
                continue
            try:
                for frame in packet.decode():
                    reader.add(frame)
            except av.FFmpegError as error:
                reader.fail(f"truncated or corrupt: {_short(error)}")
    except av.FFmpegError as error:
        for reader in readers.values():
            reader.fail(f"truncated or corrupt: {_short(error)}")


class _AudioReader:
    """Collects one audio track resampled to mono float32, and cuts it to the span."""

    def __init__(self, stream, span: tuple[float, float], sample_rate: int):
        self.stream, self.span, self.sample_rate = stream, span, sample_rate
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        self.chunks: list[np.ndarray] = []
        self.first = self.last = None  # seconds: start of the first decoded frame, end of the last one
        self.done, self.failure = False, None

    def add(self, frame) -> None:
        t = frame.time if frame.time is not None else (self.last or 0.0)
        if self.first is None:
            self.first = t
        self.last = t + frame.samples / frame.sample_rate
        for out in self.resampler.resample(frame):
            self.chunks.append(out.to_ndarray()[0])  # (n,) from the packed (1, n) mono plane
        self.done = self.last >= self.span[1]

    def fail(self, reason: str) -> None:
        self.failure, self.done = self.failure or reason, True

    def result(self) -> tuple[np.ndarray | None, str | None]:
        if self.failure:
            return None, self.failure
        if self.first is None:
            return None, "no decodable audio"
        for out in self.resampler.resample(None):
            self.chunks.append(out.to_ndarray()[0])
        lost = _lost_tail(self.last, self.span)
        if lost:
            return None, lost
        audio = np.concatenate(self.chunks)  # (S,) starting at self.first
        lo = max(0, round((self.span[0] - self.first) * self.sample_rate))
        hi = max(lo, round((self.span[1] - self.first) * self.sample_rate))
        audio = audio[lo:hi]
        if audio.size == 0:
            return None, "no decodable audio"
        return np.ascontiguousarray(audio, dtype=np.float32), None


class _FrameReader:
    """Picks the frames on screen at evenly spaced moments of the span, converting only those to RGB."""

    def __init__(self, stream, span: tuple[float, float], fps: float, max_frames: int, frame_size: int):
        self.stream, self.span = stream, span
        length = span[1] - span[0]
        count = min(max_frames, max(1, math.ceil(length * fps - 1e-6)))  # 1e-6: 2.0 s at 5 fps is 10, not 11
        step = length / count
        self.targets = [span[0] + (k + 0.5) * step for k in range(count)]  # seconds, ascending
        width, height = stream.codec_context.width, stream.codec_context.height
        scale = min(1.0, frame_size / max(width, height, 1))
        self.size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rate = stream.average_rate or stream.guessed_rate or 25
        self.frame_period = 1.0 / float(rate)
        self.picked: list[np.ndarray] = []
        self.pending = None  # the latest decoded frame: on screen until the next one
        self.converted = (None, None)  # (frame, its RGB array) of the last pick
        self.last = None  # seconds: when the latest decoded frame stops being on screen
        self.done, self.failure = False, None

    def add(self, frame) -> None:
        t = frame.time if frame.time is not None else (self.last or 0.0)
        while len(self.picked) < len(self.targets) and self.targets[len(self.picked)] < t:
            self._pick(self.pending if self.pending is not None else frame)
        self.pending = frame
        self.last = t + self.frame_period
        self.done = len(self.picked) == len(self.targets)

    def _pick(self, frame) -> None:
        # Several targets can fall on one frame (sampling faster than the video's rate): convert it once.
        if self.converted[0] is not frame:
            rgb = frame.reformat(width=self.size[0], height=self.size[1], format="rgb24",
                                 interpolation="AREA").to_ndarray()  # (h, w, 3)
            self.converted = (frame, rgb)
        self.picked.append(self.converted[1])

    def fail(self, reason: str) -> None:
        self.failure, self.done = self.failure or reason, True

    def result(self) -> tuple[np.ndarray | None, str | None]:
        if self.failure:
            return None, self.failure
        if self.pending is None:
            return None, "no decodable frames"
        if len(self.picked) < len(self.targets):
            lost = _lost_tail(self.last, self.span)
            if lost:
                return None, lost
            while len(self.picked) < len(self.targets):
                self._pick(self.pending)
        return np.stack(self.picked), None  # (N, h, w, 3)


def _span(path: Path, container, stream, start: float | None, end: float | None) -> tuple[float, float]:
    """The seconds of this track to read: the requested span clipped to the track's extent."""
    first = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    if stream.duration is not None:
        last = first + float(stream.duration * stream.time_base)
    elif container.duration is not None:
        last = container.duration / 1_000_000
    else:
        last = first + _measured_length(path, stream.index)
    lo = first if start is None else max(first, start)
    return lo, min(last, end) if end is not None else last


def _measured_length(path: Path, index: int) -> float:
    """Seconds of a track whose container declares no length (raw .h264, .mjpeg streams): the sum of its
    packets' durations, found by demuxing without decoding. Packets with no duration count one frame period."""
    with av.open(str(path), metadata_errors="replace") as probe:
        stream = probe.streams[index]
        rate = getattr(stream, "average_rate", None) or getattr(stream, "guessed_rate", None) or 25  # video only
        seconds = 0.0
        try:
            for packet in probe.demux(stream):
                if packet.size:  # the demuxer ends with an empty flush packet
                    seconds += float(packet.duration * packet.time_base) if packet.duration else 1.0 / float(rate)
        except av.FFmpegError:
            pass  # damaged past here: the decoding pass reports it
    return seconds


def _lost_tail(decoded_until: float, span: tuple[float, float]) -> str | None:
    if decoded_until < span[1] - LOST_TAIL_TOLERANCE_S:
        return f"truncated or corrupt: readable to {decoded_until:.2f} s of {span[1]:.2f} s"
    return None


def _unreadable_file(path: Path) -> str | None:
    if not path.is_file():
        return "missing file"
    if path.stat().st_size == 0:
        return "zero-byte file"
    return None


def _starts_like_media(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(16)
    return any(head[at:at + len(magic)] == magic for at, magic in _MEDIA_MAGIC)


def _short(error: Exception) -> str:
    """FFmpeg's message without the errno and the repeated file name."""
    return getattr(error, "strerror", None) or str(error)
