"""The utterance record every dataset adapter returns, the error every adapter raises, and the label-file
reading and validation every adapter shares (so each reports a bad row the same way: file, line and fix)."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..cache.schema import DatasetSpec, LabelSpec


class DatasetError(ValueError):
    """Bad corpus input. The message names the file, the line (or clip) and the fix."""

    def __init__(self, path, problem: str, fix: str, line: int | None = None):
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}. Fix: {fix}")
        self.path, self.line = Path(path), line


@dataclass(frozen=True)
class Utterance:
    id: str  # unique within the corpus (MELD: "train/dia0_utt0", SIMS: "video_0001/0001")
    split: str  # "train" | "dev" | "test" | "unlabelled"
    text: str  # the transcript
    language: str  # "en" | "zh": picks the prompt language in stage two
    labels: dict  # label name -> class index (int) or score (float); None = unlabelled
    media: Path | None = None  # the clip; None when the corpus ships no media for it
    start: float | None = None  # seconds: a span inside a longer media file
    end: float | None = None
    dialogue: str = ""  # dialogue id, "" when the corpus has no dialogues
    turn: int = -1  # position inside the dialogue (0-based), -1 without dialogues
    speaker: str = ""  # who speaks (MELD: "Rachel"), "" when the corpus does not say
    features: dict = field(default_factory=dict)  # modality -> released .npy, imported instead of encoding (CHERMA)


@dataclass(frozen=True)
class Corpus:
    """What an adapter's load() returns: the label schema and the validated records."""

    spec: DatasetSpec
    utterances: list[Utterance]


SPLITS = ("train", "dev", "test", "unlabelled")


def read_csv(path) -> tuple[list[str], list[tuple[int, dict]]]:
    """A label file's header and its rows as (line number where the row starts, {column: text}).

    Values are kept as text (ids like "0001" stay zero-padded); a quoted field may span lines, so the line
    numbers are the file's own, as an editor shows them. A file that is not UTF-8 is refused with the line of
    the first bad byte rather than guessed at.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "label file not found", "check --root and the file name")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(path, f"not UTF-8 (byte {data[e.start]:#x})", "save the file as UTF-8",
                           line=data[:e.start].count(b"\n") + 1) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip() for name in next(reader, [])]
    rows, start = [], reader.line_num + 1
    for values in reader:
        if any(v.strip() for v in values):
            if len(values) != len(header):
                raise DatasetError(path, f"{len(values)} fields where the header has {len(header)}",
                                   "quote fields that contain commas; give every row one value per column",
                                   line=start)
            rows.append((start, dict(zip(header, values))))
        start = reader.line_num + 1
    return header, rows


def require_columns(path, header, needed) -> None:
    missing = [c for c in needed if c not in header]
    if missing:
        raise DatasetError(path, f"missing column(s) {', '.join(missing)} (the header has {', '.join(header)})",
                           f"add the column(s) {', '.join(missing)} to the header", line=1)


def parse_score(path, line: int, column: str, value: str) -> float:
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise DatasetError(path, f"{column} {value!r} is not a number", "write the score as a number, e.g. -0.4",
                           line=line)
    return score


def parse_class(path, line: int, column: str, value: str, classes) -> int:
    word = value.strip()
    if word not in classes:
        raise DatasetError(path, f"unknown {column} {value!r}", f"use one of: {', '.join(classes)}", line=line)
    return list(classes).index(word)


def validate(corpus: Corpus, origins: list[tuple[Path, int | None]]) -> Corpus:
    """Check what an adapter built before anyone uses it: unique ids, known splits, and every label declared
    by the spec and inside it (None = unlabelled). origins[i] is the (file, line) utterance i came from, so a
    problem is reported where the user can fix it. Returns the corpus unchanged."""
    if not corpus.utterances:
        raise DatasetError(corpus.spec.name, "no utterances to load",
                           "check that --root holds the corpus' label files and that they list utterances")
    specs = {spec.name: spec for spec in corpus.spec.labels}
    first_seen = {}
    for u, (path, line) in zip(corpus.utterances, origins, strict=True):
        if u.id in first_seen:
            seen_path, seen_line = first_seen[u.id]
            raise DatasetError(path, f"duplicate id {u.id!r} (first at {seen_path}, line {seen_line})",
                               "give every utterance its own id, or remove the repeated row", line=line)
        first_seen[u.id] = (path, line)
        if u.split not in SPLITS:
            raise DatasetError(path, f"{u.id}: unknown split {u.split!r}", f"use one of: {', '.join(SPLITS)}",
                               line=line)
        if set(u.labels) != set(specs):
            raise DatasetError(path, f"{u.id}: labels {sorted(u.labels)} differ from the corpus' {sorted(specs)}",
                               "give every row the same label columns", line=line)
        for name, value in u.labels.items():
            problem = _label_problem(specs[name], value)
            if problem:
                raise DatasetError(path, f"{u.id}: {name} {value!r} {problem}", "correct the label", line=line)
    return corpus


def _label_problem(spec: LabelSpec, value) -> str | None:
    if value is None:
        return None
    if spec.kind == "class":
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(spec.classes)
        return None if ok else f"is not a class id in 0..{len(spec.classes) - 1}"
    ok = isinstance(value, float) and spec.low <= value <= spec.high
    return None if ok else f"is outside [{spec.low}, {spec.high}]"
