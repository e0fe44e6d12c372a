import numpy as np
import pytest
from typer.testing import CliRunner

import synthetic_cache as sc
from egmf.cache.cli import app
from egmf.cache.reader import Cache
from egmf.cache.schema import CacheError
from egmf.cache.writer import CacheWriter

runner = CliRunner()


def test_write_then_read_round_trips_features_labels_and_meta(tmp_path):
    sc.write(tmp_path / "s", n=10)
    c = Cache.open(tmp_path / "s")
    assert c.done.all() and c.n_rows == 10
    feats, lengths = c.features("text")
    for i in range(10):
        x = sc.features(i, "text")
        assert lengths[i] == len(x)
        np.testing.assert_allclose(feats[i, : len(x)], x.astype(np.float16))
        assert not feats[i, len(x):].any()
    audio, alen = c.features("audio")
    assert alen[4] == 0 and not audio[4].any()  # row 4: modality missing, masked by length 0
    assert c.problems("audio")[4] == "no audio track" and c.problems("audio")[3] == ""
    meta, labels = sc.rows(10)
    assert c.meta["id"].tolist() == meta["id"]
    assert c.meta["text"][0] == "utterance 0 你好"
    assert c.meta["turn"].tolist() == meta["turn"]
    assert c.labels["emotion"].tolist() == labels["emotion"]
    assert c.dataset.label("emotion").classes == sc.EMOTIONS
    assert set(c.modalities) == {"audio", "visual", "text"}


def test_selection_by_split_and_rows_in_any_order(tmp_path):
    sc.write(tmp_path / "s", n=13)
    c = Cache.open(tmp_path / "s")
    dev = c.rows("dev")
    assert dev.tolist() == [1, 4, 7, 10]
    rows = np.array([12, 0, 5, 5])
    feats, lengths = c.features("visual", rows)
    for k, i in enumerate(rows):
        x = sc.features(int(i), "visual")
        np.testing.assert_allclose(feats[k, : len(x)], x.astype(np.float16))
        assert lengths[k] == len(x)
    lazy, _ = c.features("visual", rows, lazy=True)
    np.testing.assert_array_equal(np.asarray(lazy.compute()), feats)


def test_interrupted_write_resumes_to_the_same_store(tmp_path):
    sc.write(tmp_path / "full", n=18)
    w = sc.write(tmp_path / "part", n=18, blocks=[(0, 4), (8, 12)])
    assert w.pending_blocks() == [(4, 8), (12, 16), (16, 18)]
    resumed = sc.write(tmp_path / "part", n=18)  # reopens, writes only what is pending
    assert resumed.pending_blocks() == []
    a, b = Cache.open(tmp_path / "full"), Cache.open(tmp_path / "part")
    assert a.fingerprint == b.fingerprint
    for m in a.modalities:
        np.testing.assert_array_equal(a.features(m)[0], b.features(m)[0])
        np.testing.assert_array_equal(a.features(m)[1], b.features(m)[1])


def test_rows_not_done_are_not_served(tmp_path):
    sc.write(tmp_path / "s", n=12, blocks=[(4, 8)])
    c = Cache.open(tmp_path / "s")
    assert c.rows().tolist() == [4, 5, 6, 7]
    assert c.split_counts() == {"dev": 2, "test": 1, "train": 1}  # rows 4..7


def test_other_encoders_are_refused_with_the_reason(tmp_path):
    sc.write(tmp_path / "s", n=8)
    with pytest.raises(CacheError, match=r"audio encoder: the store has .*weights w0.*this run has .*weights w1.*--out"):
        sc.write(tmp_path / "s", n=8, weights="w1")
    with pytest.raises(CacheError, match="rows: the store has 8 utterances, this run has 9"):
        sc.write(tmp_path / "s", n=9)


def test_nan_features_are_refused_naming_the_clip(tmp_path):
    w = sc.write(tmp_path / "s", n=4, blocks=[])
    bad = {m: [sc.features(i, m) for i in range(4)] for m in ("audio", "visual", "text")}
    bad["text"][2] = bad["text"][2].copy()
    bad["text"][2][0, 0] = np.nan
    with pytest.raises(CacheError, match="clip clip0002: text features contain NaN"):
        w.write_block(0, bad)
    assert not Cache.open(tmp_path / "s").done.any()


