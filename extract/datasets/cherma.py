"""CHERMA: a Chinese multimodal emotion corpus (clips from films, TV series and variety shows) with 7 emotions,
labelled once per modality (text, audio, visual) and once for the whole clip.

On disk (as released): {train,dev,test}.json, each a list of entries
{"audio_file", "video_file", "txt_label", "audio_label", "visual_label", "video_label"} with Chinese label words,
and per-sample features text/<split>/<id>.npy (1024-d), audio/<split>/<id>.npy (1024-d) and
visual/<split>/<id>.mp4.npy (2048-d). The raw media is not released, so the extraction imports these arrays as
they are (Utterance.features) and runs no encoder.

- <id> is audio_file without its ".wav" (e.g. "xxx_0001.wav" -> "xxx_0001"): the released loaders name all three
  feature files after the audio file, the visual one too (with ".mp4.npy"), not after video_file. Utterance ids
  are "<split>/<id>" so that a name repeated across splits stays unique.
- The label "emotion" is video_label (the multimodal one); emotion_T / _A / _V are txt_label / audio_label /
  visual_label.
- Transcripts: the release as circulated has none (only text features), so text is "" unless an entry carries
  one: a string field "text" or "transcript" (option text_field names another) is kept, stripped. It goes into
  the cache's text column for the prompt; the text features are still the released ones.
- The feature paths are set whether or not the files exist: a missing one is reported by the import, like a
  missing clip. The released text features are zero-padded to a fixed length with no lengths beside them: the
  import takes the trailing all-zero rows for padding (extract/released.py).
"""
from __future__ import annotations

import json
from pathlib import Path

from ...cache.schema import DatasetSpec, LabelSpec
from ..records import Corpus, DatasetError, Utterance, parse_class, validate

ADAPTER_VERSION = "2"
# anger, disgust, fear, happiness, calm (neutral), sadness, surprise: the class order of the released code
EMOTIONS = ("愤怒", "厌恶", "恐惧", "高兴", "平静", "悲伤", "惊奇")
LABELS = {"emotion": "video_label", "emotion_T": "txt_label", "emotion_A": "audio_label",
          "emotion_V": "visual_label"}
SPEC = DatasetSpec("cherma", ADAPTER_VERSION, "emotion",
                   tuple(LabelSpec(name, "class", EMOTIONS) for name in LABELS))
SPLITS = ("train", "dev", "test")
FIELDS = ("audio_file", *LABELS.values())
TRANSCRIPT_FIELDS = ("text", "transcript")


def load(root, text_field: str | None = None) -> Corpus:
    """Every CHERMA split whose JSON is in root; text_field: the entries' transcript field, if not a default."""
    root = Path(root)
    text_fields = (text_field,) if text_field else TRANSCRIPT_FIELDS
    present = [split for split in SPLITS if (root / f"{split}.json").is_file()]
    if not present:
        raise DatasetError(root, "no CHERMA label file (train.json, dev.json or test.json)",
                           "point --root at the CHERMA folder that holds the JSON files and text/ audio/ visual/")
    utterances, origins = [], []
    for split in present:
        path = root / f"{split}.json"
        for line, entry in _entries(path):
            missing = [f for f in FIELDS if not isinstance(entry.get(f), str) or not entry[f].strip()]
            if missing:
                raise DatasetError(path, f"entry without {', '.join(missing)}", "fill in the fields", line=line)
            name = entry["audio_file"].strip().removesuffix(".wav")
            utterances.append(Utterance(
                id=f"{split}/{name}", split=split, text=_transcript(path, line, entry, text_fields), language="zh",
                labels={label: parse_class(path, line, field, entry[field], EMOTIONS)
                        for label, field in LABELS.items()},
                features={"text": root / "text" / split / f"{name}.npy",
                          "audio": root / "audio" / split / f"{name}.npy",
                          "visual": root / "visual" / split / f"{name}.mp4.npy"}))
            origins.append((path, line))
    return validate(Corpus(SPEC, utterances), origins)


def _transcript(path: Path, line: int, entry: dict, fields: tuple[str, ...]) -> str:
    field = next((f for f in fields if f in entry), None)
    if field is None:
        return ""
    if not isinstance(entry[field], str):
        raise DatasetError(path, f"{field} {entry[field]!r} is not text", f"write {field} as a JSON string",
                           line=line)
    return entry[field].strip()


def _entries(path: Path) -> list[tuple[int, dict]]:
    """The JSON list's entries with the line each starts on (the line an editor shows for the entry)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
        entries = json.loads(text)
    except UnicodeDecodeError:
        raise DatasetError(path, "not UTF-8", "save the file as UTF-8") from None
    except json.JSONDecodeError as e:
        raise DatasetError(path, f"not valid JSON ({e.msg})", "repair the file", line=e.lineno) from None
    if not isinstance(entries, list) or not all(isinstance(x, dict) for x in entries):
        raise DatasetError(path, "not a list of objects", "the file must hold [{...}, {...}, ...]")
    # json.loads keeps no positions: step over the entries again with raw_decode to learn where each starts.
    decoder, located = json.JSONDecoder(), []
    at, line, counted = text.index("[") + 1, 1, 0
    for entry in entries:
        at = text.index("{", at)
        line, counted = line + text.count("\n", counted, at), at
        located.append((line, entry))
        at = decoder.raw_decode(text, at)[1]
    return located
