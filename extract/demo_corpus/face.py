"""The demo clips' video: a drawn face whose expression rises to the emotion it shows, per-clip looks and jitter."""
from __future__ import annotations

import numpy as np

from .plan import ClipPlan, DemoConfig, clip_rng


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


# Expression at its apex: mouth curve (+ smile, - frown), mouth opening, brow tilt (+ inner ends up),
# brow raise, eye opening (1 = at rest).
FACES = {
    "neutral": (0.15, 0.0, 0.0, 0.0, 1.0),
    "joy": (0.9, 0.25, 0.0, 0.15, 0.75),
    "surprise": (0.0, 0.85, 0.2, 1.0, 1.5),
    "fear": (-0.35, 0.5, 0.8, 0.7, 1.5),
    "sadness": (-0.8, 0.0, 0.9, 0.0, 0.7),
    "disgust": (-0.6, 0.15, -0.5, -0.4, 0.55),
    "anger": (-0.5, 0.3, -1.0, -0.5, 0.75),
}
_SKINS = np.array([(236, 200, 170), (214, 168, 130), (175, 125, 90), (125, 88, 62)], float)


def render_face(clip: ClipPlan, cfg: DemoConfig) -> np.ndarray:
    """(N, H, W, 3) uint8: a face drawn at twice the size and averaged down (anti-aliasing), its expression
    rising from neutral to clip.shows["visual"] and partly relaxing, with per-clip looks, timing and jitter."""
    rng = clip_rng(cfg, clip, "visual")
    skin = _SKINS[rng.integers(len(_SKINS))] + rng.uniform(-12, 12, 3)  # (3,)
    background = rng.uniform(20, 235, 3)
    while np.linalg.norm(background - skin) < 90:  # the head must stand out from the background
        background = rng.uniform(20, 235, 3)
    ink = rng.uniform(15, 55, 3)  # brows and pupils
    lips = np.array([rng.uniform(100, 150), rng.uniform(25, 45), rng.uniform(35, 55)])
    centre = np.array([0.5, 0.52]) + rng.uniform(-0.04, 0.04, 2)  # x, y as fractions of the frame
    rx = rng.uniform(0.28, 0.34)
    ry = rx * rng.uniform(1.15, 1.3)
    intensity = rng.uniform(0.75, 1.0)
    onset, apex = rng.uniform(0.0, 0.25), rng.uniform(0.45, 0.7)
    release = rng.uniform(0.0, 0.4)
    noise = rng.uniform(2.0, 6.0)
    blink = rng.integers(clip.frames) if rng.random() < 0.5 else -1

    rest, target = np.array(FACES["neutral"]), np.array(FACES[clip.shows["visual"]])
    # One colour per face part, indexed by the part map below: painting small integers and looking the colours
    # up once is several times faster than painting RGB through boolean masks.
    palette = np.stack([background, skin, 0.85 * skin, np.full(3, 245.0), ink, lips, 0.3 * lips]).astype(np.float32)
    BACKGROUND, SKIN, NOSE, EYE, INK, LIPS, MOUTH_INSIDE = range(7)
    side = 2 * cfg.size
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5  # (2H, 2W) pixel centres
    drift = np.zeros(2)
    frames = np.empty((clip.frames, cfg.size, cfg.size, 3), np.uint8)
    for i in range(clip.frames):
        s = (i + 0.5) / clip.frames
        weight = _smoothstep((s - onset) / (apex - onset)) * (1 - release * _smoothstep((s - 0.8) / 0.2))
        curve, opening, tilt, raise_, eyes = rest + intensity * weight * (target - rest) + rng.normal(0, 0.03, 5)
        if i == blink:
            eyes = 0.15
        drift = np.clip(drift + rng.normal(0, 0.006, 2), -0.03, 0.03)
        cx, cy = (centre + drift) * side
        u, v = (xs - cx) / (rx * side), (ys - cy) / (ry * side)  # (2H, 2W) head coordinates, head = unit disc
        au = np.abs(u)  # the face is symmetric: both eyes and brows at once
        radius2 = u * u + v * v
        part = np.zeros((side, side), np.uint8)  # (2H, 2W) which part each pixel shows
        part[radius2 <= 1] = SKIN
        part[(au < 0.05) & (v > 0.05) & (v < 0.22)] = NOSE
        eye = ((au - 0.36) / 0.17) ** 2 + ((v + 0.12) / (0.1 * max(eyes, 0.05))) ** 2 <= 1
        part[eye] = EYE
        part[eye & (((au - 0.36) / 0.07) ** 2 + ((v + 0.12) * ry / (0.07 * rx)) ** 2 <= 1)] = INK  # pupils
        inner = -0.33 - 0.12 * raise_ - 0.10 * tilt  # brow height at its inner and outer ends
        outer = -0.33 - 0.12 * raise_ + 0.04 * tilt
        brow_line = inner + (outer - inner) * (au - 0.16) / 0.4
        part[(au > 0.16) & (au < 0.56) & (np.abs(v - brow_line) < 0.035)] = INK
        width = 0.30 + 0.05 * opening
        across = 1 - (u / width) ** 2  # 1 at the mouth's centre, 0 at its corners
        mouth_line = 0.45 + 0.06 * curve * (2 * across - 1)  # smile: corners above the centre
        thickness = 0.025 + 0.14 * max(opening, 0.0) * across
        lip_distance = np.where(au < width, np.abs(v - mouth_line), np.inf)
        part[lip_distance < thickness] = LIPS
        part[lip_distance < thickness - 0.03] = MOUTH_INSIDE
        shade = np.where(radius2 <= 1, 1 - 0.12 * radius2, 1)[..., None]  # a little roundness
        image = np.take(palette, part, axis=0) * shade  # (2H, 2W, 3)
        image = (image[0::2, 0::2] + image[1::2, 0::2] + image[0::2, 1::2] + image[1::2, 1::2]) / 4  # (H, W, 3)
        grain = noise * rng.standard_normal(image.shape, dtype=np.float32)
        frames[i] = np.clip(image + grain, 0, 255).astype(np.uint8)
    return frames

