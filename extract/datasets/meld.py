"""MELD, the Multimodal EmotionLines Dataset: 13,708 utterances from 1,433 dialogues of the TV series Friends,
each an English video clip labelled with one of 7 emotions and a 3-way sentiment.

On disk (as released): {train,dev,test}_sent_emo.csv with the columns Sr No., Utterance, Speaker, Emotion,
Sentiment, Dialogue_ID, Utterance_ID, Season, Episode, StartTime, EndTime; the clips dia{D}_utt{U}.mp4 in
train_splits/, dev_splits_complete/ and output_repeated_splits_test/. Every split whose CSV is present is loaded.

- ids "train/dia0_utt0"; dialogue "train/0" and turn = Utterance_ID, so stage two can gather the preceding turns
  (Utterance_ID has gaps where the authors dropped an utterance; the order is kept, the gaps are not filled).
- The media path is set whether or not the clip exists: a text-only extraction needs no media, and a missing or
  broken clip (dev dia110_utt7 is missing, train dia125_utt3 is corrupt) is reported when it is decoded.
  The extra unannotated clips of the release (final_videos_test*) are not in the CSVs and so not loaded.
- StartTime/EndTime locate the utterance in the whole episode, not in its clip (clips are cut already), so they
  are not used; their two formats ("0:12:43,012" and "00:12:43,012") therefore do not matter.
- Transcripts keep their typographic punctuation; UTF-8 that was once decoded as Latin-1/cp1252
  ("\u00e2\u0080\u0099" for "\u2019") is repaired. An empty transcript is kept as "" (the clip still has sound
  and pictures).
"""
from __future__ import annotations

import re
from pathlib import Path

from ...cache.schema import DatasetSpec, LabelSpec
from ..records import (Corpus, DatasetError, Utterance, parse_class, read_csv, require_columns,
                                  validate)

ADAPTER_VERSION = "1"
EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")  # the order MELD's papers use
SENTIMENTS = ("negative", "neutral", "positive")
SPEC = DatasetSpec("meld", ADAPTER_VERSION, "emotion", (
    LabelSpec("emotion", "class", EMOTIONS),
    LabelSpec("sentiment", "class", SENTIMENTS),
))
CLIP_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
COLUMNS = ("Utterance", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")

# A character that a UTF-8 lead byte turns into under Latin-1/cp1252, then the characters its continuation
# bytes (0x80-0xBF) turn into: cp1252's printable ones and the Latin-1 controls and symbols.
_CONTINUATION = "\u0080-\u00bf\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u017d" \
                "\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u017e\u0178"
_MOJIBAKE = re.compile(f"[\u00c2-\u00f4][{_CONTINUATION}]{{1,3}}")


def repair_mojibake(text: str) -> str:
    """Undo UTF-8 read as Latin-1 or cp1252, one character at a time; text that does not decode stays as is."""
    def fix(match: re.Match) -> str:
        chars = match.group()
        try:
            raw = bytes(ord(c) if ord(c) < 256 else c.encode("cp1252")[0] for c in chars)
            return raw.decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return chars
    return _MOJIBAKE.sub(fix, text)


def load(root) -> Corpus:
    """All splits of MELD whose CSV is in root."""
    root = Path(root)
    files = {split: root / f"{split}_sent_emo.csv" for split in CLIP_FOLDERS}
    present = {split: path for split, path in files.items() if path.is_file()}
    if not present:
        raise DatasetError(root, "no MELD label file (train_sent_emo.csv, dev_sent_emo.csv or test_sent_emo.csv)",
                           "point --root at the folder holding the MELD CSVs")
    utterances, origins = [], []
    for split, path in present.items():
        header, rows = read_csv(path)
        require_columns(path, header, COLUMNS)
        for line, row in rows:
            dialogue, turn = _int(path, line, row, "Dialogue_ID"), _int(path, line, row, "Utterance_ID")
            name = f"dia{dialogue}_utt{turn}"
            utterances.append(Utterance(
                id=f"{split}/{name}", split=split, text=repair_mojibake(row["Utterance"].strip()), language="en",
                labels={"emotion": parse_class(path, line, "emotion", row["Emotion"].lower(), EMOTIONS),
                        "sentiment": parse_class(path, line, "sentiment", row["Sentiment"].lower(), SENTIMENTS)},
                media=root / CLIP_FOLDERS[split] / f"{name}.mp4", dialogue=f"{split}/{dialogue}", turn=turn))
            origins.append((path, line))
    return validate(Corpus(SPEC, utterances), origins)


def _int(path, line: int, row: dict, column: str) -> int:
    value = row[column].strip()
    if not value.isdigit():
        raise DatasetError(path, f"{column} {value!r} is not a whole number", f"correct {column}", line=line)
    return int(value)
