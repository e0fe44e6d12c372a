"""Where things live inside a store, and opening one from a path or any fsspec URL.

    <store>/            group; attrs["egmf"] = the header (schema, dataset, encoders, fingerprints)
      meta/<col>        (N,) id, split, text, language, dialogue (str), turn (int32), speaker (str, "" = unnamed;
                        absent from stores written before 2026-11-30, read as "" for every row)
      labels/<name>     (N,) int16 class id (-1 = none) or float32 score (NaN = none)
      <modality>/features  (N, T, D) float16, zero-padded; chunk (16, T, D) in shards of (S, T, D), blosc lz4 +
                           crc32c (stores written before 2026-11-29: zstd; zarr reads either)
      <modality>/lengths   (N,) int32, 0 = modality missing for that row
      <modality>/problem   (N,) str, why the modality is missing ("" = fine)
      done              (N,) bool, chunk (S,): a block of S rows is marked done after all its arrays are written
"""
from __future__ import annotations

import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from .schema import CacheError

META_COLUMNS = ("id", "split", "text", "language", "dialogue", "turn", "speaker")
# Columns added after stores were shared: a store without one reads as this value on every row, so teams' older
# caches keep working; the writer always writes them.
OPTIONAL_META = {"speaker": ""}
OPTIONAL_PATHS = {f"meta/{c}" for c in OPTIONAL_META}
# Chosen by egmf-bench's benchmark 2 (MOSEI-sized features, 16-row chunks, one core): blosc's lz4 without
# shuffle decoded 4.2x faster than zstd level 3 (84% of a memory copy's speed) for output 9% larger (padding is
# what compresses; float16 features barely do); byte shuffle halved lz4's speed for no gain in size. blosc has
# no checksum of its own, so crc32c turns a damaged chunk into a decode error instead of silent garbage.
# cache.shards decodes this chain itself.
FEATURE_CODECS = (BloscCodec(typesize=2, cname="lz4", clevel=5, shuffle="noshuffle", blocksize=0), Crc32cCodec())


def is_url(url) -> bool:
    """A store behind an fsspec URL (s3://, http://, memory://), as opposed to a local path."""
    return "://" in str(url)


def shard_blocks(n_rows: int, rows_per_shard: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard's rows: the unit of writing, of resume and of verifying."""
    return [(a, min(a + rows_per_shard, n_rows)) for a in range(0, n_rows, rows_per_shard)]


def storage_options_for(url: str, storage_options: dict | None) -> dict | None:
    """fsspec options only make sense for URLs; a local path takes none."""
    return storage_options if is_url(url) else None


def open_group(url, mode: str, storage_options: dict | None = None) -> zarr.Group:
    url = str(url)
    try:
        return zarr.open_group(store=url, mode=mode, storage_options=storage_options_for(url, storage_options))
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as e:
        raise CacheError(
            f"{url}: not a feature cache ({type(e).__name__}: {e}). "
            "Fix: pass the folder or URL that egmf-extract / egmf-cache import-mmsa wrote") from None


def expected_arrays(header) -> dict[str, tuple[tuple[int, ...], str]]:
    """path -> (shape, dtype) of every array the header implies ("str" for text)."""
    n = header.n_rows
    out = {f"meta/{c}": ((n,), "int32" if c == "turn" else "str") for c in META_COLUMNS}
    out |= {f"labels/{s.name}": ((n,), "int16" if s.kind == "class" else "float32") for s in header.dataset.labels}
    for m, enc in header.encoders.items():
        out |= {f"{m}/features": ((n, enc.max_steps, enc.dim), "float16"), f"{m}/lengths": ((n,), "int32"),
                f"{m}/problem": ((n,), "str")}
    return out | {"done": ((n,), "bool")}


def check_arrays(group: zarr.Group, header, url: str) -> None:
    """Every array the header implies exists with the header's shape, dtype and a chunk grid no larger than a
    shard: reading a chunk allocates its whole declared shape, so a crafted zarr.json must not choose it."""
    problems = []
    for path, (shape, dtype) in expected_arrays(header).items():
        try:
            arr = group[path]  # by name, no listing: a plain HTTP server cannot list a folder
        except (KeyError, ValueError, TypeError, zarr.errors.BaseZarrError) as e:  # absent, or its zarr.json bad
            if not (isinstance(e, KeyError) and path in OPTIONAL_PATHS):
                problems.append(f"no readable array {path} ({type(e).__name__}: {e})")
            continue
        if not isinstance(arr, zarr.Array):
            problems.append(f"{path} is a group, not an array")
            continue
        kind_ok = arr.dtype.kind in "TUO" if dtype == "str" else arr.dtype == dtype
        if tuple(arr.shape) != shape or not kind_ok:
            problems.append(f"{path} is {tuple(arr.shape)} {arr.dtype}, the header implies {shape} {dtype}")
            continue
        limit = (max(shape[0], header.rows_per_shard), *shape[1:])  # the writer's chunks: a shard, or the column
        for grid in (arr.chunks, arr.shards or arr.chunks):
            if any(c > m for c, m in zip(grid, limit)):
                problems.append(f"{path} declares chunks of {tuple(grid)}, larger than its rows allow ({limit})")
                break
    if problems:
        raise CacheError(f"{url}: the arrays disagree with the cache header ({'; '.join(problems[:3])}"
                         f"{'; ...' if len(problems) > 3 else ''}). Fix: re-extract the store, or copy it again "
                         "from where it was made")
