"""CH-SIMS v2.0: Chinese video clips (films, TV series, interviews) with a sentiment score in [-1, 1] for the
whole clip and one per modality (text, audio, visual); 4,403 labelled clips (2,722 / 647 / 1,034) and an
unlabelled part of 10,161 clips for semi-supervised learning.

On disk (the MMSA layout, which CMU-MOSEI shares; see mosei.py): a metadata CSV named meta.csv in some copies and
label.csv in others, with the columns video_id, clip_id, text, label, label_T, label_A, label_V, annotation, mode;
the clips Raw/<video_id>/<clip_id>.mp4. Ids are zero-padded and stay text ("video_0001/0001").

- mode train / valid / test becomes the split train / dev / test.
- A row whose `label` is empty belongs to the unlabelled part: split "unlabelled", every score None. A labelled
  row needs all four scores; a row with some but not all of them is an error, not a silent gap.
- option part: "supervised" (the labelled rows), "unsupervised" (the unlabelled ones) or "all".
- An empty transcript is kept as "" (the clip still has sound and pictures).
"""
from __future__ import annotations

from pathlib import Path

from ...cache.schema import DatasetSpec, LabelSpec
from ..records import (Corpus, DatasetError, Utterance, parse_score, read_csv, require_columns,
                                  validate)

ADAPTER_VERSION = "1"
SCORES = {"sentiment": "label", "sentiment_T": "label_T", "sentiment_A": "label_A", "sentiment_V": "label_V"}
SPEC = DatasetSpec("sims-v2", ADAPTER_VERSION, "sentiment",
                   tuple(LabelSpec(name, "score", low=-1.0, high=1.0) for name in SCORES))
LABEL_FILES = ("meta.csv", "label.csv")
MODES = {"train": "train", "valid": "dev", "test": "test"}
PARTS = ("supervised", "unsupervised", "all")


def load(root, part: str = "supervised") -> Corpus:
    """The CH-SIMS v2 rows of `part` from root/meta.csv (or root/label.csv)."""
    root = Path(root)
    found = [root / name for name in LABEL_FILES if (root / name).is_file()]
    if not found:
        raise DatasetError(root, "no meta.csv or label.csv", "point --root at the CH-SIMS v2 folder that holds "
                           "the metadata CSV and Raw/")
    return load_mmsa(found[0], SPEC, SCORES, "zh", part)


def load_mmsa(path: Path, spec: DatasetSpec, scores: dict[str, str], language: str, part: str | None) -> Corpus:
    """Read an MMSA label file: `scores` maps each of spec's labels to its column, the whole-clip label first
    (an empty one marks an unlabelled row); clips in Raw/ beside it. part None: the corpus has no unlabelled
    part, so an empty label is an error. Scores outside the spec's range are refused by validate(), with their
    line."""
    if part is not None and part not in PARTS:
        raise DatasetError(path, f"unknown part {part!r}", f"use part = {' | '.join(PARTS)}")
    header, rows = read_csv(path)
    require_columns(path, header, ("video_id", "clip_id", "text", "mode", *scores.values()))
    whole_clip = next(iter(scores))
    utterances, origins = [], []
    for line, row in rows:
        filled = [name for name, column in scores.items() if row[column].strip()]
        labelled = whole_clip in filled
        if part is None and not labelled:
            raise DatasetError(path, "empty label", "fill in the score; this corpus has no unlabelled part",
                               line=line)
        if part in ("supervised", "unsupervised") and labelled != (part == "supervised"):
            continue
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
    return validate(Corpus(spec, utterances), origins)


def _split(path, line: int, mode: str) -> str:
    if mode.strip() not in MODES:
        raise DatasetError(path, f"unknown mode {mode!r}", f"use one of: {', '.join(MODES)}", line=line)
    return MODES[mode.strip()]
