"""egmf-cache import-mmsa: MMSA / MMSA-FET pickles as released, read as data only, cleaned, named by the user."""
import pickle

import numpy as np
import pytest
from typer.testing import CliRunner

from crafted_pickle import creating

from egmf.cache.cli import app
from egmf.cache.mmsa import load_pickle
from egmf.cache.reader import Cache

runner = CliRunner()
DIMS = {"text": 12, "audio": 74, "vision": 35}  # MMSA's MOSEI: BERT 768, COVAREP 74, Facet 35


def _mmsa_pickle(path, n=(5, 2, 3), sims=True):
    rng = np.random.default_rng(0)
    data = {}
    for split, k in zip(("train", "valid", "test"), n):
        audio = rng.standard_normal((k, 8, 5)).astype(np.float32)
        audio[0, 1, 2] = -np.inf
        vision = rng.standard_normal((k, 6, 4)).astype(np.float32)
        text = rng.standard_normal((k, 7, 9)).astype(np.float32)
        text[:, 5:] = 0  # padded tokens
        part = {"id": [f"{split}v$_${i}" for i in range(k)], "raw_text": [f"{split} text {i}" for i in range(k)],
                "audio": audio, "vision": vision, "text": text,
                "audio_lengths": [8] * (k - 1) + [3], "vision_lengths": [6] * k,
                "regression_labels": rng.uniform(-1, 1, k).astype(np.float32)}
        if sims:
            for m in "TAV":
                part[f"regression_labels_{m}"] = rng.uniform(-1, 1, k).astype(np.float32)
        data[split] = part
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return data


def released_pickle(path, aligned: bool, protocol: int, numpy1: bool = False, n=(6, 2, 3)) -> dict:
    """A pickle shaped like MMSA's MOSEI release: numpy arrays of ids and texts, the keys MMSA adds (text_bert,
    annotations, classification_labels), lengths only when unaligned, feature widths of the release (text
    narrower). numpy1: the module names numpy 1.x wrote (numpy.core.*), as in the pickles people download."""
    rng = np.random.default_rng(1)
    steps = {m: 50 for m in DIMS} if aligned else {"text": 50, "audio": 500, "vision": 375}
    data = {}
    for split, k in zip(("train", "valid", "test"), n):
        part = {"id": np.array([f"-3g5yACwYnA$_${split}{i}" for i in range(k)]),
                "raw_text": np.array([f"{split} words {i}" for i in range(k)], dtype=object),
                "annotations": np.array(["Positive"] * k),
                "classification_labels": np.ones(k, np.float32),
                "regression_labels": rng.uniform(-3, 3, k).astype(np.float32),
                "text_bert": np.zeros((k, 3, 50), np.float64)}
        for m, d in DIMS.items():
            lengths = rng.integers(1, steps[m] + 1, k)
            x = rng.standard_normal((k, steps[m], d)).astype(np.float32)
            for i, n_steps in enumerate(lengths):
                x[i, n_steps:] = 0  # zero padding after each row's steps
            part[m] = x
            if not aligned and m != "text":
                part[f"{m}_lengths"] = lengths.tolist()
        data[split] = part
    blob = pickle.dumps(data, protocol=protocol)
    if numpy1:
        assert protocol <= 3  # GLOBAL opcodes: module and name as newline-ended text
        blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        assert b"numpy.core.multiarray\n_reconstruct\n" in blob
    path.write_bytes(blob)
    return data


def _import(pkl, out, *extra):
    return runner.invoke(app, ["import-mmsa", str(pkl), "--out", str(out), *extra])


def test_import_mmsa_pickle(tmp_path):
    data = _mmsa_pickle(tmp_path / "unaligned_50.pkl")
    r = _import(tmp_path / "unaligned_50.pkl", tmp_path / "s", "--dataset", "sims-v2")
    assert r.exit_code == 0, r.output
    for split in ("train", "valid", "test"):
        assert f"set to 0 in {split}/audio: 1 -inf" in r.output  # one -inf per split, counted
    c = Cache.open(tmp_path / "s")
    assert c.split_counts() == {"train": 5, "dev": 2, "test": 3}
    assert c.dataset.name == "sims-v2-mmsa" and c.dataset.label("sentiment").high == 1.0
    assert {"sentiment_T", "sentiment_A", "sentiment_V"} <= set(c.labels)
    audio, alen = c.features("audio")
    assert alen.tolist()[:5] == [8, 8, 8, 8, 3]
    assert audio[0, 1, 2] == 0  # -inf became 0
    np.testing.assert_allclose(audio[1], data["train"]["audio"][1].astype(np.float16))
    assert not audio[4, 3:].any()
    _, tlen = c.features("text")
    assert (tlen == 5).all()  # aligned-style text: length = last non-zero step
    np.testing.assert_allclose(c.labels["sentiment_A"][5:7], data["valid"]["regression_labels_A"], rtol=1e-6)
    assert c.meta["split"][5] == "dev" and c.meta["text"][5] == "valid text 0"
    assert runner.invoke(app, ["verify", str(tmp_path / "s")]).exit_code == 0


