"""The extraction run end to end: real mp4 clips, the tiny preset, the real store."""
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from egmf.cache.reader import Cache
from egmf.cache.schema import CacheError
from egmf.cache.writer import CacheWriter
from egmf.extract import datasets, presets
from egmf.extract.cli import app
from egmf.extract.lock import store_lock
from egmf.extract.run import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, ExtractConfig, extract
from mediagen import BAD_KINDS, make_bad_clip, make_clip
from shared_data import require_meld

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return tmp_path_factory.mktemp("demo")


def _demo(root, out, **kw) -> ExtractConfig:
    return ExtractConfig("demo", root, str(out), preset="tiny", rows_per_shard=8, progress=False,
                         dataset_options={"n_clips": 21, "progress": False}, **kw)


def _same_store(a: Cache, b: Cache):
    assert a.fingerprint == b.fingerprint
    assert (a.done == b.done).all()
    for m in a.modalities:
        fa, la = a.features(m)
        fb, lb = b.features(m)
        np.testing.assert_array_equal(fa, fb)
        np.testing.assert_array_equal(la, lb)
        assert a.problems(m).tolist() == b.problems(m).tolist()


def test_one_and_two_dask_workers_write_identical_stores(demo_root, tmp_path):
    one = extract(_demo(demo_root, tmp_path / "one", threads=1))
    assert one.rows == 21 and one.extracted == 21 and one.exit_code == EXIT_OK
    two = extract(_demo(demo_root, tmp_path / "two", workers=2, threads=1))
    assert two.extracted == 21
    _same_store(Cache.open(tmp_path / "one"), Cache.open(tmp_path / "two"))
    c = Cache.open(tmp_path / "two")
    assert set(c.modalities) == {"audio", "visual", "text"}
    assert (c.lengths("audio") > 0).all() and (c.lengths("visual") > 0).all()
    assert set(c.meta["language"]) == {"en", "zh"}


def test_demo_corpora_and_caches_built_in_fresh_folders_are_identical(tmp_path, monkeypatch):
    """Two fresh clones: each its own corpus folder, store and EGMF_HOME (so its own random encoders)."""
    for clone in ("a", "b"):
        monkeypatch.setenv("EGMF_HOME", str(tmp_path / clone / "home"))
        extract(_demo(tmp_path / clone / "data", tmp_path / clone / "cache", threads=1))
    clips = sorted((tmp_path / "a/data/clips").glob("*.mp4"))
    assert len(clips) == 21
    for clip in clips:  # the encoded bitstreams themselves, not only what a decoder makes of them
        assert clip.read_bytes() == (tmp_path / "b/data/clips" / clip.name).read_bytes(), clip.name
    a, b = Cache.open(tmp_path / "a/cache"), Cache.open(tmp_path / "b/cache")
    _same_store(a, b)
    for name in a.labels:
        np.testing.assert_array_equal(a.labels[name], b.labels[name])


def test_rerun_resumes_only_unfinished_blocks(demo_root, tmp_path):
    extract(_demo(demo_root, tmp_path / "full", threads=1))
    extract(_demo(demo_root, tmp_path / "part", threads=1))
    CacheWriter.open(tmp_path / "part").invalidate([(8, 16)])  # as if killed while writing that block
    again = extract(_demo(demo_root, tmp_path / "part", threads=1))
    assert again.extracted == 8 and again.already_done == 13
    _same_store(Cache.open(tmp_path / "full"), Cache.open(tmp_path / "part"))
    assert extract(_demo(demo_root, tmp_path / "part", threads=1)).extracted == 0


def test_text_only_cache_from_the_real_meld_csvs_needs_no_media(tmp_path):
    r = runner.invoke(app, ["--dataset", "meld", "--root", str(require_meld()), "--out", str(tmp_path / "meld"),
                            "--modalities", "text", "--preset", "tiny", "--limit", "40", "--opt", "splits=train,dev"])
    assert r.exit_code == EXIT_OK, r.output
    c = Cache.open(tmp_path / "meld")
    assert c.modalities == ("text",) and c.done.all() and c.n_rows == 40
    assert c.meta["text"][0].startswith("also I was the point person")
    assert c.meta["speaker"][:2].tolist() == ["Chandler", "The Interviewer"]  # stored for prompts that name them
    assert c.dataset.label("emotion").classes[c.labels["emotion"][0]] == "neutral"
    assert (c.lengths("text") > 0).all()


