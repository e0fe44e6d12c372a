"""CMU-MOSEI: 23,453 English opinion segments from 1,000 YouTube speakers, each with a sentiment score in
[-3, 3] (the mean of three annotators' -3..3 ratings); splits 16,326 / 1,871 / 4,659.

Two label sources (option source):

- "mmsa" (default; the layout most fusion work uses, see mmsa_layout.py): label.csv with the columns video_id,
  clip_id, text, label, mode (label_T/_A/_V exist but are empty: MOSEI has no per-modality labels) and the clips
  Raw/<video_id>/<clip_id>.mp4. Every row must be labelled; ids are "<video_id>/<clip_id>" as MMSA numbers them.
  MMSA's pre-extracted Processed/*.pkl features are imported by `egmf-cache import-mmsa`, not here.
- "csd" (the official CMU-MultimodalSDK release): CMU_MOSEI_Labels.csd, HDF5 with
  <root name>/data/<video_id>/{features (n, 7), intervals (n, 2) seconds}; the 7 values are sentiment in [-3, 3]
  then happy, sad, anger, surprise, disgust, fear in [0, 3], all kept as score labels. The segment is a time span
  of the full video <videos>/<video_id>.mp4 (option videos, by default the raw release's Videos/Full/Combined).
  Transcripts come from CMU_MOSEI_TimestampedWords.csd beside it when present (the words whose middle falls
  inside the segment, without the "sp" pause markers), else "". A .csd has no splits: option folds names the
  SDK's cmu_mosei_std_folds.py (standard_train_fold / standard_valid_fold / standard_test_fold), and videos in
  no fold are left out with a warning that names them.

  Ids of the csd source: "<video_id>/seg<k>", k = the segment's index when the video's segments are ordered by
  start time (then end time). They are NOT MMSA's clip ids and must never be paired with them: the SDK's rows are
  neither in time order nor numbered like MMSA's clips (for -3g5yACwYnA the SDK has 6 segments where MMSA's clip
  ids are 2, 3, 4, 9, 10, 13), and the two releases' split sizes differ (16,327 / 1,871 / 4,662 segments
  against MMSA's 16,326 / 1,871 / 4,659 clips). The "seg" prefix keeps a csd id from ever equalling an MMSA id.

An empty transcript is kept as "" (the clip still has sound and pictures).
"""
from __future__ import annotations

import ast
import warnings
from pathlib import Path

import h5py
import numpy as np

from ...cache.schema import DatasetSpec, LabelSpec
from ..records import Corpus, DatasetError, Utterance, validate
from .mmsa_layout import read_label_file

ADAPTER_VERSION = "2"
SENTIMENT = LabelSpec("sentiment", "score", low=-3.0, high=3.0)
SPEC = DatasetSpec("mosei", ADAPTER_VERSION, "sentiment", (SENTIMENT,))
EMOTIONS = ("happy", "sad", "anger", "surprise", "disgust", "fear")  # after sentiment in every .csd label row
CSD_SPEC = DatasetSpec("mosei", ADAPTER_VERSION, "sentiment",
                       (SENTIMENT, *(LabelSpec(name, "score", low=0.0, high=3.0) for name in EMOTIONS)))
LABELS_CSD, WORDS_CSD = "CMU_MOSEI_Labels.csd", "CMU_MOSEI_TimestampedWords.csd"
FOLDS = {"standard_train_fold": "train", "standard_valid_fold": "dev", "standard_test_fold": "test"}
SOURCES = ("mmsa", "csd")


