"""The demo clips' audio: syllables of a harmonic voice whose pitch, loudness and rhythm are the shown emotion's."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .plan import ClipPlan, DemoConfig, clip_rng


@dataclass(frozen=True)
class Voice:
    pitch: float  # times the speaker's base pitch
    range: float  # semitones the contour spans
    level: float  # dB
    tempo: float  # syllables per second
    jitter: float  # fractional pitch perturbation
    breath: float  # noise relative to the harmonic source
    contour: str  # shape over the utterance, see _CONTOURS


# Calm voices are quiet, slow and flat; lively ones loud, fast and melodic; tense ones loud, fast, shaky, harsh.
VOICES = {
    "neutral": Voice(1.00, 2.0, -14, 3.2, 0.004, 0.04, "fall"),
    "sadness": Voice(0.90, 1.5, -17, 2.6, 0.004, 0.08, "fall"),
    "disgust": Voice(0.95, 3.0, -13, 3.0, 0.006, 0.06, "dip"),
    "surprise": Voice(1.45, 10.0, -5, 5.0, 0.004, 0.03, "rise"),
    "joy": Voice(1.35, 8.0, -4, 5.5, 0.004, 0.03, "bounce"),
    "fear": Voice(1.40, 3.0, -6, 6.5, 0.05, 0.25, "tremble"),
    "anger": Voice(1.15, 4.0, -1, 5.0, 0.03, 0.30, "fall"),
}
_CONTOURS = {  # s in [0, 1] over the utterance -> offset in [-1, 1] of half the range
    "fall": lambda s: 1 - 2 * s,
    "rise": lambda s: 2 * s * s - 1,
    "dip": lambda s: np.cos(2 * np.pi * s),
    "bounce": lambda s: np.sin(5 * np.pi * s),
    "tremble": lambda s: 0.3 * (1 - 2 * s),
}
_VOWELS = ((700, 1200), (400, 2000), (300, 800), (500, 1500), (600, 1000), (350, 2300))  # F1, F2 in Hz


def render_voice(clip: ClipPlan, cfg: DemoConfig) -> np.ndarray:
    """(S,) float32 in [-1, 1]: syllables of a harmonic voice shaped by vowel formants, its pitch, loudness and
    rhythm those of clip.shows["audio"], on a per-clip speaker (base pitch, timbre, noise floor)."""
    rng = clip_rng(cfg, clip, "audio")
    voice = VOICES[clip.shows["audio"]]
    sr = cfg.sample_rate
    seconds = clip.frames / cfg.fps
    t = np.arange(round(seconds * sr)) / sr  # (S,)
    base = rng.uniform(95, 230)  # the speaker
    tilt = rng.uniform(0.8, 1.4)
    tempo = voice.tempo * rng.uniform(0.9, 1.1)
    span = voice.range * rng.uniform(0.85, 1.15)
    level = voice.level + rng.uniform(-2, 2)
    floor = rng.uniform(-52, -42)

    envelope, accent = np.zeros_like(t), np.zeros_like(t)  # (S,)
    f1, f2 = np.full_like(t, 500.0), np.full_like(t, 1500.0)
    start = rng.uniform(0.1, 0.3)
    while start < seconds - 0.2:
        length = min(rng.uniform(0.55, 0.8) / tempo, seconds - 0.05 - start)
        inside = (t >= start) & (t < start + length)
        window = np.sin(np.pi * (t[inside] - start) / length) ** 2  # one syllable's loudness
        stress = rng.uniform(0.6, 1.0)
        envelope[inside] = stress * window
        accent[inside] = stress * window
        f1[inside], f2[inside] = _VOWELS[rng.integers(len(_VOWELS))]
        start += rng.uniform(0.8, 1.2) / tempo + (0.15 if rng.random() < 0.1 else 0.0)

    semitones = span / 2 * _CONTOURS[voice.contour](t / seconds) + 0.15 * span * accent  # (S,)
    if voice.contour == "tremble":
        semitones += 0.8 * np.sin(2 * np.pi * 6.5 * t)
    knots = np.arange(int(seconds * 100) + 2) / 100  # the pitch perturbation changes every 10 ms
    shake = np.interp(t, knots, rng.normal(0, voice.jitter, knots.size))
    f0 = base * voice.pitch * 2 ** (semitones / 12) * (1 + shake)  # (S,) Hz
    phase = 2 * np.pi * np.cumsum(f0) / sr
    k = np.arange(1, 16)[:, None]  # (K, 1) harmonic numbers
    freqs = k * f0  # (K, S)
    gains = k ** -tilt * (0.3 + np.exp(-((freqs - f1) / 150) ** 2) + 0.7 * np.exp(-((freqs - f2) / 200) ** 2))
    source = (gains * (freqs < 0.45 * sr) * np.sin(k * phase)).sum(axis=0)  # (S,)
    source /= np.sqrt(np.mean(source ** 2)) + 1e-9
    speech = envelope * (source + voice.breath * 3 * rng.normal(0, 1, t.size))
    voiced = envelope > 0.1
    speech *= 0.25 * 10 ** (level / 20) / (np.sqrt(np.mean(speech[voiced] ** 2)) + 1e-9)
    audio = speech + 10 ** (floor / 20) * rng.normal(0, 1, t.size)
    return np.clip(audio, -1, 1).astype(np.float32)

