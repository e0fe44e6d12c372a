"""The store header: one JSON document in the root group's attributes that makes a store self-describing."""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from importlib.metadata import version

from .schema import (SCHEMA_VERSION, CacheError, DatasetSpec, EncoderSpec, digest,
                               features_fingerprint)

ATTR = "egmf"


@dataclass(frozen=True)
class Header:
    dataset: DatasetSpec
    encoders: dict[str, EncoderSpec]  # modality -> how its features were made
    n_rows: int
    rows_per_shard: int  # S: the unit of parallel writing and of resume
    ids_digest: str  # sha256 over the row ids in order: which utterances, in which order
    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    egmf_version: str = field(default_factory=lambda: version("egmf"))

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoders)

    @property
    def features_fingerprint(self) -> str:
        return features_fingerprint(self.encoders)

    @property
    def fingerprint(self) -> str:
        """Identity of the content: same corpus rows, same labels, same features. Layout and dates excluded."""
        return digest({"schema": self.schema_version, "dataset": asdict(self.dataset),
                       "features": self.features_fingerprint, "n_rows": self.n_rows, "ids": self.ids_digest})

    def to_json(self) -> dict:
        d = asdict(self)
        d["fingerprint"] = self.fingerprint
        d["features_fingerprint"] = self.features_fingerprint
        return d

    @classmethod
    def from_json(cls, d: dict, where: str) -> "Header":
        got = d.get("schema_version")
        if got != SCHEMA_VERSION:
            raise CacheError(
                f"{where}: cache schema version {got}, this egmf reads version {SCHEMA_VERSION}. "
                f"Fix: re-extract it with this egmf version (egmf-extract ... --out NEW_STORE), "
                f"or use the egmf release that wrote it ({d.get('egmf_version', 'unknown')})")
        try:
            return cls(
                dataset=DatasetSpec.from_dict(d["dataset"]),
                encoders={m: EncoderSpec.from_dict(e) for m, e in d["encoders"].items()},
                n_rows=d["n_rows"], rows_per_shard=d["rows_per_shard"], ids_digest=d["ids_digest"],
                schema_version=got, created=d["created"], egmf_version=d["egmf_version"])
        except (KeyError, TypeError) as e:
            raise CacheError(f"{where}: the cache header is damaged ({type(e).__name__}: {e}). Fix: re-extract "
                             "the store, or copy it again from where it was made") from None

    def differences(self, store: "Header") -> list[str]:
        """Why this header (a run's request) and a store's header do not describe the same content."""
        out = []
        if asdict(self.dataset) != asdict(store.dataset):
            out.append(f"dataset: the store has {store.dataset.name} v{store.dataset.adapter_version}, "
                       f"this run has {self.dataset.name} v{self.dataset.adapter_version} (or other labels)")
        for m in sorted(set(self.encoders) | set(store.encoders)):
            mine, theirs = self.encoders.get(m), store.encoders.get(m)
            if mine is None or theirs is None:
                out.append(f"modality {m}: only {'the store' if mine is None else 'this run'} has it")
            elif mine.fingerprint() != theirs.fingerprint():
                out.append(f"{m} encoder: the store has {theirs.family}:{theirs.model_id} (weights "
                           f"{theirs.weights[:12]}, {theirs.params}), this run has {mine.family}:{mine.model_id} "
                           f"(weights {mine.weights[:12]}, {mine.params})")
        if (self.n_rows, self.ids_digest) != (store.n_rows, store.ids_digest):
            out.append(f"rows: the store has {store.n_rows} utterances, this run has {self.n_rows} "
                       "(or other ids, or another order)")
        return out


def ids_digest(ids) -> str:
    return digest(list(map(str, ids)))


def read_header(group, url: str) -> Header:
    """The header of an opened store; a Zarr group without one (some other Zarr data) is refused."""
    if ATTR not in group.attrs:
        raise CacheError(f"{url} is a Zarr group but not an EGMF cache (no '{ATTR}' header). Fix: give a store "
                         "written by egmf-extract or egmf-cache import-mmsa; to write a new one, an empty or new path")
    return Header.from_json(dict(group.attrs[ATTR]), url)
