"""What `egmf-cache info` and `egmf-cache verify` report about a store."""
from __future__ import annotations

from dataclasses import dataclass, field

import fsspec
import numpy as np
from tqdm import tqdm

from .layout import shard_blocks
from .reader import Cache


def store_size(url: str, storage_options: dict | None = None) -> int | None:
    """Bytes on disk (or in the bucket); None where the filesystem cannot list (plain HTTP)."""
    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        return int(fs.du(path, total=True))
    except (NotImplementedError, OSError, ValueError):
        return None


def speaker_counts(speakers) -> dict:
    """How many rows name their speaker, and how many speakers they name (egmf-train --speaker-names needs some)."""
    named = speakers[speakers != ""]
    return {"named_rows": int(len(named)), "distinct": int(len(set(named.tolist())))}


def info(cache: Cache) -> dict:
    h = cache.header
    done = cache.done
    return {
        "store": cache.url,
        "dataset": h.dataset.name,
        "adapter_version": h.dataset.adapter_version,
        "task": h.dataset.task,
        "labels": [{"name": s.name, "kind": s.kind, **({"classes": list(s.classes)} if s.classes else
                                                        {"range": [s.low, s.high]})} for s in h.dataset.labels],
        "rows": h.n_rows,
        "rows_not_done": int((~done).sum()),
        "rows_per_split": cache.split_counts(),
        "speakers": speaker_counts(cache.meta["speaker"]),
        "modalities": {m: {"shape": [h.n_rows, e.max_steps, e.dim], "family": e.family, "model": e.model_id,
                           "weights": e.weights, "params": e.params,
                           "missing_rows": int(((cache.lengths(m) == 0) & done).sum())}
                       for m, e in h.encoders.items()},
        "fingerprint": h.fingerprint,
        "features_fingerprint": h.features_fingerprint,
        "schema_version": h.schema_version,
        "created": h.created,
        "egmf_version": h.egmf_version,
        "size_bytes": store_size(cache.url, cache.storage_options),
    }


@dataclass
class Failure:
    rows: tuple[int, int]  # [start, stop) of the block
    modality: str
    reason: str


@dataclass
class VerifyReport:
    checked_rows: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failed_blocks(self) -> list[tuple[int, int]]:
        return sorted({f.rows for f in self.failures})


def verify(cache: Cache, progress: bool = True) -> VerifyReport:
    """Read every done row: decodable, finite, lengths within bounds, zero beyond each length."""
    report = VerifyReport()
    done = cache.done
    blocks = [(a, b) for a, b in shard_blocks(cache.n_rows, cache.header.rows_per_shard) if done[a:b].any()]
    all_lengths = {m: cache.lengths(m) for m in cache.encoders}
    for a, b in tqdm(blocks, desc="verify", unit="shard", disable=not progress):
        rows = np.arange(a, b)[done[a:b]]
        report.checked_rows += len(rows)
        for m, enc in cache.encoders.items():
            lengths = all_lengths[m][a:b][done[a:b]]
            try:
                feats = cache.group[f"{m}/features"][a:b][done[a:b]]
            except Exception as e:
                report.failures.append(Failure((a, b), m, f"cannot decode ({type(e).__name__}: {e})"))
                continue
            if ((lengths < 0) | (lengths > enc.max_steps)).any():
                report.failures.append(Failure((a, b), m, f"lengths outside 0..{enc.max_steps}"))
            if not np.isfinite(feats).all():
                report.failures.append(Failure((a, b), m, "NaN or infinite values"))
            beyond = np.arange(enc.max_steps)[None, :] >= lengths[:, None]  # (n, T) padding steps
            if np.abs(feats[beyond]).max(initial=0) > 0:
                report.failures.append(Failure((a, b), m, "non-zero values beyond a row's length"))
    return report
