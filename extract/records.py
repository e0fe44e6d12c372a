"""The utterance record every dataset adapter returns, and the error every adapter raises."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from egmf.cache.schema import DatasetSpec


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
    features: dict = field(default_factory=dict)  # modality -> released .npy, imported instead of encoding (CHERMA)


@dataclass(frozen=True)
class Corpus:
    """What an adapter's load() returns: the label schema and the validated records."""

    spec: DatasetSpec
    utterances: list[Utterance]