def test_bad_clips_are_reported_and_the_rest_extracted(tmp_path):
    root = tmp_path / "corpus"
    rows = []
    for i in range(4):
        make_clip(root / f"good{i}.mp4", seconds=1.0, seed=i)
        rows.append((f"good{i}", f"good{i}.mp4", f"fine clip {i}", "joy" if i % 2 else "anger"))
    for kind in BAD_KINDS:
        make_bad_clip(root / f"{kind}.mp4", kind)
        rows.append((kind, f"{kind}.mp4", f"{kind} clip", "joy"))
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "text", "label"])
        w.writerows(rows)
    out = tmp_path / "store"
    r = runner.invoke(app, ["--dataset", "folder", "--root", str(root), "--out", str(out), "--preset", "tiny",
                            "--rows-per-shard", "4"])
    assert r.exit_code == EXIT_PARTIAL, r.output
    c = Cache.open(out)
    assert c.done.all()
    ids = c.meta["id"].tolist()
    for i in range(4):
        assert c.lengths("audio")[ids.index(f"good{i}")] > 0 and c.lengths("visual")[ids.index(f"good{i}")] > 0
    report = list(csv.DictReader(open(f"{out}-skipped.csv")))
    reasons = {(row["clip"], row["modality"]): row["reason"] for row in report}
    assert reasons[("zero_bytes", "visual")] == "zero-byte file"
    assert reasons[("missing", "audio")] == "missing file"
    assert reasons[("no_audio", "audio")] == "no audio track"
    assert ("no_audio", "visual") not in reasons
    assert reasons[("not_media", "visual")].startswith("not a media file")
    assert reasons[("truncated", "visual")].startswith("truncated or corrupt")
    assert not any(clip.startswith("good") for clip, _ in reasons)
    assert "skipped clips listed in" in r.output


def test_a_second_run_on_a_locked_store_is_refused(tmp_path):
    out, meld = str(tmp_path / "store"), require_meld()
    with store_lock(out):
        with pytest.raises(CacheError, match=r"being written by egmf-extract pid \d+.*wait"):
            extract(ExtractConfig("meld", meld, out, preset="tiny", modalities=("text",), limit=8,
                                  progress=False, dataset_options={"splits": "train"}))
    assert extract(ExtractConfig("meld", meld, out, preset="tiny", modalities=("text",), limit=8,
                                 progress=False, dataset_options={"splits": "train"})).extracted == 8