def test_wrong_feature_size_is_refused(tmp_path):
    w = sc.write(tmp_path / "s", n=4, blocks=[])
    block = {m: [sc.features(i, m) for i in range(4)] for m in ("audio", "visual", "text")}
    block["visual"][0] = np.zeros((2, 99), np.float32)
    with pytest.raises(CacheError, match=r"clip clip0000: visual features of shape \(2, 99\)"):
        w.write_block(0, block)


def test_a_non_store_path_is_a_clear_error(tmp_path):
    with pytest.raises(CacheError, match="not a feature cache"):
        Cache.open(tmp_path / "nothing-here")
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(CacheError, match="file.txt"):
        Cache.open(tmp_path / "file.txt")
    r = runner.invoke(app, ["info", str(tmp_path / "nothing-here")])
    assert r.exit_code == 2 and "not a feature cache" in r.output


def _truncate_one_shard(store, modality="text", shard="1"):
    path = store / modality / "features" / "c" / shard / "0" / "0"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_shard_fails_verify_then_repair_and_rewrite_heal_it(tmp_path):
    store = tmp_path / "s"
    sc.write(store, n=12)
    assert runner.invoke(app, ["verify", str(store)]).exit_code == 0
    _truncate_one_shard(store)
    with pytest.raises(CacheError, match=r"text features of rows .* cannot be read.*verify --repair"):
        Cache.open(store).features("text")
    r = runner.invoke(app, ["verify", str(store)])
    assert r.exit_code == 1 and "FAILED rows 4..7 text" in r.output
    r = runner.invoke(app, ["verify", "--repair", str(store)])
    assert r.exit_code == 1
    assert CacheWriter.open(store).pending_blocks() == [(4, 8)]
    sc.write(store, n=12)
    assert runner.invoke(app, ["verify", str(store)]).exit_code == 0


def test_verify_catches_values_written_behind_the_writers_back(tmp_path):
    import zarr
    store = tmp_path / "s"
    sc.write(store, n=8)
    arr = zarr.open_group(str(store), mode="r+")["visual/features"]
    block = arr[0:4]
    block[0, -1, 0] = 5.0  # beyond row 0's length
    arr[0:4] = block
    r = runner.invoke(app, ["verify", str(store)])
    assert r.exit_code == 1 and "beyond a row's length" in r.output


