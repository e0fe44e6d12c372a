"""Import MMSA-style pre-extracted features (`aligned_50.pkl` / `unaligned_50.pkl`) into a feature cache.

The pickle holds {"train"|"valid"|"test": {"id", "raw_text", "audio" (n, T_a, D_a), "vision" (n, T_v, D_v),
"text" (n, T_t, D_t), "audio_lengths", "vision_lengths", "regression_labels"[, "regression_labels_T"/"_A"/"_V"]}}.
Aligned pickles carry no lengths. The pickle is read by an allow-list unpickler (safe_pickle.py): it comes from
drives the user does not control, and an ordinary pickle.load runs whatever code the file names.
"""
from __future__ import annotations

import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .safe_pickle import RefusedGlobal, load_data_only
from .schema import DatasetSpec, EncoderSpec, LabelSpec, file_sha256
from .writer import CacheWriter

ADAPTER_VERSION = "1"
SPLITS = {"train": "train", "valid": "dev", "test": "test"}
SOURCES = {"audio": "audio", "visual": "vision", "text": "text"}
# MOSI/MOSEI scores lie in [-3, 3], CH-SIMS (v1, v2) in [-1, 1].
RANGES = {"mosei": (-3.0, 3.0), "mosi": (-3.0, 3.0), "sims": (-1.0, 1.0), "sims-v2": (-1.0, 1.0)}
LANGUAGES = {"mosei": "en", "mosi": "en", "sims": "zh", "sims-v2": "zh"}


FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class ImportReport:
    rows: int
    # "<split>/<key>" of the pickle -> {"NaN" | "inf" | "-inf" | "beyond float16": values set to 0}, in the rows
    # written now; only arrays that had any.
    cleaned: dict[str, Counter]
    per_split: dict[str, int]


def _clean(x: np.ndarray, where: str, cleaned: dict[str, Counter]) -> None:
    """Zero, in place, the values the cache cannot hold, as MMSA's own loaders do, counting them per kind.

    Real MOSEI pickles hold NaN and values beyond float16 in the audio and vision arrays, and COVAREP audio uses
    -inf for silence (0 is MMSA's padding value). The writer refuses all of these, so that extraction bugs stay
    loud; an import of released features cleans them and says how many it cleaned."""
    kinds = {"NaN": np.isnan(x), "inf": np.isposinf(x), "-inf": np.isneginf(x)}
    with np.errstate(invalid="ignore"):
        kinds["beyond float16"] = np.isfinite(x) & (np.abs(x) > FLOAT16_MAX)
    for kind, mask in kinds.items():
        n = int(mask.sum())
        if n:
            cleaned.setdefault(where, Counter())[kind] += n
            x[mask] = 0.0


def _lengths(part: dict, modality: str, lo: int, hi: int, feats: np.ndarray) -> np.ndarray:
    """Lengths of rows lo..hi of one split, whose features are feats (n, T, D), already cleaned."""
    key = f"{SOURCES[modality]}_lengths"
    if key in part:
        return np.minimum(np.asarray(part[key][lo:hi], dtype=np.int64), feats.shape[1])
    # Aligned pickles carry no lengths: a row ends after its last non-zero step.
    nonzero = np.abs(feats).sum(-1) > 0  # (n, T)
    return np.where(nonzero.any(1), feats.shape[1] - np.argmax(nonzero[:, ::-1], axis=1), 0)


def _block(data: dict, modality: str, offsets: list[int], a: int, b: int,
           cleaned: dict[str, Counter]) -> tuple[np.ndarray, np.ndarray]:
    """Cleaned float32 features (b - a, T, D) and lengths of rows a..b, the splits' rows counted in SPLITS order.

    One block at a time: the import never holds a float32 copy of every split next to the loaded pickle."""
    feats, lengths = [], []
    for k, s in enumerate(SPLITS):
        lo, hi = max(a, offsets[k]) - offsets[k], min(b, offsets[k + 1]) - offsets[k]
        if lo < hi:
            # np.array copies: the cleaning changes the block, never the pickle's arrays.
            x = np.array(data[s][SOURCES[modality]][lo:hi], np.float32)  # (n, T, D)
            _clean(x, f"{s}/{SOURCES[modality]}", cleaned)
            feats.append(x)
            lengths.append(_lengths(data[s], modality, lo, hi, x))
    return np.concatenate(feats), np.concatenate(lengths)