def write_cherma(root, missing=()) -> dict:
    """A small CHERMA release in root, without the feature files named (utterance id, modality) in missing;
    returns (utterance id, modality) -> the array written (or left out)."""
    entries = {"train": ["tv_0001", "tv_0002", "tv_0003"], "dev": ["tv_0004"], "test": ["tv_0005"]}
    rng = np.random.default_rng(0)
    arrays = {}
    for split, names in entries.items():
        items = []
        for name in names:
            items.append({"audio_file": f"{name}.wav", "video_file": f"{name}.mp4", "txt_label": "高兴",
                          "audio_label": "平静", "visual_label": "高兴", "video_label": "悲伤"})
            for modality, folder, suffix, dim in (("text", "text", ".npy", 1024), ("audio", "audio", ".npy", 1024),
                                                  ("visual", "visual", ".mp4.npy", 2048)):
                (root / folder / split).mkdir(parents=True, exist_ok=True)
                x = rng.standard_normal(dim).astype(np.float32)
                if (f"{split}/{name}", modality) not in missing:
                    np.save(root / folder / split / f"{name}{suffix}", x)
                arrays[(f"{split}/{name}", modality)] = x
        (root / f"{split}.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    return arrays


def test_cherma_released_features_are_imported_as_they_are(tmp_path):
    arrays = write_cherma(tmp_path, missing={("train/tv_0002", "audio")})
    summary = extract(ExtractConfig("cherma", tmp_path, str(tmp_path / "store"), preset="tiny", progress=False))
    assert summary.exit_code == EXIT_PARTIAL and summary.missing["audio"] == 1
    c = Cache.open(tmp_path / "store")
    assert c.encoders["visual"].family == "released" and c.encoders["visual"].dim == 2048
    ids = c.meta["id"].tolist()
    feats, lengths = c.features("visual")
    k = ids.index("dev/tv_0004")
    np.testing.assert_allclose(feats[k, 0], arrays[("dev/tv_0004", "visual")].astype(np.float16))
    assert lengths[k] == 1
    assert c.lengths("audio")[ids.index("train/tv_0002")] == 0
    assert c.problems("audio")[ids.index("train/tv_0002")] == "feature file missing"


def test_a_missing_first_cherma_feature_file_is_a_missing_row_and_none_at_all_an_error(tmp_path):
    write_cherma(tmp_path / "a", missing={("train/tv_0001", "audio"), ("train/tv_0001", "visual")})
    summary = extract(ExtractConfig("cherma", tmp_path / "a", str(tmp_path / "a.store"), preset="tiny",
                                    progress=False))
    assert summary.missing == {"audio": 1, "visual": 1, "text": 0}
    c = Cache.open(tmp_path / "a.store")
    assert c.encoders["visual"].dim == 2048 and c.problems("audio")[0] == "feature file missing"

    write_cherma(tmp_path / "b", missing={(u, "audio") for u in ("train/tv_0001", "train/tv_0002", "train/tv_0003",
                                                                  "dev/tv_0004", "test/tv_0005")})
    r = runner.invoke(app, ["--dataset", "cherma", "--root", str(tmp_path / "b"), "--out", str(tmp_path / "b.store"),
                            "--preset", "tiny"])
    assert r.exit_code == EXIT_FAILED and "Traceback" not in r.output, r.output
    assert f"{tmp_path / 'b' / 'audio' / 'train' / 'tv_0001.npy'}: no audio feature file" in r.output
    assert "--modalities" in r.output


def text_corpus(root, n=6) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "text", "label"])
        w.writerows((f"c{i}", "", f"sentence number {i}", "joy" if i % 2 else "anger") for i in range(n))


def test_a_scheduler_run_hands_its_workers_an_absolute_store_path(tmp_path, monkeypatch):
    """Remote workers resolve a relative --out against their own working directory: the run must not."""
    import dask.distributed

    elsewhere = tmp_path / "worker-cwd"
    elsewhere.mkdir()

    class Future:
        def __init__(self, value):
            self.value = value

        def result(self):
            return self.value

    class RemoteClient:  # runs each task at once, from another working directory, as a remote worker would
        def __init__(self, address):
            assert address == "tcp://scheduler:8786"

        def submit(self, fn, *args, pure=True):
            here = os.getcwd()
            os.chdir(elsewhere)
            try:
                return Future(fn(*args))
            finally:
                os.chdir(here)

        def close(self):
            pass

    monkeypatch.setattr(dask.distributed, "Client", RemoteClient)
    monkeypatch.setattr(dask.distributed, "as_completed", iter)
    monkeypatch.chdir(tmp_path)
    text_corpus(tmp_path / "corpus")
    summary = extract(ExtractConfig("folder", "corpus", "store", preset="tiny", modalities=("text",),
                                    scheduler="tcp://scheduler:8786", rows_per_shard=4, threads=1, progress=False))
    assert summary.extracted == 6 and Cache.open(tmp_path / "store").done.all()
    assert not (elsewhere / "store").exists()


def test_a_preset_without_a_requested_modality_is_refused_naming_it_and_the_fix(tmp_path):
    preset = json.loads((Path(presets.__file__).parent / "presets" / "tiny.json").read_text())
    del preset["encoders"]["audio"]
    (tmp_path / "textonly.json").write_text(json.dumps(preset))
    text_corpus(tmp_path / "corpus")
    with pytest.raises(ValueError, match=r"textonly\.json: preset 'textonly' has no encoder for audio.*"
                                         r"--modalities visual,text"):
        extract(ExtractConfig("folder", tmp_path / "corpus", str(tmp_path / "store"),
                              preset=str(tmp_path / "textonly.json"), modalities=("audio", "visual", "text"),
                              progress=False))
    r = runner.invoke(app, ["--dataset", "folder", "--root", str(tmp_path / "corpus"), "--out",
                            str(tmp_path / "store"), "--preset", str(tmp_path / "textonly.json")])
    assert r.exit_code == EXIT_FAILED and "has no encoder for audio" in r.output, r.output
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*meld, sims-v2"):
        datasets.get("nope")
