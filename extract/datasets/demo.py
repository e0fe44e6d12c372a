"""The built-in demo corpus: small bilingual synthetic clips on which only fusion can be right.

`egmf-extract --dataset demo` generates it (deterministically from a seed) into its root the first time, then
loads it like any other corpus. Each clip is a real mp4 of 2-3 s: a drawn face whose expression unfolds over the
clip, a voice-like track (harmonic source with a pitch contour, syllable rhythm, breath noise) and an English or
Chinese transcript. Labels: the 7 MELD emotions (task "emotion") and a sentiment score in [-1, 1] that agrees
with the emotion.

Why each modality alone is ambiguous: every modality splits the 7 emotions into 3 groups of look-alikes and, for
every clip, renders a random member of the true emotion's group (the true one or a confusable one), so on its own
it names the group but carries no information about the emotion within it:

    emotion    voice                    face                            text
    neutral    calm   {neu, sad, dis}   relaxed  {neu, joy}             plain    {neu, sur, joy}
    surprise   lively {sur, joy}        startled {sur, fear}            plain
    fear       tense  {fear, ang}       startled                        worried  {fear, sad}
    sadness    calm                     frowning {sad, dis, ang}        worried
    joy        lively                   relaxed                         plain
    disgust    calm                     frowning                        hostile  {dis, ang}
    anger      tense                    frowning                        hostile

The three groups together differ for every emotion, so their intersection names it; every pair of modalities
still confuses at least two emotions. With balanced classes one modality alone can be right for at most 3 clips
in 7 (the best guess inside its group), two for at most 6 in 7, the three together for all of them.
Clips carry no dialogue context. labels.csv records, per clip, the emotion each modality shows.

On disk: <root>/clips/<id>.mp4, <root>/labels.csv, and <root>/manifest.json (the generator's parameters and the
labels' sha256, written last: a root without it, or made with other parameters, is generated again).
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...cache.schema import DatasetSpec, LabelSpec
from ..media import write_mp4
from ..records import (Corpus, DatasetError, Utterance, parse_class, parse_score, read_csv,
                                  require_columns, validate)

ADAPTER_VERSION = "2"  # bump when a change to the generator changes the clips or labels
EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")  # MELD's order
SPEC = DatasetSpec("demo", ADAPTER_VERSION, "emotion", (
    LabelSpec("emotion", "class", EMOTIONS),
    LabelSpec("sentiment", "score", low=-1.0, high=1.0),
))

# Each modality's groups of look-alike emotions (the table in the docstring).
GROUPS = {
    "audio": (("neutral", "sadness", "disgust"), ("surprise", "joy"), ("fear", "anger")),
    "visual": (("neutral", "joy"), ("surprise", "fear"), ("sadness", "disgust", "anger")),
    "text": (("neutral", "surprise", "joy"), ("fear", "sadness"), ("disgust", "anger")),
}

# Sentiment of the true emotion: uniform in this interval, rounded to one decimal.
SENTIMENT = {"neutral": (-0.2, 0.2), "surprise": (0.0, 0.6), "fear": (-0.8, -0.3), "sadness": (-0.9, -0.4),
             "joy": (0.4, 1.0), "disgust": (-0.8, -0.3), "anger": (-1.0, -0.5)}


@dataclass(frozen=True)
class DemoConfig:
    n_clips: int = 280  # 40 per emotion: enough for the fusion to learn, small enough to extract in a minute
    seed: int = 0  # same seed, same corpus: labels, transcripts, frames and samples
    size: int = 96  # frame side in pixels; the visual encoder resizes anyway
    fps: int = 10
    sample_rate: int = 16000
    min_seconds: float = 2.0
    max_seconds: float = 3.0
    dev: float = 0.15  # fractions of the clips in dev and test (whole blocks of 7, one clip per emotion each)
    test: float = 0.15


@dataclass(frozen=True)
class ClipPlan:
    """Everything about one clip but its pixels and samples."""

    index: int  # position in the corpus; with the seed it seeds the clip's rendering
    id: str
    split: str
    language: str  # "en" | "zh"
    emotion: str  # the label
    sentiment: float
    shows: dict  # modality -> the emotion it renders (the label or a look-alike from its group); for text
    # also the name of a group-level text ("plain", "worried", "hostile") that fits every emotion of the group
    text: str
    frames: int  # clip length in video frames


def group_of(modality: str, emotion: str) -> tuple[str, ...]:
    return next(group for group in GROUPS[modality] if emotion in group)


# ---------------------------------------------------------------- plan: labels, splits, transcripts

_WHO = {"en": ("my sister", "Ross", "the new manager", "our neighbour", "Monica", "my father"),
        "zh": ("我姐姐", "小王", "新来的经理", "邻居", "老李", "我爸爸")}
_WHAT = {"en": ("the exam results", "the wedding", "the phone call", "the parcel", "the meeting", "the old car"),
         "zh": ("考试成绩", "婚礼", "那个电话", "快递", "会议", "那辆旧车")}
_TEMPLATES = {"en": {
    "neutral": ("{who} said {what} is on Tuesday.", "I put {what} on the table.",
                "Okay, {who} will call about {what} later.", "We talked about {what} for a while."),
    "surprise": ("Wait, {who} really did that?", "No way! {what} is already here?",
                 "I never expected {who} to show up!", "Really? {what}, just like that?"),
    "joy": ("This is wonderful, {who} loved {what}!", "Yes! {what} went perfectly!",
            "I'm so happy about {what}!", "{who} made my day, I love it!"),
    "fear": ("I'm scared something is wrong with {what}.", "Please, don't let {who} find out.",
             "What if {what} goes badly? I'm terrified.", "I heard a noise, {who}, is someone there?"),
    "sadness": ("I miss {who} so much.", "{what} was cancelled, I feel so empty.",
                "Nobody remembered, {who} didn't even call.", "It's over, I lost {what}."),
    "disgust": ("Ugh, {what} smells awful.", "That's gross, {who}, get it away from me.",
                "I can't stand how {who} eats.", "Yuck, {what} is covered in slime."),
    "anger": ("How dare {who} touch {what}!", "I'm furious, {who} lied to me again!",
              "Stop it! You ruined {what}!", "{who} never listens, I've had enough!"),
    # Group-level texts: they name the group and nothing more.
    "plain": ("So {who} brought {what} today.", "Oh, {what}. Well, look at that.", "{who} told me about {what}."),
    "worried": ("I don't know what to do about {what}.", "{who} hasn't called since {what}.",
                "I keep thinking about {what}."),
    "hostile": ("Just look at {what}, {who}.", "{who} did it again with {what}.", "Why would {who} do that?"),
}, "zh": {
    "neutral": ("{who}说{what}安排在周二。", "我把{what}放在桌子上了。", "好的，{who}晚点会打电话说{what}的事。",
                "我们聊了一会儿{what}。"),
    "surprise": ("等等，{who}真的那样做了？", "不会吧！{what}已经到了？", "真没想到{who}会来！", "真的吗？{what}就这样定了？"),
    "joy": ("太好了，{who}很喜欢{what}！", "耶！{what}非常顺利！", "{what}让我好开心！", "{who}让我今天特别高兴！"),
    "fear": ("我好怕{what}出问题。", "求你了，别让{who}知道。", "万一{what}搞砸了怎么办？我好害怕。",
             "{who}，你听到那个声音了吗？有人在吗？"),
    "sadness": ("我好想念{who}。", "{what}取消了，我心里好空。", "没人记得，{who}连电话都没打。", "结束了，我失去了{what}。"),
    "disgust": ("呃，{what}好难闻。", "真恶心，{who}，快拿开。", "我受不了{who}吃东西的样子。", "咦，{what}上面全是黏糊糊的东西。"),
    "anger": ("{who}怎么敢动{what}！", "我气死了，{who}又骗我！", "住手！你把{what}毁了！", "{who}从来不听，我受够了！"),
    "plain": ("所以{who}今天带来了{what}。", "哦，{what}。你看看。", "{who}跟我说了{what}的事。"),
    "worried": ("我不知道{what}该怎么办。", "自从{what}以后{who}就没打过电话。", "我一直在想{what}。"),
    "hostile": ("你看看{what}，{who}。", "{who}又在{what}上这样。", "{who}为什么要那样做？"),
}}
TEXT_GROUP_NAMES = dict(zip(GROUPS["text"], ("plain", "worried", "hostile")))
GROUP_TEXT_SHARE = 0.25  # how often the transcript is a group-level text rather than one of a single emotion


def plan(cfg: DemoConfig) -> list[ClipPlan]:
    """The corpus without media: balanced emotions, splits in whole blocks of 7, half English, half Chinese."""
    blocks = cfg.n_clips // len(EMOTIONS)
    n_dev, n_test = (max(1, round(blocks * share)) for share in (cfg.dev, cfg.test))
    if blocks - n_dev - n_test < 1:
        raise ValueError(f"demo corpus: n_clips={cfg.n_clips} is too small for train, dev and test; "
                         f"use at least {7 * (n_dev + n_test + 1)}")
    rng = np.random.default_rng(cfg.seed)
    order = [e for _ in range(blocks + 1) for e in rng.permutation(EMOTIONS)][:cfg.n_clips]
    languages = rng.permutation((["en", "zh"] * cfg.n_clips)[:cfg.n_clips])
    train_end, dev_end = 7 * (blocks - n_dev - n_test), 7 * (blocks - n_test)
    clips = []
    for i, (emotion, language) in enumerate(zip(order, languages)):
        # Dev and test take whole blocks from the end so they stay balanced; a partial last block goes to train.
        split = "train" if i < train_end or i >= 7 * blocks else "dev" if i < dev_end else "test"
        low, high = SENTIMENT[emotion]
        sentiment = round(float(rng.uniform(low, high)), 1) + 0.0  # + 0.0 turns -0.0 into 0.0
        shows = {m: str(rng.choice(group_of(m, emotion))) for m in GROUPS}
        if rng.random() < GROUP_TEXT_SHARE:
            shows["text"] = TEXT_GROUP_NAMES[group_of("text", emotion)]
        template = rng.choice(_TEMPLATES[language][shows["text"]])
        text = template.format(who=rng.choice(_WHO[language]), what=rng.choice(_WHAT[language]))
        if language == "en":  # a slot may open a sentence
            text = re.sub(r"(^|[.!?] )([a-z])", lambda m: m[1] + m[2].upper(), text)
        frames = max(1, round(rng.uniform(cfg.min_seconds, cfg.max_seconds) * cfg.fps))
        clips.append(ClipPlan(i, f"demo{i:04d}", split, str(language), str(emotion), sentiment, shows, text, frames))
    return clips


def _clip_rng(cfg: DemoConfig, clip: ClipPlan, modality: str) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, clip.index, ("audio", "visual").index(modality)])


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


# ---------------------------------------------------------------- video: the face

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
    rng = _clip_rng(cfg, clip, "visual")
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


# ---------------------------------------------------------------- audio: the voice

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
    rng = _clip_rng(cfg, clip, "audio")
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


# ---------------------------------------------------------------- the corpus on disk

_COLUMNS = ("id", "split", "language", "emotion", "sentiment", "voice_shows", "face_shows", "text_shows", "text")


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
        writer.writerow(_COLUMNS)
        for c in clips:
            writer.writerow((c.id, c.split, c.language, c.emotion, f"{c.sentiment:.1f}", c.shows["audio"],
                             c.shows["visual"], c.shows["text"], c.text))
    (root / "manifest.json").write_text(json.dumps(_manifest(root, cfg), indent=2) + "\n", encoding="utf-8")


def _manifest(root: Path, cfg: DemoConfig) -> dict:
    labels = hashlib.sha256((root / "labels.csv").read_bytes()).hexdigest()
    return {"corpus": "egmf demo", "adapter_version": ADAPTER_VERSION, "config": asdict(cfg),
            "labels_sha256": labels}


def _is_generated(root: Path, cfg: DemoConfig) -> bool:
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        return manifest == _manifest(root, cfg)
    except (OSError, ValueError):
        return False


def load(root, *, n_clips: int = 280, seed: int = 0, size: int = 96, fps: int = 10,
         progress: bool = True) -> Corpus:
    """The demo corpus in root, generated there first when root has none made with these parameters."""
    root = Path(root)
    cfg = DemoConfig(n_clips=n_clips, seed=seed, size=size, fps=fps)
    if not _is_generated(root, cfg):
        generate(root, cfg, progress)
    path = root / "labels.csv"
    header, rows = read_csv(path)
    require_columns(path, header, _COLUMNS)
    utterances, origins = [], []
    for line, row in rows:
        media = root / "clips" / f"{row['id']}.mp4"
        if not media.is_file():
            raise DatasetError(path, f"clip {media} missing", f"delete {root / 'manifest.json'} and run again to "
                               "generate the demo corpus anew", line=line)
        utterances.append(Utterance(
            id=row["id"], split=row["split"], text=row["text"], language=row["language"],
            labels={"emotion": parse_class(path, line, "emotion", row["emotion"], EMOTIONS),
                    "sentiment": parse_score(path, line, "sentiment", row["sentiment"])},
            media=media))
        origins.append((path, line))
    return validate(Corpus(SPEC, utterances), origins)
