"""Media decoding: what comes out of real mp4 clips, and what comes out of broken ones."""
import av
import numpy as np
import pytest

from egmf.extract.media import decode_clip, write_mp4
from mediagen import BAD_KINDS, clip_audio, make_bad_clip, make_clip

FPS = 25.0


@pytest.fixture(scope="module")
def counting_clip(tmp_path_factory):
    """3 s at 25 fps whose frame i is flat grey 3*i, so a decoded frame tells which frame it was; with a tone."""
    frames = np.repeat((np.arange(75, dtype=np.uint8) * 3)[:, None, None, None], 3, axis=3)  # (75, 1, 1, 3)
    frames = np.ascontiguousarray(np.broadcast_to(frames, (75, 48, 64, 3)))  # (75, 48, 64, 3)
    path = tmp_path_factory.mktemp("media") / "counting.mp4"
    write_mp4(path, frames, FPS, clip_audio(3.0, seed=1))
    return path


def frame_indices(frames: np.ndarray) -> list[int]:
    return [round(float(f.mean()) / 3) for f in frames]


def test_round_trip_keeps_sound_and_pictures(tmp_path):
    path = make_clip(tmp_path / "c.mp4", seconds=2.0, fps=10, size=(80, 60), seed=3)
    clip = decode_clip(path, fps=10, max_frames=100)
    assert clip.problems == {}
    assert clip.audio.dtype == np.float32 and clip.audio.shape == (32000,)
    source = clip_audio(2.0, seed=3)
    assert np.corrcoef(source, clip.audio)[0, 1] > 0.9  # the same tone, time-aligned, through AAC
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (20, 60, 80, 3)
    # the white square travels left to right: its column of greatest brightness must move right
    columns = [int(np.argmax(f.astype(float).sum(axis=(0, 2)))) for f in clip.frames]
    assert columns[0] < columns[10] < columns[-1]


def test_frames_sampled_at_fps_from_the_right_moments(counting_clip):
    clip = decode_clip(counting_clip, fps=5, max_frames=100, want_audio=False)
    # 15 samples at the centres of 0.2 s steps: 0.1 s, 0.3 s, ... -> frames 2, 7, 12, ...
    assert frame_indices(clip.frames) == [int((0.1 + 0.2 * k) * FPS) for k in range(15)]
    assert clip.audio is None and clip.problems == {}


def test_frame_cap_spreads_over_the_whole_clip(counting_clip):
    clip = decode_clip(counting_clip, fps=25, max_frames=4, want_audio=False)
    assert frame_indices(clip.frames) == [int((0.375 + 0.75 * k) * FPS) for k in range(4)]


def test_span_of_a_longer_video(counting_clip):
    clip = decode_clip(counting_clip, fps=2, max_frames=10, start=1.0, end=2.0)
    assert frame_indices(clip.frames) == [int(1.25 * FPS), int(1.75 * FPS)]
    assert clip.audio.shape == (16000,)
    whole = decode_clip(counting_clip, fps=1, max_frames=1, want_frames=False).audio
    assert np.corrcoef(whole[16000:32000], clip.audio)[0, 1] > 0.99


def test_raw_stream_without_a_declared_length_is_measured(tmp_path):
    """A raw H.264 stream declares no duration and its frames carry no timestamps: it is read whole."""
    path = tmp_path / "counting.h264"
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(50):
            grey = np.full((48, 64, 3), 3 * i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(grey, format="rgb24")))
        out.mux(stream.encode(None))
    clip = decode_clip(path, fps=5, max_frames=100, want_audio=False)
    assert clip.problems == {}
    assert frame_indices(clip.frames) == [2, 7, 12, 17, 22, 27, 32, 37, 42, 47]  # 2 s at 5 fps, centred


def test_frames_scaled_down_never_up(tmp_path):
    path = make_clip(tmp_path / "big.mp4", seconds=0.5, fps=10, size=(320, 240), with_audio=False)
    assert decode_clip(path, fps=1, max_frames=1, frame_size=64).frames.shape == (1, 48, 64, 3)
    assert decode_clip(path, fps=1, max_frames=1, frame_size=1000).frames.shape == (1, 240, 320, 3)


def test_audio_resampled_to_16k_mono(tmp_path):
    rate, seconds = 44100, 1.0
    tone = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)
    path = tmp_path / "hifi.mp4"
    write_mp4(path, None, FPS, tone, sample_rate=rate)
    clip = decode_clip(path, fps=1, max_frames=1)
    assert clip.audio.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(clip.audio))
    assert np.argmax(spectrum) == 1000  # 1 Hz bins over one second
    assert clip.frames is None and clip.problems == {"visual": "no video track"}


EXPECTED = {  # kind -> (audio reason prefix or None when audio survives, visual reason prefix)
    "truncated": ("truncated or corrupt", "truncated or corrupt"),
    "truncated_moov_first": ("truncated or corrupt", "truncated or corrupt"),
    "zero_bytes": ("zero-byte file", "zero-byte file"),
    "not_media": ("not a media file", "not a media file"),
    "no_audio": ("no audio track", None),
    "shorter_than_one_frame": (None, "no video track"),
    "missing": ("missing file", "missing file"),
}


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_clip_reported_not_raised(tmp_path, kind):
    path = make_bad_clip(tmp_path / f"{kind}.mp4", kind)
    clip = decode_clip(path, fps=2, max_frames=4)
    for modality, value, expected in (("audio", clip.audio, EXPECTED[kind][0]),
                                      ("visual", clip.frames, EXPECTED[kind][1])):
        if expected is None:
            assert value is not None and modality not in clip.problems
        else:
            assert value is None and clip.problems[modality].startswith(expected)


def test_only_wanted_modalities_are_reported(tmp_path):
    path = make_bad_clip(tmp_path / "zero.mp4", "zero_bytes")
    assert decode_clip(path, fps=1, max_frames=1, want_audio=False).problems == {"visual": "zero-byte file"}
    assert decode_clip(path, fps=1, max_frames=1, want_audio=False, want_frames=False).problems == {}


def test_span_past_the_end_is_reported(counting_clip):
    clip = decode_clip(counting_clip, fps=1, max_frames=4, start=5.0, end=6.0)
    assert clip.audio is None and clip.frames is None
    assert all("outside the track" in reason for reason in clip.problems.values())
    assert set(clip.problems) == {"audio", "visual"}
