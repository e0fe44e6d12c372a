"""The user's own corpus: a folder of clips and one CSV that lists them.

root/labels.csv (option csv) with the columns id, path, text and optionally label, split and speaker:
- path is relative to root (an empty path: no media, for text-only use); the media path is set whether or not
  the file exists, and a missing or broken clip is reported when it is decoded.
- label: numbers make a score label "sentiment" (task "sentiment") whose range is the options low/high or else
  the observed minimum and maximum rounded outward to whole numbers (0.6 and -0.8 give [-1, 1]), so a corpus
  whose labels happen not to reach the ends of their scale still gets that scale's integer bounds; words make a
  class label "emotion" (task "emotion") whose classes are the option classes ("joy,anger,...", in that order)
  or else the words found, sorted. label_kind="class" reads numbers as class names too (e.g. labels 0..6);
  a column of numbers with a few words in it is refused, since those words are most likely typos.
  Without a label column the corpus has no labels (task ""): enough to extract features and predict.
- split: train, dev, test or unlabelled (valid/val/validation mean dev); "train" for every row when the column is
  absent. Only an unlabelled row may leave its label empty.
- speaker (optional): who speaks in the clip, for prompts that name the speaker (egmf-train --speaker-names).
- option language: "en" or "zh" for every row (it picks the prompt language). An empty transcript is kept as "".
"""
from __future__ import annotations

import math
from pathlib import Path

from ...cache.schema import DatasetSpec, LabelSpec
from ..records import (Corpus, DatasetError, Utterance, parse_class, parse_score, read_csv,
                                  require_columns, validate)

ADAPTER_VERSION = "2"  # 2: the speaker column is stored
LANGUAGES = ("en", "zh")
LABEL_KINDS = ("auto", "score", "class")
SPLIT_ALIASES = {"valid": "dev", "val": "dev", "validation": "dev"}


def load(root, csv: str = "labels.csv", language: str = "en", low=None, high=None, classes: str | None = None,
         label_kind: str = "auto") -> Corpus:
    """The clips listed in root/<csv>; low/high/classes/label_kind shape the label as described above."""
    root = Path(root)
    path = root / csv
    if language not in LANGUAGES:
        raise DatasetError(path, f"unknown language {language!r}", f"use language = {' | '.join(LANGUAGES)}")
    if label_kind not in LABEL_KINDS:
        raise DatasetError(path, f"unknown label_kind {label_kind!r}", f"use label_kind = {' | '.join(LABEL_KINDS)}")
    header, rows = read_csv(path)
    require_columns(path, header, ("id", "path", "text"))
    splits = [_split(row) if "split" in header else "train" for _, row in rows]
    if "label" in header:
        for (line, row), split in zip(rows, splits):
            if not row["label"].strip() and split != "unlabelled":
                raise DatasetError(path, f"empty label in split {split!r}",
                                   "fill in the label, or set the row's split to unlabelled", line=line)
    label_spec = _label_spec(path, rows, low, high, classes, label_kind) if "label" in header else None
    utterances, origins = [], []
    for (line, row), split in zip(rows, splits):
        if not row["id"].strip():
            raise DatasetError(path, "empty id", "give every row an id", line=line)
        labels = {}
        if label_spec is not None:
            labels[label_spec.name] = _label(path, line, row["label"], label_spec)
        media = row["path"].strip()
        utterances.append(Utterance(id=row["id"].strip(), split=split, text=row["text"].strip(),
                                    language=language, labels=labels, media=root / media if media else None,
                                    speaker=row.get("speaker", "").strip()))
        origins.append((path, line))
    spec = DatasetSpec("folder", ADAPTER_VERSION, label_spec.name if label_spec else "",
                       (label_spec,) if label_spec else ())
    return validate(Corpus(spec, utterances), origins)


def _split(row: dict) -> str:
    split = row["split"].strip().lower()
    return SPLIT_ALIASES.get(split, split)


def _label_spec(path: Path, rows, low, high, classes: str | None, label_kind: str) -> LabelSpec:
    values = [(line, row["label"].strip()) for line, row in rows if row["label"].strip()]
    if not values:
        raise DatasetError(path, "the label column is empty in every row", "fill in labels, or drop the column")
    if label_kind == "auto":
        words = [(line, v) for line, v in values if not _is_number(v)]
        if words and len(words) < len(values):  # a typo in a score column must not turn scores into classes
            line, word = words[0]
            raise DatasetError(path, f"label {word!r} is not a number, unlike other labels",
                               "correct the score, or set label_kind=class if the labels are class names", line=line)
        label_kind = "class" if words else "score"
    if label_kind == "class":
        names = tuple(c.strip() for c in classes.split(",")) if classes else tuple(sorted({v for _, v in values}))
        return LabelSpec("emotion", "class", names)
    scores = [parse_score(path, line, "label", v) for line, v in values]
    low = float(low) if low is not None else float(math.floor(min(scores, default=0.0)))
    high = float(high) if high is not None else float(math.ceil(max(scores, default=0.0)))
    if not low < high:
        raise DatasetError(path, f"label range [{low}, {high}] is empty",
                           "set the options low and high to the ends of the label scale, e.g. low=-1 high=1")
    return LabelSpec("sentiment", "score", low=low, high=high)


def _label(path: Path, line: int, value: str, spec: LabelSpec):
    if not value.strip():
        return None
    if spec.kind == "class":
        return parse_class(path, line, "label", value, spec.classes)
    return parse_score(path, line, "label", value)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
