"""The demo corpus: deterministic, balanced, bilingual, real mp4 clips, and ambiguous in each modality alone."""
from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from egmf.extract.datasets import demo, get
from egmf.extract.demo_corpus.face import render_face
from egmf.extract.demo_corpus.generate import manifest
from egmf.extract.demo_corpus.plan import EMOTIONS, GROUPS, TEXT_GROUP_NAMES, DemoConfig, group_of, plan as demo_plan
from egmf.extract.demo_corpus.voice import render_voice
from egmf.extract.media import decode_clip
from egmf.extract.records import DatasetError

SMALL = DemoConfig(n_clips=21)  # 3 blocks of 7: one each for train, dev and test


def test_groups_identify_every_emotion_only_all_three_together():
    codes = {e: tuple(GROUPS[m].index(group_of(m, e)) for m in GROUPS) for e in EMOTIONS}
    assert len(set(codes.values())) == len(EMOTIONS)
    for m in GROUPS:
        assert sorted(e for group in GROUPS[m] for e in group) == sorted(EMOTIONS)
        assert len(GROUPS[m]) == 3
    for pair in itertools.combinations(range(3), 2):  # every two modalities still confuse some emotions
        assert len({tuple(code[k] for k in pair) for code in codes.values()}) < len(EMOTIONS)


def test_plan_is_balanced_bilingual_and_labelled_consistently():
    clips = demo_plan(SMALL)
    assert [c.id for c in clips] == sorted({c.id for c in clips})
    by_split = {s: [c.emotion for c in clips if c.split == s] for s in ("train", "dev", "test")}
    assert sorted(by_split["dev"]) == sorted(by_split["test"]) == sorted(EMOTIONS)
    assert sorted(by_split["train"]) == sorted(EMOTIONS)
    assert sum(c.language == "zh" for c in clips) in (10, 11)
    for c in clips:
        assert all(c.shows[m] in group_of(m, c.emotion) for m in ("audio", "visual"))
        text_group = group_of("text", c.emotion)
        assert c.shows["text"] in text_group or c.shows["text"] == TEXT_GROUP_NAMES[text_group]
        assert -1 <= c.sentiment <= 1 and c.sentiment == round(c.sentiment, 1)
        if c.emotion in ("fear", "sadness", "disgust", "anger"):
            assert c.sentiment < 0
        else:
            assert c.sentiment > 0 if c.emotion == "joy" else abs(c.sentiment) <= 0.6
        assert (re.search(r"[\u4e00-\u9fff]", c.text) is not None) == (c.language == "zh")
        assert "{" not in c.text and SMALL.min_seconds * SMALL.fps <= c.frames <= SMALL.max_seconds * SMALL.fps
    assert any(c.shows["text"] != c.emotion for c in clips)  # look-alikes are really used
    with pytest.raises(ValueError, match="too small"):
        demo_plan(DemoConfig(n_clips=14))


