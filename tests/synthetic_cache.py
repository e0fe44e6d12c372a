"""Small stores with known contents, written through the real CacheWriter."""
from __future__ import annotations

import numpy as np

from egmf.cache.schema import DatasetSpec, EncoderSpec, LabelSpec
from egmf.cache.writer import CacheWriter

EMOTIONS = ("neutral", "joy", "anger")
DIMS = {"audio": (6, 4), "visual": (5, 3), "text": (7, 8)}  # modality -> (max_steps, dim)


def encoders(modalities=("audio", "visual", "text"), weights="w0") -> dict[str, EncoderSpec]:
    return {m: EncoderSpec(m, "test", f"test-{m}", weights, dim=DIMS[m][1], max_steps=DIMS[m][0],
                           params={"seed": 0}) for m in modalities}


def spec(kind="class") -> DatasetSpec:
    if kind == "class":
        return DatasetSpec("synthetic", "1", "emotion", (LabelSpec("emotion", "class", EMOTIONS),))
    return DatasetSpec("synthetic", "1", "sentiment", (LabelSpec("sentiment", "score", low=-1.0, high=1.0),))


def rows(n: int, seed: int = 0, kind="class"):
    rng = np.random.default_rng(seed)
    splits = np.array(["train", "dev", "test"])[np.arange(n) % 3]
    meta = {"id": [f"clip{i:04d}" for i in range(n)], "split": splits.tolist(),
            "text": [f"utterance {i} 你好" for i in range(n)], "language": ["en"] * n,
            "dialogue": [f"d{i // 4}" for i in range(n)], "turn": [i % 4 for i in range(n)],
            "speaker": [("Ross", "Rachel", "Ross", "")[i % 4] for i in range(n)]}
    if kind == "class":
        labels = {"emotion": [int(v) for v in rng.integers(0, len(EMOTIONS), n)]}
    else:
        labels = {"sentiment": [round(float(v), 1) for v in rng.uniform(-1, 1, n)]}
    return meta, labels


def features(i: int, modality: str) -> np.ndarray | None:
    """Deterministic features of row i; every 5th row has no audio."""
    t, d = DIMS[modality]
    if modality == "audio" and i % 5 == 4:
        return None
    length = 1 + (i * 7 + len(modality)) % t
    rng = np.random.default_rng(i * 31 + len(modality))
    return rng.standard_normal((length, d)).astype(np.float32)


def write(url, n: int = 20, rows_per_shard: int = 4, modalities=("audio", "visual", "text"), kind="class",
          blocks=None, weights="w0") -> CacheWriter:
    meta, labels = rows(n, kind=kind)
    w = CacheWriter.create(url, spec(kind), encoders(modalities, weights), meta, labels, rows_per_shard)
    for a, b in (w.pending_blocks() if blocks is None else blocks):
        w.write_block(a, {m: [features(i, m) for i in range(a, b)] for m in modalities},
                      {m: ["" if features(i, m) is not None else "no audio track" for i in range(a, b)]
                       for m in modalities})
    return w
