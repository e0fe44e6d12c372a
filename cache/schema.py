"""What a cache says about itself: label specs, encoder fingerprints and the store fingerprint.

Everything here is plain data that round-trips through the Zarr group attributes as JSON, so a store
opened anywhere (local disk, HTTP, S3) tells exactly how its features were made.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

SCHEMA_VERSION = 1
MODALITIES = ("audio", "visual", "text")


class CacheError(Exception):
    """A store that cannot be used as asked; the message names the store and the fix."""


def digest(obj) -> str:
    """sha256 of the canonical JSON of obj: the same content gives the same hash on every machine."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks: weight files and pickles are large."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class LabelSpec:
    """One label column of a corpus: class ids with their names, or a score in [low, high]."""

    name: str  # e.g. "emotion", "sentiment", "sentiment_T"
    kind: str  # "class" (stored int16, -1 = unlabelled) or "score" (float32, NaN = unlabelled)
    classes: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 0.0

    def __post_init__(self):
        if self.kind not in ("class", "score"):
            raise ValueError(f"label {self.name!r}: kind must be 'class' or 'score', not {self.kind!r}")
        if self.kind == "class" and not self.classes:
            raise ValueError(f"label {self.name!r}: a class label needs its class names")

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSpec":
        return cls(d["name"], d["kind"], tuple(d.get("classes", ())), d.get("low", 0.0), d.get("high", 0.0))


@dataclass(frozen=True)
class EncoderSpec:
    """How one modality's features were made: enough to re-create them, and to refuse mixing them."""

    modality: str  # "audio" | "visual" | "text"
    family: str  # encoder module name in extract/encoders, e.g. "speech_ssl", "clip", "text"
    model_id: str  # hub id or local path as given
    weights: str  # sha256 of the weight files, or the hub revision
    dim: int  # feature size D
    max_steps: int  # T: longer sequences are pooled down to this
    params: dict = field(default_factory=dict)  # sample_rate / fps / max_frames / layer / pooling ...

    def fingerprint(self) -> str:
        # model_id is left out on purpose: the same weights under another path are the same features.
        d = asdict(self)
        d.pop("model_id")
        return digest(d)

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderSpec":
        return cls(**{k: d[k] for k in ("modality", "family", "model_id", "weights", "dim", "max_steps")},
                   params=dict(d.get("params", {})))


@dataclass(frozen=True)
class DatasetSpec:
    """The corpus side of a store: which adapter made the rows and which labels they carry."""

    name: str  # adapter name, e.g. "meld", "sims-v2"
    adapter_version: str
    task: str  # the label the model is trained to produce by default
    labels: tuple[LabelSpec, ...]

    def label(self, name: str) -> LabelSpec:
        for spec in self.labels:
            if spec.name == name:
                return spec
        raise KeyError(f"dataset {self.name!r} has no label {name!r} (it has {[l.name for l in self.labels]})")

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetSpec":
        return cls(d["name"], d["adapter_version"], d["task"], tuple(LabelSpec.from_dict(x) for x in d["labels"]))


def features_fingerprint(encoders: dict[str, EncoderSpec]) -> str:
    """Identity of the feature space: two stores with equal values can feed the same model."""
    return digest({m: e.fingerprint() for m, e in sorted(encoders.items())})
