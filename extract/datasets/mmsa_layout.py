"""The MMSA layout that CH-SIMS v2 and CMU-MOSEI share (thuiar's MMSA toolkit and its downloads): a label CSV with
the columns video_id, clip_id, text, label, label_T, label_A, label_V, annotation, mode, and the clips
Raw/<video_id>/<clip_id>.mp4 beside it. Not an adapter: the corpora's modules read their files through it.

- Ids are "<video_id>/<clip_id>" exactly as written: clip ids come zero-padded ("0001", "00000") or not ("1"), and
  the CSV is read as text, so "0001" never becomes 1.
- mode train / valid / test becomes the split train / dev / test.
- A row whose whole-clip label is empty is unlabelled (split "unlabelled", every score None); a labelled row
  needs all its scores. A row with some but not all of them is an error, not a silent gap.
"""
from __future__ import annotations

from pathlib import Path

from ...cache.schema import DatasetSpec
from ..records import DatasetError, Utterance, parse_score, read_csv, require_columns

MODES = {"train": "train", "valid": "dev", "test": "test"}


def read_label_file(path: Path, spec: DatasetSpec, scores: dict[str, str], language: str,
                    keep_unlabelled: bool) -> tuple[list[Utterance], list[tuple[Path, int]]]:
    """The rows of an MMSA label file as utterances, with the (file, line) each came from, for validate().
    `scores` maps each of spec's labels to its column, the whole-clip label first. keep_unlabelled False: the
    corpus has no unlabelled part, so an empty label is an error. Scores outside the spec's range are left to
    validate(), which reports them with their line."""
    header, rows = read_csv(path)
    require_columns(path, header, ("video_id", "clip_id", "text", "mode", *scores.values()))
    whole_clip = next(iter(scores))
    utterances, origins = [], []
    for line, row in rows:
        filled = [name for name, column in scores.items() if row[column].strip()]
        labelled = whole_clip in filled
        if not labelled and not keep_unlabelled:
            raise DatasetError(path, "empty label", "fill in the score; this corpus has no unlabelled part",
                               line=line)
        if labelled and len(filled) < len(scores):
            missing = [scores[name] for name in scores if name not in filled]
            raise DatasetError(path, f"labelled row without {', '.join(missing)}",
                               "fill in every score of a labelled row, or empty them all to mark it unlabelled",
                               line=line)
        if not labelled and filled:
            raise DatasetError(path, f"{', '.join(scores[n] for n in filled)} set but {scores[whole_clip]} empty",
                               f"fill in {scores[whole_clip]}, or empty the row's scores to mark it unlabelled",
                               line=line)
        labels = {name: parse_score(path, line, scores[name], row[scores[name]]) if labelled else None
                  for name in scores}
        video, clip = row["video_id"].strip(), row["clip_id"].strip()
        utterances.append(Utterance(
            id=f"{video}/{clip}", split=_split(path, line, row["mode"]) if labelled else "unlabelled",
            text=row["text"].strip(), language=language, labels=labels,
            media=path.parent / "Raw" / video / f"{clip}.mp4"))
        origins.append((path, line))
    return utterances, origins


def _split(path, line: int, mode: str) -> str:
    if mode.strip() not in MODES:
        raise DatasetError(path, f"unknown mode {mode!r}", f"use one of: {', '.join(MODES)}", line=line)
    return MODES[mode.strip()]