def load_pickle(path: Path) -> dict:
    try:
        data = load_data_only(path)
    except RefusedGlobal as e:
        raise ValueError(str(e)) from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: cannot read the pickle ({type(e).__name__}: {e}). "
                         "Fix: pass MMSA's aligned_50.pkl or unaligned_50.pkl") from None
    missing = [s for s in SPLITS if s not in data] if isinstance(data, dict) else list(SPLITS)
    if missing:
        raise ValueError(f"{path}: not an MMSA feature pickle (no {missing} split). "
                         "Fix: pass MMSA's aligned_50.pkl or unaligned_50.pkl")
    for split in SPLITS:
        need = ["id", "raw_text", "regression_labels", *SOURCES.values()]
        absent = [k for k in need if k not in data[split]]
        if absent:
            raise ValueError(f"{path}: split '{split}' lacks {absent}. Fix: pass an MMSA feature pickle")
    return data


def import_mmsa(pkl: Path, out, dataset: str, rows_per_shard: int = 64,
                progress: bool = True, storage_options: dict | None = None) -> ImportReport:
    """Import pkl as the corpus named dataset. The name is never guessed: MOSI and MOSEI share the label range
    [-3, 3], and CH-SIMS v1 and v2 share [-1, 1]."""
    if dataset not in RANGES:
        raise ValueError(f"unknown dataset {dataset!r}. Fix: pass --dataset {' | '.join(RANGES)}, the corpus "
                         "the pickle holds")
    pkl = Path(pkl)
    data = load_pickle(pkl)
    low, high = RANGES[dataset]
    has_modal = all(f"regression_labels_{m}" in data[s] for s in SPLITS for m in "TAV")
    names = ["sentiment"] + ([f"sentiment_{m}" for m in "TAV"] if has_modal else [])
    spec = DatasetSpec(f"{dataset}-mmsa", ADAPTER_VERSION, "sentiment",
                       tuple(LabelSpec(n, "score", low=low, high=high) for n in names))
    weights = file_sha256(pkl)
    first = data["train"]
    encoders = {m: EncoderSpec(m, "mmsa-import", pkl.name, weights, dim=int(first[src].shape[2]),
                               max_steps=int(first[src].shape[1]), params={"source": pkl.stem})
                for m, src in SOURCES.items()}

    ids, texts, splits, labels = [], [], [], {n: [] for n in names}
    for s, split in SPLITS.items():
        part = data[s]
        ids += [str(i) for i in part["id"]]
        texts += [str(t) for t in part["raw_text"]]
        splits += [split] * len(part["id"])
        for n in names:
            key = "regression_labels" + n[len("sentiment"):]
            labels[n] += np.asarray(part[key], np.float32).reshape(-1).tolist()
    n_rows = len(ids)
    meta = {"id": ids, "split": splits, "text": texts, "language": [LANGUAGES[dataset]] * n_rows,
            "dialogue": [""] * n_rows, "turn": [-1] * n_rows}
    writer = CacheWriter.create(out, spec, encoders, meta, labels, rows_per_shard, storage_options)

    offsets = np.cumsum([0] + [len(data[s]["id"]) for s in SPLITS]).tolist()  # split k: rows offsets[k]..[k+1]
    cleaned: dict[str, Counter] = {}
    for a, b in tqdm(writer.pending_blocks(), desc="import", unit="shard", disable=not progress):
        block, problems = {}, {}
        for m in SOURCES:
            x, lengths = _block(data, m, offsets, a, b, cleaned)
            block[m] = [x[i, : n] if n > 0 else None for i, n in enumerate(lengths)]
            problems[m] = ["" if n > 0 else "empty in the pickle" for n in lengths]
        writer.write_block(a, block, problems)
    return ImportReport(n_rows, cleaned, {sp: splits.count(sp) for sp in SPLITS.values()})