def load(root, source: str = "mmsa", folds: str | None = None, videos: str = "Videos/Full/Combined") -> Corpus:
    """CMU-MOSEI from root/label.csv and root/Raw/ (source mmsa) or from the SDK's .csd files (source csd)."""
    root = Path(root)
    if source == "mmsa":
        utterances, origins = read_label_file(root / "label.csv", SPEC, {"sentiment": "label"}, "en",
                                              keep_unlabelled=False)
        return validate(Corpus(SPEC, utterances), origins)
    if source == "csd":
        if folds is None:
            raise DatasetError(root / LABELS_CSD, "a .csd file has no train/dev/test splits",
                               "pass folds=<path to the SDK's cmu_mosei_std_folds.py>")
        return _load_csd(root, _read_folds(root / folds), root / videos)
    raise DatasetError(root, f"unknown source {source!r}", f"use source = {' | '.join(SOURCES)}")


def _load_csd(root: Path, split_of: dict[str, str], videos: Path) -> Corpus:
    labels_path = root / LABELS_CSD
    labels = _read_csd(labels_path)
    words = _read_csd(root / WORDS_CSD) if (root / WORDS_CSD).is_file() else {}
    outside = sorted(v for v in labels if v not in split_of)
    if outside:
        warnings.warn(f"{labels_path}: {len(outside)} videos are in no fold and left out: "
                      f"{', '.join(outside[:10])}{' ...' if len(outside) > 10 else ''}", stacklevel=2)
    utterances = []
    for video in sorted(v for v in labels if v in split_of):
        values, intervals = labels[video]  # (n, 7), (n, 2)
        if values.ndim != 2 or values.shape[1] != 1 + len(EMOTIONS) or intervals.shape != (len(values), 2):
            raise DatasetError(labels_path, f"video {video}: features {values.shape} and intervals "
                               f"{intervals.shape}, expected (n, 7) and (n, 2)", f"use the SDK's {LABELS_CSD}")
        in_time = np.lexsort((intervals[:, 1], intervals[:, 0]))  # the file's row order is not the time order
        for k, (row, (start, end)) in enumerate(zip(values[in_time], intervals[in_time])):
            utterances.append(Utterance(
                id=f"{video}/seg{k}", split=split_of[video], text=_transcript(words.get(video), start, end),
                language="en", labels={spec.name: float(v) for spec, v in zip(CSD_SPEC.labels, row)},
                media=videos / f"{video}.mp4", start=float(start), end=float(end)))
    return validate(Corpus(CSD_SPEC, utterances), [(labels_path, None)] * len(utterances))


def _read_csd(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """video id -> (features, intervals) of a computational sequence."""
    try:
        with h5py.File(path, "r") as f:
            data = f[next(iter(f))]["data"]  # under the one root group, named after the sequence
            return {video: (group["features"][()], group["intervals"][()]) for video, group in data.items()}
    except (OSError, KeyError, StopIteration) as e:
        raise DatasetError(path, f"not a computational sequence (.csd) file: {e}",
                           "use the file as downloaded by the CMU-MultimodalSDK") from None


def _transcript(words: tuple[np.ndarray, np.ndarray] | None, start: float, end: float) -> str:
    if words is None:
        return ""
    tokens, intervals = words  # (m, 1) bytes, (m, 2) seconds
    middle = intervals.mean(axis=1)  # (m,)
    inside = (middle >= start) & (middle < end)
    spoken = (t.decode("utf-8", "replace") for t in tokens[inside, 0])
    return " ".join(w for w in spoken if w != "sp")


def _read_folds(path: Path) -> dict[str, str]:
    """video id -> split, from the assignments of list literals in the SDK's cmu_mosei_std_folds.py."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError) as e:
        raise DatasetError(path, f"cannot read the folds: {e}", "pass folds=<path to cmu_mosei_std_folds.py>") from None
    split_of = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and getattr(node.targets[0], "id", "") in FOLDS:
            for video in ast.literal_eval(node.value):
                split_of[str(video)] = FOLDS[node.targets[0].id]
    if set(split_of.values()) != set(FOLDS.values()):
        raise DatasetError(path, f"expected the lists {', '.join(FOLDS)}", "pass the SDK's cmu_mosei_std_folds.py")
    return split_of
