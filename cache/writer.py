"""Writing a store: create (or reopen to resume), then write whole shard-aligned blocks of rows.

A block is the S rows of one shard. Every array of a block is written before its rows are marked done, so a run
killed at any moment leaves each block either done (complete) or not done (rewritten whole by the next run):
resuming gives the same store as an uninterrupted run. Distinct blocks touch distinct files, so any number of
processes can write distinct blocks of one store at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from zarr.core.sync import sync

from .header import ATTR, Header, ids_digest, read_header
from .layout import FEATURE_CODECS, META_COLUMNS, OPTIONAL_META, open_group, shard_blocks
from .schema import MODALITIES, CacheError, DatasetSpec, EncoderSpec

# Rows per compressed chunk inside a shard. One chunk per row made a full scan decode 49k chunks for a MOSEI-sized
# split (3.4k chunks/s: 14.5 s against 0.3 s for .npy); 16 rows cut that 16-fold, and stage two reads whole
# splits, while a single row still costs only one 16-row chunk. With blosc lz4, 16 rows decode as fast per byte
# as 64 (cache.shards decodes every chunk of a shard in one pass).
ROWS_PER_CHUNK = 16
FIT = ("Fix: write into another store (--out NEW_PATH), or delete {url} to start over with these settings")


@dataclass
class CacheWriter:
    url: str
    header: Header
    storage_options: dict | None = None

    @classmethod
    def create(cls, url, dataset: DatasetSpec, encoders: dict[str, EncoderSpec], meta: dict[str, list],
               labels: dict[str, list], rows_per_shard: int = 64,
               storage_options: dict | None = None) -> "CacheWriter":
        """Create a store for these rows, or reopen an existing one made with the same content fingerprint."""
        url = str(url)
        n = len(meta["id"])
        missing = [c for c in META_COLUMNS if c not in meta and c not in OPTIONAL_META]
        if missing:
            raise ValueError(f"meta columns missing: {missing}")
        if len(set(meta["id"])) != n:
            raise CacheError(f"{url}: row ids are not unique; a store needs one row per utterance id")
        header = Header(dataset, dict(encoders), n, rows_per_shard, ids_digest(meta["id"]))
        existing = _existing_header(url, storage_options)
        if existing is not None:
            diff = header.differences(existing)
            if diff:
                raise CacheError(f"{url} already holds a cache made differently: " + "; ".join(diff)
                                 + ". " + FIT.format(url=url))
            return cls(url, existing, storage_options)
        _create_arrays(url, header, meta, labels, storage_options)
        return cls(url, header, storage_options)

    @classmethod
    def open(cls, url, storage_options: dict | None = None) -> "CacheWriter":
        """Reopen an existing store for writing (e.g. in a worker process)."""
        header = _existing_header(str(url), storage_options)
        if header is None:
            raise CacheError(f"{url}: no cache there to write into. Fix: create it first (egmf-extract does)")
        return cls(str(url), header, storage_options)

    def _group(self, mode="r+"):
        return open_group(self.url, mode, self.storage_options)

    def blocks(self) -> list[tuple[int, int]]:
        return shard_blocks(self.header.n_rows, self.header.rows_per_shard)

    def done(self) -> np.ndarray:
        return self._group("r")["done"][:]

    def pending_blocks(self) -> list[tuple[int, int]]:
        done = self.done()
        return [(a, b) for a, b in self.blocks() if not done[a:b].all()]

    def write_block(self, start: int, features: dict[str, list], problems: dict[str, list] | None = None) -> None:
        """Write rows start.. of one block: per modality a list with one (T_i, D) array or None (missing) per row.

        problems gives, per modality, the reason a row's modality is missing ("" when fine); rows with None
        and no reason are recorded as "not extracted".
        """
        h = self.header
        if start % h.rows_per_shard:
            raise ValueError(f"block start {start} is not a multiple of rows_per_shard {h.rows_per_shard}")
        stop = min(start + h.rows_per_shard, h.n_rows)
        if set(features) != set(h.encoders):
            raise CacheError(f"{self.url}: a block must hold every modality of the store {sorted(h.encoders)}, "
                             f"got {sorted(features)}")
        g = self._group()
        ids = g["meta/id"][start:stop]
        packed = {m: _pack(self.url, m, h.encoders[m], ids, rows, (problems or {}).get(m))
                  for m, rows in features.items()}
        for m, (feats, lengths, reasons) in packed.items():
            arr = g[f"{m}/features"]
            _drop_shard(arr, start // h.rows_per_shard)
            arr[start:stop] = feats
            g[f"{m}/lengths"][start:stop] = lengths
            g[f"{m}/problem"][start:stop] = reasons
        g["done"][start:stop] = True

    def invalidate(self, blocks: list[tuple[int, int]]) -> None:
        """Mark blocks not done so the next extraction run rewrites them (used to repair damaged shards)."""
        done = self._group()["done"]
        for a, b in blocks:
            done[a:b] = False


def _drop_shard(arr, shard: int) -> None:
    """Remove a shard before rewriting it: zarr merges new rows into an existing shard, so a damaged one
    (a killed write, a truncated file) would otherwise make its own repair fail."""
    key = arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
    sync(arr.store.delete(f"{arr.path}/{key}"))


def _pack(url, modality: str, enc: EncoderSpec, ids, rows: list, reasons: list | None):
    n = len(ids)
    if len(rows) != n:
        raise ValueError(f"{modality}: {len(rows)} arrays for a block of {n} rows")
    feats = np.zeros((n, enc.max_steps, enc.dim), np.float16)  # (S, T, D)
    lengths = np.zeros(n, np.int32)
    out_reasons = np.array([(reasons[i] if reasons else "") or "" for i in range(n)], dtype=object)
    for i, x in enumerate(rows):
        if x is None:
            out_reasons[i] = out_reasons[i] or "not extracted"
            continue
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != enc.dim or not 1 <= x.shape[0] <= enc.max_steps:
            raise CacheError(f"{url}: clip {ids[i]}: {modality} features of shape {x.shape}, the store holds "
                             f"(1..{enc.max_steps}, {enc.dim}). Fix: extract with the store's encoder settings")
        if not np.isfinite(x).all():
            raise CacheError(f"{url}: clip {ids[i]}: {modality} features contain NaN or infinite values; "
                             "nothing of its block was written. Fix: check the clip and the encoder (fp16 overflow?)")
        if np.abs(x).max(initial=0) > np.finfo(np.float16).max:
            raise CacheError(f"{url}: clip {ids[i]}: {modality} features exceed the float16 range. "
                             "Fix: normalise the encoder output")
        feats[i, : len(x)] = x
        lengths[i] = len(x)
        out_reasons[i] = ""
    return feats, lengths, out_reasons.astype(str)


def _existing_header(url: str, storage_options) -> Header | None:
    try:
        g = open_group(url, "r", storage_options)
    except CacheError:
        return None
    if ATTR not in g.attrs and set(g.keys()) <= {"meta", "labels", "done", *MODALITIES}:
        return None  # an interrupted create: made again from scratch
    return read_header(g, url)


def _create_arrays(url, h: Header, meta: dict, labels: dict, storage_options):
    g = open_group(url, "w", storage_options)
    n, s = h.n_rows, h.rows_per_shard
    for col in META_COLUMNS:
        column = meta[col] if col in meta else [OPTIONAL_META[col]] * n
        values = np.asarray(column, dtype=np.int32 if col == "turn" else str)
        g.create_array(f"meta/{col}", shape=(n,), dtype=values.dtype if col == "turn" else str,
                       chunks=(max(n, 1),))[:] = values
    for spec in h.dataset.labels:
        col = labels[spec.name]
        if spec.kind == "class":
            values = np.array([-1 if v is None else int(v) for v in col], np.int16)
        else:
            values = np.array([np.nan if v is None else float(v) for v in col], np.float32)
        g.create_array(f"labels/{spec.name}", shape=(n,), dtype=values.dtype, chunks=(max(n, 1),))[:] = values
    for m, enc in h.encoders.items():
        g.create_array(f"{m}/features", shape=(n, enc.max_steps, enc.dim), dtype="float16",
                       chunks=(math.gcd(s, ROWS_PER_CHUNK), enc.max_steps, enc.dim), shards=(s, enc.max_steps, enc.dim),
                       compressors=FEATURE_CODECS, fill_value=0)
        g.create_array(f"{m}/lengths", shape=(n,), dtype="int32", chunks=(s,), fill_value=0)
        g.create_array(f"{m}/problem", shape=(n,), dtype=str, chunks=(s,))
    g.create_array("done", shape=(n,), dtype=bool, chunks=(s,), fill_value=False)
    # The header goes last: a store without it is an interrupted create, recreated from scratch next time.
    g.attrs[ATTR] = h.to_json()
