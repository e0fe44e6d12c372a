"""Features a corpus ships pre-extracted (CHERMA's per-sample .npy files), imported as they are.

They stand in for an encoder: same `.spec` and `.encode(batch)` as extract/encoders, where the batch holds
.npy paths. The spec names the release; its weights field is a digest of the files' names and sizes, so a store
made from another copy of the release is told apart.

Released sequences come zero-padded to a fixed length with no lengths beside them (CHERMA's text features): the
trailing all-zero rows are taken for padding and dropped before pooling, so the cache's length is the real one
and the padding is never averaged into the features. A real encoder output is never exactly zero in every
dimension; a file of zeros only holds nothing, and its row is recorded as missing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..cache.schema import EncoderSpec, digest
from .encoders import POOLING, pool_steps
from .records import DatasetError


def load_npy(path: Path) -> np.ndarray:
    """(T, D) float32 from a .npy holding a vector (D,) or a sequence (T, D)."""
    x = np.load(path, allow_pickle=False).astype(np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{path}: a feature file must hold a (D,) vector or a (T, D) sequence, not {x.shape}")
    return x


def without_padding(x: np.ndarray) -> np.ndarray:
    """(T, D) -> (t, D), t = 1 + the last row with a non-zero value (0 when every row is zero)."""
    filled = np.flatnonzero(np.any(x != 0, axis=1))  # (n,) rows that hold something
    return x[: filled[-1] + 1] if len(filled) else x[:0]


class ReleasedFeatures:
    def __init__(self, dataset: str, modality: str, paths: list[Path], max_steps: int):
        present = [Path(p) for p in paths if Path(p).is_file()]  # a missing file is a missing row, reported later
        if not present:
            raise DatasetError(paths[0], f"no {modality} feature file of the {len(paths)} the corpus lists exists "
                                         "(this is the first)",
                               f"put the release's {modality} .npy files in {Path(paths[0]).parent}, or leave "
                               f"{modality} out with --modalities")
        first = load_npy(present[0])  # the shape of every row: (T, D)
        fingerprint = digest(sorted((p.name, p.stat().st_size) for p in present))
        self.max_steps = max_steps if first.shape[0] > 1 else 1
        self.spec = EncoderSpec(modality, "released", f"{dataset} release", fingerprint, first.shape[1],
                                self.max_steps, {"pooling": POOLING, "padding": "trailing all-zero rows dropped"})

    def encode(self, batch: list) -> list:
        """Per path the pooled (t, D) features, None for a file of padding only."""
        out = []
        for path in batch:
            x = torch.from_numpy(without_padding(load_npy(path)))  # (t, D)
            out.append(pool_steps(x, self.max_steps).numpy() if len(x) else None)
        return out
