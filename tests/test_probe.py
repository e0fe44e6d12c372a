"""egmf-probe: pooled features, the linear baseline per modality and all together, its command."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from egmf.cache.reader import Cache
from egmf.cache.writer import CacheWriter
from egmf.pipeline.cli import probe_app
from egmf.pipeline.data import load_split, task_of
from egmf.pipeline.probe import fusion_probe, pooled_features, probe_cache

from synthetic_cache import EMOTIONS, encoders, rows, spec


def informative_cache(url, kind="class", n=120):
    """Audio whose mean encodes the label (class or score), visual pure noise; every 7th row has no audio."""
    meta, labels = rows(n, kind=kind)
    target = labels["emotion" if kind == "class" else "sentiment"]
    rng = np.random.default_rng(1)
    w = CacheWriter.create(url, spec(kind), encoders(("audio", "visual")), meta, labels, 16)

    def audio(i):
        if i % 7 == 6:
            return None
        signal = np.eye(4)[target[i]] * 2 if kind == "class" else np.full(4, target[i])
        return (signal + 0.3 * rng.standard_normal((3 + i % 3, 4))).astype(np.float32)

    for a, b in w.pending_blocks():
        w.write_block(a, {"audio": [audio(i) for i in range(a, b)],
                          "visual": [rng.standard_normal((2 + i % 3, 3)).astype(np.float32) for i in range(a, b)]},
                      {"audio": ["" if i % 7 != 6 else "no audio track" for i in range(a, b)],
                       "visual": [""] * (b - a)})
    return url


def test_pooled_features_are_mean_and_std_over_the_valid_steps(tmp_path):
    cache = Cache.open(informative_cache(str(tmp_path / "c")))
    data = load_split(cache, "train", ["audio", "visual"], task_of(cache), 0)
    pooled = pooled_features(data, ["audio", "visual"])
    assert pooled.shape == (len(data), 2 * 4 + 2 * 3)
    for k in range(len(data)):
        n = data.lengths["audio"][k]
        steps = data.features["audio"][k, :n].astype(np.float32)
        expected = np.concatenate([steps.mean(0), steps.std(0)]) if n else np.zeros(8)
        np.testing.assert_allclose(pooled[k, :8], expected, atol=1e-5)
        m = data.lengths["visual"][k]
        np.testing.assert_allclose(pooled[k, 11:], data.features["visual"][k, :m].astype(np.float32).std(0),
                                   atol=1e-5)


def test_probe_finds_the_informative_modality(tmp_path):
    result = probe_cache(informative_cache(str(tmp_path / "c")), splits=("dev", "test"))
    assert set(result["settings"]) == {"audio", "visual", "all"}
    audio, visual, both = (result["settings"][s] for s in ("audio", "visual", "all"))
    # Rows without audio (1 in 7) pool to zeros, so audio alone cannot be perfect; with 3 classes chance is ~33%.
    assert audio["dev"]["Accuracy"] > 0.75 and both["dev"]["Accuracy"] > 0.75
    assert visual["dev"]["Accuracy"] < 0.5
    assert audio["test"]["N"] == 40 and set(audio["dev"]["Per_class_F1"]) == set(EMOTIONS)


def test_probe_regresses_scores_with_the_field_metrics(tmp_path):
    result = probe_cache(informative_cache(str(tmp_path / "s"), kind="score"), modalities=["audio"])
    dev = result["settings"]["audio"]["dev"]
    assert set(result["settings"]) == {"audio"} and "ridge" in result["model"]
    assert dev["Corr"] > 0.8 and dev["MAE"] < 0.3 and "Mult_acc_5" in dev  # the SIMS convention of [-1, 1]


def test_probe_command_writes_json_and_a_table(tmp_path):
    store = informative_cache(str(tmp_path / "c"))
    out = tmp_path / "probe.json"
    result = CliRunner().invoke(probe_app, [store, "--modalities", "audio", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| audio | dev |" in result.output
    assert json.loads(out.read_text())["settings"]["audio"]["dev"]["Accuracy"] > 0.75
    bad = CliRunner().invoke(probe_app, [store, "--modalities", "text"])
    assert bad.exit_code == 1 and "not in the cache" in bad.output


def test_fusion_probe_learns_the_informative_modality_and_keeps_its_best_dev_epoch(tmp_path):
    store = informative_cache(str(tmp_path / "c"))
    result = fusion_probe(store, splits=("dev", "test"), preset="tiny", epochs=8, batch_size=8, lr=3e-3,
                          progress=False)
    both = result["settings"]["all"]
    assert both["dev"]["Accuracy"] > 0.7 and both["test"]["N"] == 40  # chance ~33%: the fusion reads the audio
    assert both["dev"]["Weighted_F1"] == max(result["dev_score_by_epoch"])  # scored with the best epoch's weights
    assert "best dev epoch" in result["model"] and "no LLM" in result["model"]
    noise = fusion_probe(store, modalities=["visual"], preset="tiny", epochs=8, batch_size=8, lr=3e-3, progress=False)
    assert noise["settings"]["visual"]["dev"]["Accuracy"] < 0.6


def test_the_fusion_probe_with_a_weight_average_scores_and_keeps_the_average(tmp_path):
    store = informative_cache(str(tmp_path / "c"))
    args = dict(preset="tiny", epochs=3, batch_size=8, lr=3e-3, progress=False)
    plain, averaged = fusion_probe(store, **args), fusion_probe(store, ema_decay=0.9, **args)
    assert averaged["dev_score_by_epoch"] != plain["dev_score_by_epoch"]  # the same seed: the average is scored
    assert averaged["settings"]["all"]["dev"]["Weighted_F1"] == max(averaged["dev_score_by_epoch"])
    assert "weight average decay 0.9" in averaged["model"] and "weight average" not in plain["model"]


def test_probe_command_runs_the_fusion_probe(tmp_path):
    store = informative_cache(str(tmp_path / "s"), kind="score")
    out = tmp_path / "fusion.json"
    result = CliRunner().invoke(probe_app, [store, "--fusion", "--preset", "tiny", "--epochs", "2",
                                            "--modalities", "audio", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| audio | dev |" in result.output and "MAE" in result.output
    assert len(json.loads(out.read_text())["dev_score_by_epoch"]) == 2


SPEAKER = r"^s(\d+)-"


def speaker_cache(url, n=240):
    """Audio = a large offset of the clip's speaker (12 speakers of 20 clips, in every split) + a small one of its
    class + noise: across speakers the class is hidden under the speaker, within a speaker it is plain."""
    meta, labels = rows(n)
    meta["id"] = [f"s{i // 20:02d}-clip{i:04d}" for i in range(n)]
    rng = np.random.default_rng(2)
    offsets = 4 * rng.standard_normal((n // 20, 4))
    w = CacheWriter.create(url, spec("class"), encoders(("audio",)), meta, labels, 16)
    for a, b in w.pending_blocks():
        w.write_block(a, {"audio": [(offsets[i // 20] + np.eye(4)[labels["emotion"][i]]
                                     + 0.3 * rng.standard_normal((3, 4))).astype(np.float32) for i in range(a, b)]},
                      {"audio": [""] * (b - a)})
    return url


def test_per_speaker_standardisation_removes_each_speakers_offset_and_the_probe_gains(tmp_path):
    from egmf.cache.schema import CacheError
    url = speaker_cache(str(tmp_path / "c"))
    cache = Cache.open(url)
    data = load_split(cache, "dev", ["audio"], task_of(cache), 0, speaker_pattern=SPEAKER)
    speakers = np.array([clip[:3] for clip in cache.meta["id"][data.rows]])
    for who in np.unique(speakers):
        steps = data.features["audio"][speakers == who, :3].astype(np.float32).reshape(-1, 4)  # the 3 valid steps
        assert not data.features["audio"][speakers == who, 3:].any()  # padding stays 0
        np.testing.assert_allclose(steps.mean(0), 0, atol=2e-3)
        np.testing.assert_allclose(steps.std(0), 1, atol=2e-3)
    plain = probe_cache(url)["settings"]["audio"]["dev"]["Accuracy"]
    result = probe_cache(url, speaker_pattern=SPEAKER)
    assert result["settings"]["audio"]["dev"]["Accuracy"] > plain + 0.2, plain
    assert SPEAKER in result["model"]
    with pytest.raises(CacheError, match="clip id 's00-clip0000' does not match the speaker pattern"):
        load_split(cache, "train", ["audio"], task_of(cache), 0, speaker_pattern=r"^x(\d+)")
    with pytest.raises(CacheError, match="not a regular expression"):
        load_split(cache, "train", ["audio"], task_of(cache), 0, speaker_pattern="(")
