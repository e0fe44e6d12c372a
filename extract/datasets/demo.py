"""The built-in demo corpus (its generator: extract/demo_corpus): generated into its root the first time, then
loaded like any other corpus. Labels: the 7 MELD emotions (task "emotion") and a sentiment score in [-1, 1]."""
from __future__ import annotations

from pathlib import Path

from ...cache.schema import DatasetSpec, LabelSpec
from ..demo_corpus.generate import COLUMNS, GENERATOR_VERSION, generate, is_generated
from ..demo_corpus.plan import EMOTIONS, DemoConfig
from ..records import Corpus, DatasetError, Utterance, parse_class, parse_score, read_csv, require_columns, validate

# The generator's version is the adapter's: new clips make the caches extracted from the old ones stale.
SPEC = DatasetSpec("demo", GENERATOR_VERSION, "emotion", (
    LabelSpec("emotion", "class", EMOTIONS),
    LabelSpec("sentiment", "score", low=-1.0, high=1.0),
))


def load(root, *, n_clips: int = 350, seed: int = 0, size: int = 96, fps: int = 10,
         progress: bool = True) -> Corpus:
    """The demo corpus in root, generated there first when root has none made with these parameters."""
    root = Path(root)
    cfg = DemoConfig(n_clips=n_clips, seed=seed, size=size, fps=fps)
    if not is_generated(root, cfg):
        generate(root, cfg, progress)
    path = root / "labels.csv"
    header, rows = read_csv(path)
    require_columns(path, header, COLUMNS)
    utterances, origins = [], []
    for line, row in rows:
        media = root / "clips" / f"{row['id']}.mp4"
        if not media.is_file():
            raise DatasetError(path, f"clip {media} missing", f"delete {root / 'manifest.json'} and run again to "
                               "generate the demo corpus anew", line=line)
        utterances.append(Utterance(
            id=row["id"], split=row["split"], text=row["text"], language=row["language"],
            labels={"emotion": parse_class(path, line, "emotion", row["emotion"], EMOTIONS),
                    "sentiment": parse_score(path, line, "sentiment", row["sentiment"])},
            media=media))
        origins.append((path, line))
    return validate(Corpus(SPEC, utterances), origins)