def test_same_seed_renders_identical_clips_and_another_seed_differs():
    first, again, other = demo_plan(SMALL), demo_plan(SMALL), demo_plan(DemoConfig(n_clips=21, seed=1))
    assert first == again and first != other
    clip = first[3]
    np.testing.assert_array_equal(render_face(clip, SMALL), render_face(again[3], SMALL))
    np.testing.assert_array_equal(render_voice(clip, SMALL), render_voice(again[3], SMALL))
    assert not np.array_equal(render_voice(clip, SMALL), render_voice(other[3], DemoConfig(seed=1)))
    frames, audio = render_face(clip, SMALL), render_voice(clip, SMALL)
    assert frames.shape == (clip.frames, 96, 96, 3) and frames.dtype == np.uint8
    assert frames[0].std() > 20 and np.abs(frames[-1].astype(int) - frames[0]).mean() > 1  # a face that moves
    assert audio.shape == (clip.frames * SMALL.sample_rate // SMALL.fps,) and audio.dtype == np.float32
    assert 0.005 < np.sqrt(np.mean(audio ** 2)) and np.abs(audio).max() <= 1


def test_load_generates_real_clips_once_and_again_for_other_parameters(tmp_path):
    corpus = get("demo").load(tmp_path / "a", n_clips=21, progress=False)
    assert corpus.spec == demo.SPEC and corpus.spec.task == "emotion" and len(corpus.utterances) == 21
    planned = demo_plan(SMALL)
    for u, c in zip(corpus.utterances, planned):
        assert (u.id, u.split, u.language, u.text) == (c.id, c.split, c.language, c.text)
        assert u.labels == {"emotion": EMOTIONS.index(c.emotion), "sentiment": c.sentiment}
    decoded = decode_clip(corpus.utterances[0].media, fps=SMALL.fps, max_frames=64)
    assert not decoded.problems
    assert decoded.frames.shape == (planned[0].frames, 96, 96, 3)
    assert abs(decoded.audio.size - planned[0].frames * 1600) < 1600
    rendered = render_face(planned[0], SMALL)
    assert np.abs(decoded.frames.astype(int) - rendered).mean() < 8  # the mp4 shows what was drawn

    manifest = (tmp_path / "a" / "manifest.json").stat().st_mtime_ns
    get("demo").load(tmp_path / "a", n_clips=21, progress=False)
    assert (tmp_path / "a" / "manifest.json").stat().st_mtime_ns == manifest  # not generated twice

    get("demo").load(tmp_path / "b", n_clips=21, progress=False)
    for name in ("labels.csv", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    (tmp_path / "b" / "clips" / "demo0099.mp4").write_bytes(b"left by a larger corpus")
    reseeded = get("demo").load(tmp_path / "b", n_clips=21, seed=1, progress=False)
    assert [u.text for u in reseeded.utterances] == [c.text for c in demo_plan(DemoConfig(n_clips=21, seed=1))]
    assert len(list((tmp_path / "b" / "clips").glob("*.mp4"))) == 21
    assert (tmp_path / "a" / "labels.csv").read_bytes() != (tmp_path / "b" / "labels.csv").read_bytes()


def test_a_missing_clip_or_a_bad_label_is_an_error_that_names_file_line_and_fix(tmp_path):
    corpus = demo.load(tmp_path, n_clips=21, progress=False)
    labels = tmp_path / "labels.csv"
    text = labels.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("demo0003,"))
    labels.write_text(text.replace(row, row.replace(f",{demo_plan(SMALL)[3].emotion},", ",happy,", 1)),
                      encoding="utf-8")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest(tmp_path, SMALL)))  # edited, not regenerated
    with pytest.raises(DatasetError, match=r"labels\.csv, line 5: unknown emotion 'happy'.*Fix: use one of"):
        demo.load(tmp_path, n_clips=21, progress=False)
    labels.write_text(text, encoding="utf-8")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest(tmp_path, SMALL)))
    corpus.utterances[5].media.unlink()
    with pytest.raises(DatasetError, match=r"labels\.csv, line 7: clip .*demo0005\.mp4 missing.*manifest\.json"):
        demo.load(tmp_path, n_clips=21, progress=False)


# ---------------------------------------------------------------- only fusion is right: a numerical check
# Hand-made summary statistics per modality, then a logistic regression per modality and over all of them.

