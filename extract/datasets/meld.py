"""MELD, the Multimodal EmotionLines Dataset: 13,708 utterances from 1,433 dialogues of the TV series Friends,
each an English video clip labelled with one of 7 emotions and a 3-way sentiment.

On disk: {train,dev,test}_sent_emo.csv with the columns Sr No., Utterance, Speaker, Emotion, Sentiment,
Dialogue_ID, Utterance_ID, Season, Episode, StartTime, EndTime, and the clips dia{D}_utt{U}.mp4. Two layouts are
found, with --root at the folder itself or at the folder holding MELD.Raw/:

- the official release, MELD.Raw.tar.gz with its inner train/dev/test.tar.gz unpacked: MELD.Raw/ holding the
  three CSVs and the clip folders train_splits/, dev_splits_complete/, output_repeated_splits_test/;
- one folder per split, as many copies have it: train/train_sent_emo.csv + train/train_splits/, dev/..., test/...

- option splits: the splits to load, "train,dev,test" by default. A split whose CSV is absent is refused, never
  skipped: when its inner archive (train.tar.gz) lies there still packed, the message says to unpack it;
  otherwise, name the splits you have (--opt splits=train,dev).
- ids "train/dia0_utt0"; dialogue "train/0" and turn = Utterance_ID, so stage two can gather the preceding turns
  (Utterance_ID has gaps where the authors dropped an utterance; the order is kept, the gaps are not filled).
- The media path is set whether or not the clip exists: a text-only extraction needs no media, and a missing or
  broken clip (dev dia110_utt7 is missing, train dia125_utt3 is corrupt) is reported when it is decoded. When the
  clip folder is missing but the split's inner archive lies still packed beside the CSVs, the load stops and says
  to unpack it. The extra unannotated clips of the release (final_videos_test*) are not in the CSVs: not loaded.
- speaker: the Speaker column ("Rachel", "Mr. Geller", "All"), repaired like the transcripts; a copy without the
  column loads with no speakers (egmf-train --speaker-names then refuses the cache).
- StartTime/EndTime locate the utterance in the whole episode, not in its clip (clips are cut already), so they
  are not used; their two formats ("0:12:43,012" and "00:12:43,012") therefore do not matter.
- Transcripts: the released CSVs hold cp1252 punctuation read as Latin-1, i.e. the C1 control characters
  U+0080-009F ("company\\x92s" for "company’s"; BERT-style tokenisers delete them) and U+00A0 for a space. Each
  control character becomes its cp1252 character (U+0092 -> ’, U+0085 -> …), the five that cp1252 leaves
  undefined are dropped, and U+00A0 becomes a space. An empty transcript is kept as "" (the clip still has sound
  and pictures).
"""
from __future__ import annotations

import re
from pathlib import Path

from ...cache.schema import DatasetSpec, LabelSpec
from ..records import (Corpus, DatasetError, Utterance, parse_class, read_csv, require_columns, validate)

ADAPTER_VERSION = "3"  # 3: the Speaker column is stored
EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")  # the order MELD's papers use
SENTIMENTS = ("negative", "neutral", "positive")
SPEC = DatasetSpec("meld", ADAPTER_VERSION, "emotion", (
    LabelSpec("emotion", "class", EMOTIONS),
    LabelSpec("sentiment", "class", SENTIMENTS),
))
CLIP_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
COLUMNS = ("Utterance", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
RELEASE_FOLDER = "MELD.Raw"

_C1 = re.compile("[\u0080-\u009f\u00a0]")


def repair_cp1252(text: str) -> str:
    """C1 control characters back to the cp1252 characters they were read from; no-break space to a space."""
    def fix(match: re.Match) -> str:
        char = match.group()
        if char == "\u00a0":
            return " "
        try:
            return bytes([ord(char)]).decode("cp1252")
        except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d: no character in cp1252 either
            return ""
    return _C1.sub(fix, text)


def load(root, splits: str = "train,dev,test") -> Corpus:
    """The MELD splits named in `splits` (comma-separated), from either layout described above."""
    root = Path(root)
    wanted = [s.strip() for s in str(splits).split(",") if s.strip()]
    unknown = [s for s in wanted if s not in CLIP_FOLDERS]
    if unknown or not wanted:
        raise DatasetError(root, f"unknown split(s) {', '.join(unknown) or '(none)'}",
                           f"use splits = a comma-separated subset of {','.join(CLIP_FOLDERS)}")
    base = root / RELEASE_FOLDER if (root / RELEASE_FOLDER).is_dir() else root
    utterances, origins = [], []
    for split in wanted:
        path, clips = locate_split(base, split)
        header, rows = read_csv(path)
        require_columns(path, header, COLUMNS)
        for line, row in rows:
            dialogue, turn = _int(path, line, row, "Dialogue_ID"), _int(path, line, row, "Utterance_ID")
            name = f"dia{dialogue}_utt{turn}"
            utterances.append(Utterance(
                id=f"{split}/{name}", split=split, text=repair_cp1252(row["Utterance"]).strip(), language="en",
                labels={"emotion": parse_class(path, line, "emotion", row["Emotion"].lower(), EMOTIONS),
                        "sentiment": parse_class(path, line, "sentiment", row["Sentiment"].lower(), SENTIMENTS)},
                media=clips / f"{name}.mp4", dialogue=f"{split}/{dialogue}", turn=turn,
                speaker=repair_cp1252(row.get("Speaker", "")).strip()))
            origins.append((path, line))
    return validate(Corpus(SPEC, utterances), origins)


def locate_split(base: Path, split: str) -> tuple[Path, Path]:
    """(the split's CSV, its clip folder) in the official layout (base/<csv>, base/<clips>/) or the per-split one
    (base/<split>/<csv>, base/<split>/<clips>/); refuses an absent CSV and a clip archive left packed."""
    csv_name, clip_name, archive = f"{split}_sent_emo.csv", CLIP_FOLDERS[split], base / f"{split}.tar.gz"
    folder = next((f for f in (base, base / split) if (f / csv_name).is_file()), None)
    if folder is None:
        if archive.is_file():
            raise DatasetError(archive, f"the {split} split is still packed in its inner archive",
                               f"unpack it where it lies (cd {base} && tar -xzf {archive.name}), or leave the "
                               f"split out with --opt splits=<the others>")
        raise DatasetError(base, f"no {csv_name} (looked in {base} and {base / split})",
                           "point --root at MELD.Raw (or the folder holding it) with the split's CSV in it, or "
                           "name the splits you have, e.g. --opt splits=train,dev")
    clips = folder / clip_name
    if not clips.is_dir() and archive.is_file():
        raise DatasetError(archive, f"{clip_name}/ is missing and its archive is still packed",
                           f"unpack it where it lies (cd {base} && tar -xzf {archive.name})")
    return folder / csv_name, clips


def _int(path, line: int, row: dict, column: str) -> int:
    value = row[column].strip()
    if not value.isdigit():
        raise DatasetError(path, f"{column} {value!r} is not a whole number", f"correct {column}", line=line)
    return int(value)
