"""The shard reader (egmf.cache.shards): the same rows as zarr's own decoding for any selection, damaged bytes an
error naming the store, and stores of the older zstd layout still read."""
from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

import synthetic_cache as sc
from egmf.cache import writer
from egmf.cache.inspect import verify
from egmf.cache.reader import Cache
from egmf.cache.schema import CacheError
from egmf.cache.shards import read_rows, shard_layout

N, SHARD = 70, 32  # three shards, the last one partial; 16-row chunks, two per shard


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    url = tmp_path_factory.mktemp("shards") / "s"
    sc.write(url, n=N, rows_per_shard=SHARD)
    return url


SELECTIONS = {
    "all": np.arange(N),
    "one run across shards": np.arange(10, 60),
    "whole chunks": np.arange(16, 48),
    "unsorted with repeats": np.array([69, 3, 3, 40, 0, 65, 17, 40, 31, 32]),
    "last partial shard": np.arange(64, 70),
    "every fifth (no audio)": np.arange(4, N, 5),
    "none": np.array([], dtype=np.int64),
}


@pytest.mark.parametrize("name", SELECTIONS)
@pytest.mark.parametrize("workers", [1, 2])
def test_any_selection_reads_what_zarr_decodes(store, name, workers):
    rows = SELECTIONS[name]
    group = zarr.open_group(str(store), mode="r")
    for m in ("audio", "visual", "text"):
        arr = group[f"{m}/features"]
        layout = shard_layout(arr)
        assert layout is not None and (layout.rows_per_shard, layout.rows_per_chunk) == (SHARD, 16)
        out = np.full((len(rows), *arr.shape[1:]), np.nan, arr.dtype)
        read_rows(arr, layout, rows, out, workers)
        np.testing.assert_array_equal(out, arr[:][rows])


def test_rows_without_a_modality_read_as_zeros_from_chunks_never_stored(tmp_path):
    url = tmp_path / "s"
    meta, labels = sc.rows(32)
    w = writer.CacheWriter.create(url, sc.spec(), sc.encoders(("audio",)), meta, labels, rows_per_shard=32)
    w.write_block(0, {"audio": [None] * 16 + [np.ones((2, 4))] * 16})  # the first chunk is all zeros
    features, lengths = Cache.open(url).features("audio")
    assert (features[:16] == 0).all() and (lengths[:16] == 0).all()
    assert (features[16:, :2] == 1).all() and (features[16:, 2:] == 0).all()


def _flip_byte(store, modality: str, shard: int, at: int):
    path = store / modality / "features" / "c" / str(shard) / "0" / "0"
    data = bytearray(path.read_bytes())
    data[at if at >= 0 else len(data) + at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where, at", [("a chunk's data", 100), ("the shard index", -10)])
def test_a_flipped_byte_is_an_error_naming_store_and_rows_never_garbage(tmp_path, where, at):
    url = tmp_path / "s"
    sc.write(url, n=N, rows_per_shard=SHARD)
    _flip_byte(url, "visual", 1, at)
    cache = Cache.open(url)
    with pytest.raises(CacheError, match=rf"{url}: visual features of rows .*shard 1 \(rows 32\.\.63\).*"
                                         r"crc32c.*Fix: run `egmf-cache verify --repair"):
        cache.features("visual")
    cache.features("visual", np.arange(32))  # the undamaged shard still reads
    assert verify(cache, progress=False).failed_blocks == [(32, 64)]


def test_a_store_of_the_zstd_layout_reads_the_same_features(tmp_path, monkeypatch):
    new = tmp_path / "blosc"
    sc.write(new, n=N, rows_per_shard=SHARD)
    old = tmp_path / "zstd"
    monkeypatch.setattr(writer, "FEATURE_CODECS", ZstdCodec(level=3, checksum=True))
    sc.write(old, n=N, rows_per_shard=SHARD)
    assert shard_layout(zarr.open_group(str(old), mode="r")["text/features"]) is None
    rows = SELECTIONS["unsorted with repeats"]
    for m in ("audio", "visual", "text"):
        np.testing.assert_array_equal(Cache.open(old).features(m, rows)[0], Cache.open(new).features(m, rows)[0])