def voice_statistics(audio: np.ndarray, sr: int = 16000) -> np.ndarray:
    """Loudness, pitch level, pitch range, pitch jitter, harmonicity, syllable rate of a voice track."""
    frame, hop = 400, 160  # 25 ms frames every 10 ms
    starts = hop * np.arange(1 + (audio.size - frame) // hop)
    frames = audio[starts[:, None] + np.arange(frame)] * np.hanning(frame)  # (F, 400)
    db = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-10)  # (F,)
    active = db > db.max() - 15
    autocorrelation = np.fft.irfft(np.abs(np.fft.rfft(frames[active], 1024)) ** 2)[:, :sr // 60]  # (A, lags)
    autocorrelation /= autocorrelation[:, :1] + 1e-12
    lag = sr // 500 + autocorrelation[:, sr // 500:sr // 70].argmax(axis=1)  # pitch between 70 and 500 Hz
    harmonicity = autocorrelation[np.arange(lag.size), lag]
    semitones = 12 * np.log2(sr / lag / 100)
    q25, q50, q75 = np.percentile(semitones, [25, 50, 75])
    syllables = np.count_nonzero(np.diff(active.astype(int)) == 1)
    return np.array([db[active].mean(), q50, q75 - q25, np.median(np.abs(np.diff(semitones))),
                     harmonicity.mean(), syllables / (audio.size / sr)])


def face_statistics(frames: np.ndarray) -> np.ndarray:
    """Mouth curvature and opening, eye opening, brow height and slant, measured in the pixels of each frame
    relative to the head found there; their means over the last two thirds of the clip and their spreads."""
    rows = []
    for image in frames.astype(np.float32):
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        background = np.median(border, axis=0)
        skin = np.median(image[np.linalg.norm(image - background, axis=2) > 60], axis=0)
        ys, xs = np.nonzero(np.linalg.norm(image - skin, axis=2) < np.linalg.norm(image - background, axis=2))
        (y0, y1), (x0, x1) = np.percentile(ys, [0.5, 99.5]), np.percentile(xs, [0.5, 99.5])
        grid_y, grid_x = np.mgrid[0:image.shape[0], 0:image.shape[1]]
        u, v = (grid_x - (x0 + x1) / 2) / ((x1 - x0) / 2), (grid_y - (y0 + y1) / 2) / ((y1 - y0) / 2)
        area = (x1 - x0) * (y1 - y0) / 4
        inside = u * u + v * v < 0.9
        lum = image.mean(axis=2)
        dark = inside & (lum < 0.6 * skin.mean())
        mouth = dark & (v > 0.2)
        smile = -np.polyfit(u[mouth] ** 2, v[mouth], 1)[0] if mouth.sum() >= 3 else 0.0
        eyes = np.count_nonzero(inside & (v < 0.2) & (lum > max(skin.mean() + 20, 215))) / area
        upper = dark & (v < 0.05) & (np.abs(u) > 0.16) & (np.abs(u) < 0.56)  # brows, and pupils below them
        columns = np.nonzero(upper.any(axis=0))[0]
        top = upper[:, columns].argmax(axis=0)  # the first dark pixel from above: the brow
        brow_u, brow_v = np.abs(u[top, columns]), v[top, columns]
        slant = np.polyfit(brow_u, brow_v, 1)[0] if columns.size > 3 else 0.0
        rows.append([smile, mouth.sum() / area, eyes, brow_v.mean() if columns.size else 0.0, slant])
    rows = np.array(rows)  # (N, 5)
    return np.concatenate([rows[len(rows) // 3:].mean(axis=0), rows.std(axis=0)])


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+|[\u4e00-\u9fff]", text.lower())  # English words, Chinese characters


def test_each_modality_alone_names_only_a_group_and_fusion_names_the_emotion():
    cfg = DemoConfig(n_clips=210, fps=5)  # the design does not depend on the frame rate; the test's time does
    clips = demo_plan(cfg)
    audio = np.array([voice_statistics(render_voice(c, cfg)) for c in clips])  # (n, 6)
    visual = np.array([face_statistics(render_face(c, cfg)) for c in clips])  # (n, 10)
    text = CountVectorizer(analyzer=_words, binary=True).fit_transform([c.text for c in clips]).toarray()
    n_numeric = audio.shape[1] + visual.shape[1]
    features = {"audio": audio, "visual": visual, "text": text, "fused": np.hstack([audio, visual, text])}
    emotion = np.array([EMOTIONS.index(c.emotion) for c in clips])
    folds = StratifiedKFold(5, shuffle=True, random_state=0)

    def accuracy(name, target):
        # Standardise the measurements (they lead each matrix); the word indicators are already 0/1.
        measured = list(range({"audio": audio.shape[1], "visual": visual.shape[1], "text": 0}.get(name, n_numeric)))
        scale = ColumnTransformer([("measured", StandardScaler(), measured)], remainder="passthrough")
        model = make_pipeline(scale, LogisticRegression(C=3.0, max_iter=5000))
        return cross_val_score(model, features[name], target, cv=folds).mean()

    scores = {name: accuracy(name, emotion) for name in features}
    print("demo corpus, 5-fold accuracy of a logistic regression on hand-made statistics:", scores)
    for m in GROUPS:  # each modality carries its group reliably, so the ambiguity is by design
        groups = np.array([GROUPS[m].index(group_of(m, c.emotion)) for c in clips])
        assert accuracy(m, groups) > 0.9, m
        assert scores[m] < 0.6, m
    assert scores["fused"] > 0.9
