"""Stage two through its commands: train, evaluate, predict, unified tasks, seeds, DDP (tiny model preset)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import synthetic_cache as sc
from egmf.cache.reader import Cache
from egmf.cache.schema import CacheError
from egmf.pipeline.cli import eval_app, predict_app, train_app
from egmf.pipeline.train import TrainConfig, Trainer, evaluate_run

runner = CliRunner()


def _train(cache, out, **kw):
    cfg = dict(caches=[str(cache)], out=str(out), preset="tiny", epochs=2, batch_size=8, progress=False)
    cfg.update(kw)
    return Trainer(TrainConfig(**cfg)).fit()


@pytest.fixture(scope="module")
def class_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("c") / "class"
    sc.write(path, n=30, rows_per_shard=8)
    return path


@pytest.fixture(scope="module")
def score_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("s") / "score"
    sc.write(path, n=30, rows_per_shard=8, kind="score")
    return path


def test_train_writes_a_self_describing_run_and_eval_scores_it(class_cache, tmp_path):
    run = tmp_path / "run"
    r = runner.invoke(train_app, ["--cache", str(class_cache), "--out", str(run), "--preset", "tiny",
                                  "--epochs", "2", "--batch-size", "8", "--history-tokens", "12",
                                  "--checkpoint-every", "3"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output[r.output.index("{"):])
    assert summary["steps"] == 2 * 2 and summary["trainable_parameters"] > 0  # 10 train rows, batch 8
    config = json.loads((run / "config.json").read_text())
    assert config["modalities"] == ["audio", "visual", "text"]
    assert config["model"]["modality_dims"] == {"audio": 4, "visual": 3, "text": 8}  # read from the cache
    assert config["model"]["max_history_tokens"] == 12 and config["train"]["checkpoint_every"] == 3
    caches = json.loads((run / "caches.json").read_text())
    assert caches[0]["fingerprint"] == Cache.open(class_cache).fingerprint
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and "synthetic/emotion" in history[0]["dev"]
    assert (run / "model" / "adapter" / "adapter_config.json").exists()
    assert not any(p.stat().st_size > 5e6 for p in (run / "model").rglob("*"))  # trainable weights only
    r = runner.invoke(eval_app, ["--run", str(run), "--cache", str(class_cache), "--split", "test"])
    assert r.exit_code == 0, r.output
    assert "Weighted_F1" in r.output and "parse_failure_rate" in r.output
    result = json.loads((run / "metrics-test.json").read_text())
    assert result["metrics"]["N"] == 10 and result["metrics"]["parse_failure_rate"] == 0
    assert {p.name for p in (run / "plots").iterdir()} >= {
        "learning-curves-synthetic-emotion.png", "confusion-synthetic-emotion-test.png",
        "expert-gates-synthetic-emotion-test.png"}


def test_a_run_refuses_other_caches_and_eval_refuses_other_encoders(class_cache, tmp_path):
    run = tmp_path / "run"
    _train(class_cache, run, epochs=1)
    other = tmp_path / "other"
    sc.write(other, n=33, rows_per_shard=8)
    with pytest.raises(CacheError, match="was trained on .*Fix: train into a new --out"):
        _train(other, run, epochs=1)
    foreign = tmp_path / "foreign"
    sc.write(foreign, n=30, rows_per_shard=8, weights="other-weights")
    with pytest.raises(CacheError, match="features from other encoders"):
        evaluate_run(str(run), str(foreign), "test")


def test_regression_and_unified_training_over_two_caches(class_cache, score_cache, tmp_path):
    summary = _train(class_cache, tmp_path / "uni", caches=[str(class_cache), str(score_cache)], epochs=1)
    assert set(summary["best_dev"]) == {"synthetic/emotion", "synthetic/sentiment"}
    result = evaluate_run(str(tmp_path / "uni"), str(score_cache), "test")
    m = result["metrics"]
    assert result["task"] == "synthetic/sentiment" and m["parse_failure_rate"] == 0
    assert {"Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "MAE", "Corr"} <= set(m)  # SIMS convention for [-1, 1]


def test_several_seeds_give_mean_and_std(class_cache, tmp_path):
    r = runner.invoke(train_app, ["--cache", str(class_cache), "--out", str(tmp_path / "s"), "--preset", "tiny",
                                  "--epochs", "1", "--seeds", "1,2"])
    assert r.exit_code == 0, r.output
    seeds = json.loads((tmp_path / "s" / "seeds.json").read_text())
    acc = seeds["dev"]["synthetic/emotion"]["Accuracy"]
    runs = [seeds["runs"][s]["best_dev"]["synthetic/emotion"]["Accuracy"] for s in ("1", "2")]
    assert acc["mean"] == pytest.approx(sum(runs) / 2) and acc["std"] == pytest.approx(abs(runs[0] - runs[1]) / 2)
    assert (tmp_path / "s" / "seed-1" / "model").is_dir() and (tmp_path / "s" / "seed-2" / "model").is_dir()


def test_text_only_training_on_a_multimodal_cache(class_cache, tmp_path):
    _train(class_cache, tmp_path / "t", modalities=["text"], epochs=1)
    assert json.loads((tmp_path / "t" / "config.json").read_text())["modalities"] == ["text"]
    with pytest.raises(CacheError, match="not in every cache"):
        _train(class_cache, tmp_path / "x", modalities=["smell"], epochs=1)


@pytest.mark.slow
def test_ddp_training_with_two_processes(class_cache, tmp_path):
    bindir = os.path.dirname(sys.executable)
    torchrun, train = shutil.which("torchrun", path=bindir), shutil.which("egmf-train", path=bindir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", train,
                           "--cache", str(class_cache), "--out", str(tmp_path / "ddp"), "--preset", "tiny",
                           "--epochs", "2", "--batch-size", "2"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["summary"]
    # 10 train rows / batch 2 = 5 batches, cut to 4 so both ranks step together: 2 per rank and epoch
    assert summary["steps"] == 2 * 2


def test_predict_a_clip_with_the_runs_own_encoders(tmp_path):
    from egmf.extract.run import ExtractConfig, extract
    cache = tmp_path / "demo"
    extract(ExtractConfig("demo", tmp_path / "data", str(cache), preset="tiny", rows_per_shard=8, progress=False,
                          dataset_options={"n_clips": 21, "progress": False}))
    _train(cache, tmp_path / "run", epochs=1)
    clip = next((tmp_path / "data" / "clips").glob("*.mp4"))
    r = runner.invoke(predict_app, [str(clip), "--run", str(tmp_path / "run"), "--text", "I can't believe it!"])
    assert r.exit_code == 0, r.output
    answer = r.output.split("demo/emotion: ")[1].split()[0]
    assert answer in ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
    assert "expert gates: local" in r.output


def test_transcripts_and_earlier_turns_reach_the_prompt_only_with_the_text_modality(class_cache):
    from egmf.pipeline.data import BatchStream, load_split, task_of
    cache = Cache.open(class_cache)
    task = task_of(cache)
    with_text = load_split(cache, "train", ["text"], task, 0, context_turns=2)
    assert with_text.texts[0] == "utterance 0 你好"
    # Train rows are 0, 3, 6, ...; dialogues hold rows 4k..4k+3, so row 3 follows row 0 and row 15 row 12.
    batch = next(iter(BatchStream([with_text], len(with_text), shuffle=False)))
    assert batch.history[1] == ["utterance 0 你好"] and batch.history[5] == ["utterance 12 你好"]
    assert batch.history[0] == batch.history[2] == []
    without = load_split(cache, "train", ["audio", "visual"], task, 0, context_turns=2)
    assert set(without.texts) == {""}
    assert next(iter(BatchStream([without], len(without), shuffle=False))).history == [[]] * len(without)