@pytest.mark.parametrize("aligned, protocol, numpy1", [
    (True, 4, False), (False, 5, False), (True, 2, True), (False, 3, True)])
def test_pickles_as_released_import_whole(tmp_path, aligned, protocol, numpy1):
    name = "aligned_50.pkl" if aligned else "unaligned_50.pkl"
    data = released_pickle(tmp_path / name, aligned, protocol, numpy1)
    r = _import(tmp_path / name, tmp_path / "s", "--dataset", "mosei")
    assert r.exit_code == 0, r.output
    assert "no NaN, infinite or out-of-float16 values" in r.output
    c = Cache.open(tmp_path / "s")
    assert c.dataset.name == "mosei-mmsa" and c.split_counts() == {"train": 6, "dev": 2, "test": 3}
    assert c.meta["id"].tolist() == [str(i) for s in ("train", "valid", "test") for i in data[s]["id"]]
    np.testing.assert_allclose(c.labels["sentiment"][-3:], data["test"]["regression_labels"], rtol=1e-6)
    for m, src in (("audio", "audio"), ("visual", "vision"), ("text", "text")):
        feats, lengths = c.features(m)
        source = np.concatenate([data[s][src] for s in ("train", "valid", "test")])
        nonzero = np.abs(source).sum(-1) > 0
        expected = source.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)  # the last non-zero step
        assert lengths.tolist() == expected.tolist()
        if not aligned and m != "text":
            assert lengths.tolist() == sum((data[s][f"{src}_lengths"] for s in ("train", "valid", "test")), [])
        np.testing.assert_array_equal(feats, source.astype(np.float16))


@pytest.mark.parametrize("which", [0, 1], ids=["os.system", "open"])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, which):
    marker = tmp_path / "created-by-the-pickle"
    data = released_pickle(tmp_path / "aligned_50.pkl", aligned=True, protocol=4)
    payload = creating(marker)[which]
    data["test"]["id"] = payload  # deep inside an otherwise real pickle, after arrays were already rebuilt
    (tmp_path / "aligned_50.pkl").write_bytes(pickle.dumps(data, protocol=4))
    r = _import(tmp_path / "aligned_50.pkl", tmp_path / "s", "--dataset", "mosei")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    called = payload.called
    assert f"aligned_50.pkl: refused to unpickle: it calls {called}" in r.output and "Fix:" in r.output
    assert not marker.exists()
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match=f"refused to unpickle: it calls {called}"):
        load_pickle(tmp_path / "aligned_50.pkl")
    assert not marker.exists()


def test_protocol_2_bytes_decode_only_as_latin1(tmp_path):
    # Protocol 2 writes bytes as _codecs.encode(text, "latin1"): allowed, and with no other codec.
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps({"b": b"\x00\xff"}, protocol=2))
    with pytest.raises(ValueError, match="not an MMSA feature pickle"):
        load_pickle(tmp_path / "ok.pkl")  # read, then found to be no MMSA pickle
    blob = pickle.dumps({"b": b"\x00\xff"}, protocol=2)
    crafted = blob.replace(b"X\x06\x00\x00\x00latin1", b"X\x06\x00\x00\x00rot_13")  # same length: valid opcodes
    (tmp_path / "bad.pkl").write_bytes(crafted)
    with pytest.raises(ValueError, match=r"bad.pkl: cannot read the pickle .*codec 'rot_13'"):
        load_pickle(tmp_path / "bad.pkl")


def test_nan_inf_and_values_beyond_float16_are_zeroed_and_counted_per_array(tmp_path):
    data = released_pickle(tmp_path / "p.pkl", aligned=False, protocol=4)
    data["train"]["audio"][0, 0, :3] = [np.nan, np.inf, -np.inf]
    data["train"]["audio"][1, 0, 0] = np.nan
    data["valid"]["vision"][0, 0, :2] = [7e4, -1e30]  # beyond float16's 65504
    data["test"]["vision"][2, 0, 0] = 65504.0  # the largest float16: kept
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(data, protocol=4))
    r = _import(tmp_path / "p.pkl", tmp_path / "s", "--dataset", "mosei")
    assert r.exit_code == 0, r.output
    assert "set to 0 in train/audio: 2 NaN, 1 inf, 1 -inf" in r.output
    assert "set to 0 in valid/vision: 2 beyond float16" in r.output
    assert r.output.count("set to 0 in") == 2
    c = Cache.open(tmp_path / "s")
    audio, _ = c.features("audio")
    assert (audio[0, 0, :3] == 0).all() and audio[1, 0, 0] == 0
    np.testing.assert_array_equal(audio[0, 0, 3:], data["train"]["audio"][0, 0, 3:].astype(np.float16))
    visual, _ = c.features("visual")
    assert (visual[6, 0, :2] == 0).all() and visual[6 + 2 + 2, 0, 0] == 65504.0
    assert runner.invoke(app, ["verify", str(tmp_path / "s")]).exit_code == 0


