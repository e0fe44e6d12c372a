"""Reading rows of a feature array shard by shard, decoded straight into the caller's array, several shards at once.

zarr 3.1 reads a sharded array through its asyncio codec pipeline at about 1.3 GB/s on a 2-core machine even
without compression (a copy per codec step, then a gather into the result), a fifth of a memory copy. The
feature arrays' layout (cache.layout.FEATURE_CODECS) is simple enough to decode here, by the zarr v3 sharding
specification: one read per shard; the shard index checked against its crc32c; each inner chunk checked against
its crc32c, then decompressed by blosc into its rows of the output, or into a scratch chunk when only some of its
rows are wanted. Shards decode on a thread pool: file reads and blosc release the GIL. A damaged shard is an
error, never garbage. Arrays with any other codecs (stores written before this layout) are read by zarr itself.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import google_crc32c
import numcodecs
import numpy as np
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

EMPTY = 2**64 - 1  # offset and length of an inner chunk that was never stored (all fill value)


_scratch = threading.local()  # per thread: the buffer a shard's file is read into


class ShardError(ValueError):
    """A shard that cannot be decoded; the message names the shard and its rows."""


@dataclass(frozen=True)
class ShardLayout:
    rows_per_shard: int  # S
    rows_per_chunk: int  # C: rows of one inner chunk
    blosc: numcodecs.Blosc

    @property
    def chunks_per_shard(self) -> int:
        return -(-self.rows_per_shard // self.rows_per_chunk)


def shard_layout(arr) -> ShardLayout | None:
    """The layout when arr is sharded along rows only, with blosc + crc32c inner chunks and a crc32c index at
    the end, filled with zeros; None for any other array (zarr reads those)."""
    codecs = arr.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    inner, index = sharding.codecs, sharding.index_codecs
    shard_shape = arr.metadata.chunk_grid.chunk_shape
    fits = (sharding.index_location.value == "end" and arr.fill_value == 0
            and [type(c) for c in inner] == [BytesCodec, BloscCodec, Crc32cCodec]
            and [type(c) for c in index] == [BytesCodec, Crc32cCodec]
            and getattr(inner[0].endian, "value", "little") == "little" and arr.dtype.byteorder in "<=|"
            and tuple(shard_shape[1:]) == tuple(arr.shape[1:]) == tuple(sharding.chunk_shape[1:]))
    if not fits:
        return None
    return ShardLayout(shard_shape[0], sharding.chunk_shape[0], inner[1]._blosc_codec)


def read_rows(arr, layout: ShardLayout, rows: np.ndarray, out: np.ndarray, workers: int | None = None) -> None:
    """out[i] = arr[rows[i]] for every i; rows in any order, repeats allowed; out C-contiguous (n, *row shape)."""
    if len(rows) == 0:
        return
    shard_of = rows // layout.rows_per_shard
    order = np.argsort(shard_of, kind="stable")  # positions in out, grouped by shard, increasing within each
    starts = np.flatnonzero(np.diff(shard_of[order], prepend=-1))
    groups = np.split(order, starts[1:])
    workers = min(len(groups), workers or len(os.sched_getaffinity(0)))
    read = lambda positions: _read_shard(arr, layout, int(shard_of[positions[0]]), rows[positions], positions, out)
    if workers <= 1:
        for positions in groups:
            read(positions)
        return
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(read, groups))  # list(): the first error is raised here


def _read_shard(arr, layout: ShardLayout, shard: int, rows: np.ndarray, positions: np.ndarray,
                out: np.ndarray) -> None:
    s, c = layout.rows_per_shard, layout.rows_per_chunk
    where = f"shard {shard} (rows {shard * s}..{min((shard + 1) * s, arr.shape[0]) - 1})"
    key = "/".join(filter(None, (arr.path, arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1)))))
    data = _get(arr.store, key)  # uint8, the whole shard
    if data is None:  # never stored: every row is fill value
        out[positions] = 0
        return
    offsets = _index(data, layout.chunks_per_shard, where)  # (chunks, 2) offset, length
    chunk_bytes = c * int(np.prod(arr.shape[1:])) * arr.dtype.itemsize
    chunk_of = (rows - shard * s) // c
    bounds = np.flatnonzero(np.diff(chunk_of, prepend=-1))
    for a, b in zip(bounds, [*bounds[1:], len(rows)]):
        k = int(chunk_of[a])
        local, dest = rows[a:b] - shard * s - k * c, positions[a:b]  # rows within the chunk, positions in out
        start, length = (int(v) for v in offsets[k])
        if (start, length) == (EMPTY, EMPTY):
            out[dest] = 0
            continue
        blob = _checked_chunk(data, start, length, len(data) - 16 * layout.chunks_per_shard - 4, k, where)
        # blosc's 16-byte header holds the decompressed size at bytes 4..8
        if len(blob) < 16 or int.from_bytes(blob[4:8].tobytes(), "little") != chunk_bytes:
            raise ShardError(f"{where}: inner chunk {k} does not decompress to {chunk_bytes} bytes")
        whole = len(local) == c and dest[-1] - dest[0] == c - 1 and (local == np.arange(c)).all()
        if whole:  # the chunk's rows are consecutive in out: decompress in place
            layout.blosc.decode(blob, out=out[dest[0]: dest[0] + c])
        else:
            scratch = np.empty((c, *arr.shape[1:]), arr.dtype)
            layout.blosc.decode(blob, out=scratch)
            out[dest] = scratch[local]


def _get(store, key: str) -> np.ndarray | None:
    """The bytes under key, None when absent. A local file is read by this thread: through zarr's event loop a
    read costs several milliseconds of hand-offs, more than decoding it."""
    if isinstance(store, LocalStore):
        try:
            with open(store.root / key, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                if len(getattr(_scratch, "buffer", ())) < size:
                    _scratch.buffer = np.empty(size, np.uint8)
                data = _scratch.buffer[:size]  # reused: fresh memory would cost a page fault per page read
                if f.readinto(memoryview(data)) != size:
                    raise ShardError(f"{key}: the file changed while it was read")
                return data
        except FileNotFoundError:
            return None
    buffer = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if buffer is None else buffer.as_numpy_array()


def _index(data: np.ndarray, n_chunks: int, where: str) -> np.ndarray:
    size = 16 * n_chunks + 4
    if len(data) < size:
        raise ShardError(f"{where}: {len(data)} bytes, shorter than its index")
    index, stored = data[-size:-4], data[-4:]
    if np.uint32(google_crc32c.value(index.tobytes())).tobytes() != stored.tobytes():
        raise ShardError(f"{where}: its index fails its crc32c checksum (truncated or damaged)")
    return np.frombuffer(index.tobytes(), "<u8").reshape(n_chunks, 2)


def _checked_chunk(data: np.ndarray, start: int, length: int, end: int, k: int, where: str) -> np.ndarray:
    if length < 4 or start + length > end:
        raise ShardError(f"{where}: inner chunk {k} lies outside the shard")
    blob, stored = data[start: start + length - 4], data[start + length - 4: start + length]
    if np.uint32(google_crc32c.value(blob)).tobytes() != stored.tobytes():
        raise ShardError(f"{where}: inner chunk {k} fails its crc32c checksum (damaged)")
    return blob
