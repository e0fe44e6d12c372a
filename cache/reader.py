"""Reading a store for stage two: metadata, labels and features, in RAM when they fit, lazily when not."""
from __future__ import annotations

import contextlib
import functools
import os

import dask.array as da
import numpy as np

from .header import read_header
from .layout import META_COLUMNS, OPTIONAL_META, open_group
from .schema import CacheError
from .shards import read_rows as read_shard_rows
from .shards import shard_layout

# Stores of an older layout (zstd, read by zarr): at most this many decoded bytes per request, large enough for
# zarr to fetch whole shards concurrently, small enough that a scattered selection never holds much more than
# it returns.
READ_SPAN_BYTES = 256 << 20


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


class Cache:
    """A store opened read-only, from a local path or any fsspec URL (http://, s3://, ...)."""

    def __init__(self, url, storage_options: dict | None = None):
        self.url, self.storage_options = str(url), storage_options
        self.group = open_group(self.url, "r", storage_options)
        self.header = read_header(self.group, self.url)

    @classmethod
    def open(cls, url, storage_options: dict | None = None) -> "Cache":
        return cls(url, storage_options)

    @property
    def dataset(self):
        return self.header.dataset

    @property
    def encoders(self):
        return self.header.encoders

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.header.modalities

    @property
    def fingerprint(self) -> str:
        return self.header.fingerprint

    @property
    def features_fingerprint(self) -> str:
        return self.header.features_fingerprint

    @property
    def n_rows(self) -> int:
        return self.header.n_rows

    @functools.cached_property
    def meta(self) -> dict[str, np.ndarray]:
        return {c: self._meta_column(c) for c in META_COLUMNS}

    def _meta_column(self, column: str) -> np.ndarray:
        try:
            return self.group[f"meta/{column}"][:]
        except KeyError:
            if column not in OPTIONAL_META:
                raise
            return np.full(self.n_rows, OPTIONAL_META[column], dtype=np.dtypes.StringDType())

    @functools.cached_property
    def labels(self) -> dict[str, np.ndarray]:
        return {s.name: self.group[f"labels/{s.name}"][:] for s in self.dataset.labels}

    @property
    def done(self) -> np.ndarray:
        return self.group["done"][:]

    def rows(self, split: str | None = None) -> np.ndarray:
        """Indices of the complete rows, of one split or of all."""
        keep = self.done
        if split is not None:
            keep = keep & (self.meta["split"] == split)
        return np.flatnonzero(keep)

    def lengths(self, modality: str) -> np.ndarray:
        return self.group[f"{modality}/lengths"][:]

    def problems(self, modality: str) -> np.ndarray:
        return self.group[f"{modality}/problem"][:]

    def nbytes(self, modality: str, n_rows: int) -> int:
        enc = self.encoders[modality]
        return n_rows * enc.max_steps * enc.dim * 2

    def features(self, modality: str, rows=None, lazy: bool | None = None):
        """(features (n, T, D) float16, lengths (n,) int32) of the given rows (default: all complete rows).

        lazy=None decides by size: in RAM when the selection takes under half the available memory, otherwise a
        dask array over the shards (each read when computed).
        """
        self._check_modality(modality)
        rows = self.rows() if rows is None else np.asarray(rows, dtype=np.int64)
        lengths = self.lengths(modality)[rows]
        arr = self.group[f"{modality}/features"]
        if lazy is None:
            lazy = self.nbytes(modality, len(rows)) > available_memory() // 2
        if lazy:
            return da.from_zarr(arr, chunks=(self.header.rows_per_shard, *arr.shape[1:]))[rows], lengths
        return self._read_rows(arr, modality, rows), lengths

    def _read_rows(self, arr, modality, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *arr.shape[1:]), arr.dtype)  # (n, T, D)
        layout = shard_layout(arr)
        if layout is not None:  # this layout is decoded by cache.shards straight into out, shards in parallel
            with self._read_errors(modality, f"rows {rows.min()}..{rows.max()}" if len(rows) else "no rows"):
                read_shard_rows(arr, layout, rows, out)
            return out
        if len(rows) and (np.diff(rows) == 1).all():
            # A split is usually one run of rows: read it straight, with no gather through index arrays.
            return self._read_span(arr, modality, int(rows[0]), int(rows[-1]) + 1)
        if len(rows) == 0:
            return out
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        s = self.header.rows_per_shard
        span_rows = max(s, READ_SPAN_BYTES // max(1, arr.nbytes // max(1, arr.shape[0])) // s * s)
        i = 0
        while i < len(sorted_rows):
            lo = sorted_rows[i] // s * s
            j = np.searchsorted(sorted_rows, lo + span_rows)
            hi = min((sorted_rows[j - 1] // s + 1) * s, arr.shape[0])  # up to the shard of the last row wanted
            # One request per span of whole shards: zarr fetches and decodes its shards concurrently.
            block = self._read_span(arr, modality, lo, hi)
            out[order[i:j]] = block[sorted_rows[i:j] - lo]
            i = j
        return out

    def _read_span(self, arr, modality, lo: int, hi: int) -> np.ndarray:
        with self._read_errors(modality, f"rows {lo}..{hi - 1}"):
            return arr[lo:hi]

    @contextlib.contextmanager
    def _read_errors(self, modality: str, rows: str):
        try:
            yield
        except Exception as e:
            raise CacheError(
                f"{self.url}: {modality} features of {rows} cannot be read ({type(e).__name__}: {e}). Fix: run "
                f"`egmf-cache verify --repair {self.url}` and re-run egmf-extract to rewrite the damaged shards"
            ) from None

    def _check_modality(self, modality):
        if modality not in self.encoders:
            raise CacheError(f"{self.url} has no {modality} features (it has {', '.join(self.modalities)}). "
                             "Fix: choose --modalities among those, or extract that modality")

    def split_counts(self) -> dict[str, int]:
        splits, counts = np.unique(self.meta["split"][self.done], return_counts=True)
        return dict(zip(splits.tolist(), counts.tolist()))