def test_the_corpus_is_named_by_the_user_never_guessed(tmp_path):
    released_pickle(tmp_path / "mosi.pkl", aligned=True, protocol=4)  # labels in [-3, 3], as MOSEI's
    r = _import(tmp_path / "mosi.pkl", tmp_path / "s")
    assert r.exit_code == 2 and "Missing option '--dataset'" in r.output and not (tmp_path / "s").exists()
    assert _import(tmp_path / "mosi.pkl", tmp_path / "s", "--dataset", "mosi").exit_code == 0
    assert Cache.open(tmp_path / "s").dataset.name == "mosi-mmsa"
    _mmsa_pickle(tmp_path / "sims.pkl")  # labels in [-1, 1], as SIMS v2's
    assert _import(tmp_path / "sims.pkl", tmp_path / "v1", "--dataset", "sims").exit_code == 0
    c = Cache.open(tmp_path / "v1")
    assert c.dataset.name == "sims-mmsa" and c.meta["language"][0] == "zh"


def test_import_refuses_an_unknown_dataset_name_with_the_choices(tmp_path):
    _mmsa_pickle(tmp_path / "unaligned_50.pkl")
    r = _import(tmp_path / "unaligned_50.pkl", tmp_path / "s", "--dataset", "MOSEI")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "unknown dataset 'MOSEI'" in r.output and "mosei | mosi | sims | sims-v2" in r.output


def test_import_rejects_a_pickle_of_something_else(tmp_path):
    with open(tmp_path / "x.pkl", "wb") as f:
        pickle.dump({"train": {}}, f)
    r = _import(tmp_path / "x.pkl", tmp_path / "s", "--dataset", "mosei")
    assert r.exit_code == 2 and "not an MMSA feature pickle" in r.output


def _feature_pickle() -> dict:
    """900 rows of 3 x (16, 128) float32 features: 21 MiB pickled."""
    rng = np.random.default_rng(0)
    return {split: {"id": [f"{split}{i}" for i in range(n)], "raw_text": ["t"] * n,
                    "regression_labels": rng.uniform(-1, 1, n).astype(np.float32),
                    **{src: rng.standard_normal((n, 16, 128)).astype(np.float32)
                       for src in ("audio", "vision", "text")}}
            for split, n in (("train", 600), ("valid", 150), ("test", 150))}


def _import_peak(pkl, out) -> int:
    """Bytes allocated at the peak of an import, as tracemalloc sees them (numpy reports its arrays to it)."""
    import tracemalloc

    from egmf.cache import mmsa

    tracemalloc.start()
    try:
        mmsa.import_mmsa(pkl, out, "sims-v2", progress=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_import_converts_one_block_at_a_time_not_the_whole_pickle(tmp_path, monkeypatch):
    """MOSEI's pickle is GBs: a float32 copy of every split next to it would double the import's peak memory."""
    from egmf.cache import mmsa

    data = _feature_pickle()
    feature_bytes = sum(part[src].nbytes for part in data.values() for src in ("audio", "vision", "text"))
    (tmp_path / "aligned_50.pkl").write_bytes(b"stands in for the pickle")
    monkeypatch.setattr(mmsa, "load_pickle", lambda path: data)
    peak = _import_peak(tmp_path / "aligned_50.pkl", tmp_path / "s")
    assert peak < feature_bytes / 3, f"peak {peak / 2**20:.1f} MiB for {feature_bytes / 2**20:.1f} MiB of features"
    c = Cache.open(tmp_path / "s")
    text, lengths = c.features("text")
    assert (lengths == 16).all()
    np.testing.assert_array_equal(text[599:601], np.concatenate([data["train"]["text"][-1:],
                                                                 data["valid"]["text"][:1]]).astype(np.float16))


def test_an_import_peaks_near_the_pickles_own_size(tmp_path):
    """ch-simsv2s.pkl is 3.6 GB: reading it whole is unavoidable, a second copy of it (bytes read first, a float32
    copy of every split) is not. Measured on a 335 MiB MOSEI-shaped pickle: 398 MiB added RSS (README)."""
    (tmp_path / "aligned_50.pkl").write_bytes(pickle.dumps(_feature_pickle(), protocol=4))
    size = (tmp_path / "aligned_50.pkl").stat().st_size
    peak = _import_peak(tmp_path / "aligned_50.pkl", tmp_path / "s")
    assert peak < 1.3 * size, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB pickle"
