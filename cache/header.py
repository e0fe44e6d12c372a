"""The store header: one JSON document in the root group's attributes that makes a store self-describing."""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from importlib.metadata import version

from .layout import check_arrays
from .schema import (SCHEMA_VERSION, CacheError, DatasetSpec, EncoderSpec, digest,
                               features_fingerprint)

ATTR = "egmf"
# A shared store is data only, and its header decides what the reader and writer allocate: sizes beyond these are
# a damaged or crafted header, refused before anything is allocated. Each is far above any corpus (MOSEI: 23k rows;
# MOSEI's unaligned audio 500 x 74; a whisper-large encoder 1500 x 1280 = 3.7 MiB a row).
MAX_ROWS = 100_000_000
MAX_ROW_BYTES = 256 << 20  # one utterance's float16 features of one modality
MAX_SHARD_BYTES = 2 << 30  # S rows of one modality: the writer packs a whole shard in RAM


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
            header = cls(
                dataset=DatasetSpec.from_dict(d["dataset"]),
                encoders={m: EncoderSpec.from_dict(e) for m, e in d["encoders"].items()},
                n_rows=d["n_rows"], rows_per_shard=d["rows_per_shard"], ids_digest=d["ids_digest"],
                schema_version=got, created=d["created"], egmf_version=d["egmf_version"])
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise CacheError(f"{where}: the cache header is damaged ({type(e).__name__}: {e}). {DAMAGED_FIX}") from None
        header.check_sizes(where)
        return header

    def check_sizes(self, where: str) -> None:
        """Refuse sizes no cache has, before any array is allocated from them."""
        def count(value, low: int, high: int) -> bool:
            return type(value) is int and low <= value <= high

        problems = []
        if not count(self.n_rows, 0, MAX_ROWS):
            problems.append(f"{self.n_rows!r} rows (at most {MAX_ROWS:,})")
        if not count(self.rows_per_shard, 1, MAX_ROWS):
            problems.append(f"{self.rows_per_shard!r} rows per shard")
        for m, e in self.encoders.items():
            if not (count(e.dim, 1, MAX_ROW_BYTES) and count(e.max_steps, 1, MAX_ROW_BYTES)):
                problems.append(f"{m} features of {e.max_steps!r} x {e.dim!r}")
            elif e.max_steps * e.dim * 2 > MAX_ROW_BYTES:
                problems.append(f"{m} features of {e.max_steps} x {e.dim} ({e.max_steps * e.dim * 2 >> 20} MiB a row, "
                                f"at most {MAX_ROW_BYTES >> 20})")
            elif count(self.rows_per_shard, 1, MAX_ROWS) and \
                    self.rows_per_shard * e.max_steps * e.dim * 2 > MAX_SHARD_BYTES:
                problems.append(f"{m} shards of {self.rows_per_shard} x {e.max_steps} x {e.dim} "
                                f"(at most {MAX_SHARD_BYTES >> 30} GiB a shard)")
        if problems:
            raise CacheError(f"{where}: the cache header declares {'; '.join(problems)}: no cache has that, the "
                             f"header is damaged or was not written by egmf. {DAMAGED_FIX}")

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


DAMAGED_FIX = "Fix: re-extract the store, or copy it again from where it was made"


def ids_digest(ids) -> str:
    return digest(list(map(str, ids)))


def read_header(group, url: str) -> Header:
    """The header of an opened store, checked against the arrays' own metadata; a Zarr group without one (some
    other Zarr data), a header with absurd sizes and arrays that disagree with it are refused."""
    if ATTR not in group.attrs:
        raise CacheError(f"{url} is a Zarr group but not an EGMF cache (no '{ATTR}' header). Fix: give a store "
                         "written by egmf-extract or egmf-cache import-mmsa; to write a new one, an empty or new path")
    attrs = group.attrs[ATTR]
    if not isinstance(attrs, dict):
        raise CacheError(f"{url}: the cache header is damaged (a {type(attrs).__name__}). {DAMAGED_FIX}")
    header = Header.from_json(dict(attrs), url)
    check_arrays(group, header, url)
    return header