def test_info_reports_shapes_splits_encoders_and_pending(tmp_path):
    sc.write(tmp_path / "s", n=10, blocks=[(0, 4), (4, 8)])
    r = runner.invoke(app, ["info", "--json", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    import json
    d = json.loads(r.output)
    assert d["rows"] == 10 and d["rows_not_done"] == 2
    assert d["rows_per_split"] == {"train": 3, "dev": 3, "test": 2}
    assert d["speakers"] == {"named_rows": 8, "distinct": 2}  # Ross, Rachel; rows 3 and 7 name nobody
    assert d["modalities"]["audio"]["shape"] == [10, 6, 4]
    assert d["modalities"]["audio"]["missing_rows"] == 1
    assert d["size_bytes"] > 0 and len(d["fingerprint"]) == 64
    r = runner.invoke(app, ["info", str(tmp_path / "s")])
    assert "(2 not done)" in r.output and "synthetic" in r.output and "2 named in 8 rows" in r.output


def test_a_zarr_group_that_is_no_egmf_cache_is_refused_by_reader_and_writer_alike(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "other"), mode="w").create_array("x", shape=(3,), dtype="int32")
    with pytest.raises(CacheError, match=r"other is a Zarr group but not an EGMF cache .* Fix: give a store"):
        Cache.open(tmp_path / "other")
    with pytest.raises(CacheError, match=r"other is a Zarr group but not an EGMF cache .* Fix: give a store"):
        sc.write(tmp_path / "other", n=4)


def test_a_damaged_header_is_a_clear_error_naming_the_store(tmp_path):
    import zarr

    from egmf.cache.header import ATTR

    sc.write(tmp_path / "store", n=4)
    group = zarr.open_group(str(tmp_path / "store"), mode="r+")
    header = dict(group.attrs[ATTR])
    del header["encoders"]
    group.attrs[ATTR] = header
    with pytest.raises(CacheError, match=r"store: the cache header is damaged .*encoders.* Fix: re-extract"):
        Cache.open(tmp_path / "store")
    r = runner.invoke(app, ["info", str(tmp_path / "store")])
    assert r.exit_code == 2 and "header is damaged" in r.output


# --- a shared store is data only: its header and zarr.json decide nothing absurd -----------------------------------

def _edit_json(path, edit) -> None:
    import json
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def _edit_header(store, edit) -> None:
    from egmf.cache.header import ATTR
    _edit_json(store / "zarr.json", lambda d: edit(d["attributes"][ATTR]))


def _rows(store, n) -> None:
    """Header and every array's zarr.json agree on n rows: only the size itself is absurd."""
    _edit_header(store, lambda h: h.update(n_rows=n))
    for meta in store.rglob("zarr.json"):
        _edit_json(meta, lambda d: d.get("shape") and d["shape"].__setitem__(0, n))


def _steps(store, steps, dim) -> None:
    _edit_header(store, lambda h: h["encoders"]["audio"].update(max_steps=steps, dim=dim))
    _edit_json(store / "audio" / "features" / "zarr.json", lambda d: d["shape"].__setitem__(slice(1, 3), [steps, dim]))


def _chunk(store, rows) -> None:
    _edit_json(store / "audio" / "features" / "zarr.json",
               lambda d: d["chunk_grid"]["configuration"]["chunk_shape"].__setitem__(0, rows))


@pytest.mark.parametrize("craft, message", [
    (lambda s: _rows(s, 10**12), "the cache header declares 1000000000000 rows (at most 100,000,000)"),
    (lambda s: _rows(s, -5), "the cache header declares -5 rows"),
    (lambda s: _edit_header(s, lambda h: h.update(n_rows="12")), "the cache header declares '12' rows"),
    (lambda s: _steps(s, 10**6, 10**5), "audio features of 1000000 x 100000 (190734 MiB a row, at most 256)"),
    (lambda s: _edit_header(s, lambda h: h.update(rows_per_shard=10**8)), "shards of 100000000 x 6 x 4"),
    (lambda s: _edit_json(s / "meta" / "id" / "zarr.json", lambda d: d.update(shape=[10**9])),
     "meta/id is (1000000000,) StringDType(), the header implies (10,) str"),
    (lambda s: _edit_json(s / "done" / "zarr.json", lambda d: d.update(data_type="float64", fill_value=0.0)),
     "done is (10,) float64, the header implies (10,) bool"),
    (lambda s: _chunk(s, 10**9), "audio/features declares chunks of (1000000000, 6, 4), larger than its rows allow"),
    (lambda s: __import__("shutil").rmtree(s / "text" / "lengths"), "no readable array text/lengths"),
    (lambda s: (s / "done" / "zarr.json").write_text("{not json"), "no readable array done (JSONDecodeError"),
])
def test_a_store_declaring_absurd_or_inconsistent_sizes_is_refused_before_any_allocation(tmp_path, craft, message):
    import tracemalloc

    store = tmp_path / "shared"
    sc.write(store, n=10)
    craft(store)
    tracemalloc.start()
    try:
        with pytest.raises(CacheError) as refused:
            Cache.open(store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message in str(refused.value) and str(store) in str(refused.value) and "Fix:" in str(refused.value)
    assert peak < 8 << 20  # the metadata only: nothing of the declared sizes
    with pytest.raises(CacheError, match="Fix:"):
        CacheWriter.open(store)  # what verify --repair and extraction workers open
    r = runner.invoke(app, ["info", str(store)])
    assert r.exit_code == 2 and message in r.output
