"""Stage two through its commands: train, evaluate, predict, unified tasks, seeds, DDP (tiny model preset)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import synthetic_cache as sc
from egmf.cache.reader import Cache
from egmf.cache.schema import CacheError
from egmf.pipeline.cli import eval_app, predict_app, train_app
from egmf.pipeline.averaging import WeightAverage
from egmf.pipeline.evaluate import evaluate_run
from egmf.pipeline.model import ModelConfig
from egmf.pipeline.runfolder import RunFolder
from egmf.pipeline.train import ConfigError, TrainConfig, Trainer

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


def test_the_same_seed_trains_bit_identical_weights_and_metrics_and_another_seed_does_not(class_cache, tmp_path):
    def trained(name, seed):
        _train(class_cache, tmp_path / name, seed=seed)
        weights = torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["model"]  # all trainable ones
        history = json.loads((tmp_path / name / "metrics.json").read_text())["history"]  # losses, dev metrics
        return weights, history

    (first, history), (again, history_again), (other, history_other) = (
        trained("a", 0), trained("again", 0), trained("other", 1))
    assert first.keys() == again.keys() == other.keys() and len(first) > 10  # LoRA, fusion, gates, tokens
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert history == history_again  # float equality: bit-identical losses and metrics, not merely close ones
    assert sum(not torch.equal(first[k], other[k]) for k in first) > len(first) // 2
    assert [h["train_loss"] for h in history] != [h["train_loss"] for h in history_other]


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
    r = runner.invoke(predict_app, [str(clip), "--run", str(tmp_path / "run"), "--text", "hi", "--speaker", "Ross"])
    assert r.exit_code != 0 and "trained without speaker names" in r.output


def test_transcripts_and_earlier_turns_reach_the_prompt_only_with_the_text_modality(class_cache):
    from egmf.pipeline.data import BatchStream, load_split, task_of
    cache = Cache.open(class_cache)
    task = task_of(cache)
    with_text = load_split(cache, "train", ["text"], task, 0, context_turns=2)
    assert with_text.texts[0] == "utterance 0 你好"
    # Train rows are 0, 3, 6, ...; dialogues hold rows 4k..4k+3, so row 3 follows row 0 and row 15 row 12.
    batch = next(iter(BatchStream([with_text], len(with_text), shuffle=False)))
    assert batch.history[1] == [("", "utterance 0 你好")] and batch.history[5] == [("", "utterance 12 你好")]
    assert batch.history[0] == batch.history[2] == []
    without = load_split(cache, "train", ["audio", "visual"], task, 0, context_turns=2)
    assert set(without.texts) == {""}
    assert next(iter(BatchStream([without], len(without), shuffle=False))).history == [[]] * len(without)


# --- devices, options, caches that do not fit together -------------------------------------------------------------

def test_under_torchrun_each_process_takes_its_own_gpu(monkeypatch):
    from egmf.weights import pick_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    torchrun = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}  # second process of the second machine
    assert pick_device("auto", torchrun) == torch.device("cuda", 1)
    assert pick_device("cuda", torchrun) == torch.device("cuda", 1)
    assert pick_device("cuda:0", torchrun) == torch.device("cuda", 0)  # asked for by index: kept
    assert pick_device("cpu", torchrun) == torch.device("cpu")
    assert pick_device("auto", {"WORLD_SIZE": "1", "LOCAL_RANK": "0"}) == torch.device("cuda")
    assert pick_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto", torchrun) == torch.device("cpu")
    with pytest.raises(ValueError, match="torch sees no CUDA GPU. Fix: use --device cpu or auto"):
        pick_device("cuda")


@pytest.mark.parametrize("option, value, message", [
    ("--epochs", "0", "--epochs 0: must be at least 1"),
    ("--max-steps", "0", "--max-steps 0: must be at least 1. Fix: leave --max-steps out for no limit"),
    ("--checkpoint-every", "-1", "--checkpoint-every -1: must be at least 0"),
    ("--patience", "0", "--patience 0: must be at least 1"),
    ("--precision", "fp16", "--precision fp16: unknown. Fix: choose one of auto, fp32, bf16"),
    ("--fusion-warmup", "-1", "--fusion-warmup -1: must be at least 0. Fix: pass 0 to train the fusion with the LLM"),
    ("--speaker-pattern", "(", "--speaker-pattern '(': not a regular expression"),
    ("--class-weighting", "-0.5", "--class-weighting -0.5: must be at least 0. Fix: pass 0 for unweighted"),
    ("--ema-decay", "1", "--ema-decay 1.0: must be at least 0 and below 1. Fix: pass 0 to keep the trained weights"),
])
def test_options_out_of_range_are_explained_before_anything_runs(class_cache, tmp_path, option, value, message):
    r = runner.invoke(train_app, ["--cache", str(class_cache), "--out", str(tmp_path / "run"), "--preset", "tiny",
                                  option, value])
    assert r.exit_code == 1 and message in r.stderr and "Fix:" in r.stderr, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)  # an explanation, not a traceback
    assert not (tmp_path / "run").exists()


def test_checkpoint_every_0_keeps_only_the_epoch_checkpoints(class_cache, tmp_path, monkeypatch):
    saved, save = [], RunFolder.save_checkpoint
    monkeypatch.setattr(RunFolder, "save_checkpoint",
                        lambda self, model, opt, sched, state, *rest: saved.append(state["step"]) or save(
                            self, model, opt, sched, state, *rest))
    _train(class_cache, tmp_path / "run", batch_size=2, checkpoint_every=0)  # 5 steps per epoch
    assert saved == [5, 10]


def test_caches_with_other_feature_sizes_are_refused_naming_each(class_cache, tmp_path, monkeypatch):
    monkeypatch.setitem(sc.DIMS, "text", (7, 6))
    other = tmp_path / "other"
    sc.write(other, n=30, rows_per_shard=8, kind="score")
    with pytest.raises(CacheError, match=rf"text features differ in size \({class_cache}: 8, {other}: 6\).*"
                                         "Fix: extract every corpus with the same --preset"):
        Trainer(TrainConfig(caches=[str(class_cache), str(other)], out=str(tmp_path / "run"), preset="tiny"))
    Trainer(TrainConfig(caches=[str(class_cache), str(other)], out=str(tmp_path / "run"), preset="tiny",
                        modalities=["audio", "visual"]))  # without text they fit


def test_checkpoints_carry_the_cuda_rng_state_where_there_is_cuda(monkeypatch):
    from egmf.pipeline import runfolder
    generator = torch.tensor([7, 1], dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: generator.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", restored.append)
    state = runfolder._rng_state()
    runfolder._set_rng_state(state)
    assert len(restored) == 1 and torch.equal(restored[0], generator)
    runfolder._set_rng_state({k: v for k, v in state.items() if k != "cuda"})  # a checkpoint made without CUDA
    assert len(restored) == 1


# --- stopping mid-epoch and resuming -------------------------------------------------------------------------------

def test_a_max_steps_stop_mid_epoch_neither_counts_as_an_epoch_nor_repeats_in_the_history(class_cache, tmp_path,
                                                                                      monkeypatch):
    # Every dev score is equal, so each finished epoch after the first counts towards early stopping.
    monkeypatch.setattr("egmf.pipeline.train.primary_score", lambda task, metrics: 0.0)
    run = tmp_path / "run"

    def checkpoint():
        return torch.load(run / "checkpoint.pt", weights_only=True)["state"]

    def history():
        records = json.loads((run / "metrics.json").read_text())["history"]
        return [(h["epoch"], h["step"], h["finished"]) for h in records]

    _train(class_cache, run, epochs=3, patience=3, batch_size=2, max_steps=2)  # 5 steps per epoch
    assert history() == [(1, 2, False)] and (run / "model").is_dir()  # a model to evaluate all the same
    _train(class_cache, run, epochs=3, patience=3, batch_size=2, max_steps=7)
    assert history() == [(1, 5, True), (2, 7, False)]
    assert checkpoint()["bad_epochs"] == 0 and checkpoint()["epoch"] == 1
    summary = _train(class_cache, run, epochs=3, patience=3, batch_size=2)
    assert history() == [(1, 5, True), (2, 10, True), (3, 15, True)]
    assert checkpoint()["bad_epochs"] == 2 and summary["steps"] == 15 and summary["best_epoch"] == 1


# --- several seeds and processes -----------------------------------------------------------------------------------

def test_seeds_json_is_written_by_the_first_process_only(tmp_path, monkeypatch):
    from egmf.pipeline import train

    class Fake:
        def __init__(self, cfg):
            self.seed = cfg.seed

        def fit(self):
            return {"best_dev": {"t": {"Accuracy": self.seed / 10, "Corr": None if self.seed == 2 else 0.5}}}

    monkeypatch.setattr(train, "Trainer", Fake)
    cfg = TrainConfig(caches=["c"], out=str(tmp_path / "r"))
    monkeypatch.setenv("RANK", "1")
    result = train.train_seeds(cfg, [1, 2])
    assert not (tmp_path / "r" / "seeds.json").exists()
    assert result["dev"] == {"t": {"Accuracy": {"mean": pytest.approx(0.15), "std": pytest.approx(0.05)}}}
    monkeypatch.setenv("RANK", "0")
    train.train_seeds(cfg, [1, 2])
    assert (tmp_path / "r" / "seeds.json").exists()


@pytest.mark.parametrize("world", [2, 3, 5])
def test_every_process_gets_as_many_batches_even_with_fewer_batches_than_processes(class_cache, world):
    from egmf.pipeline.data import BatchStream, load_split, task_of
    cache = Cache.open(class_cache)
    data = load_split(cache, "train", ["text"], task_of(cache), 0)  # 10 rows: 2 batches of 8
    counts = [len(BatchStream([data], 8, shuffle=True, rank=r, world=world)) for r in range(world)]
    assert counts == [1] * world
    rows = [r for k in range(world) for b in BatchStream([data], 8, shuffle=False, rank=k, world=world)
            for r in b.rows.tolist()]
    assert set(rows) <= set(data.rows.tolist()) and len(rows) >= 8


def test_eval_uses_the_runs_precision(class_cache, tmp_path, monkeypatch):
    from egmf.pipeline import evaluate
    _train(class_cache, tmp_path / "run", epochs=1, precision="fp32")
    asked = []
    monkeypatch.setattr(evaluate, "use_bf16", lambda precision, device: asked.append(precision) or False)
    evaluate_run(str(tmp_path / "run"), str(class_cache), "test")
    assert asked == ["fp32"]


# --- the dialogue context's pooled features --------------------------------------------------------------------------

def test_pooled_context_is_computed_once_and_only_for_splits_with_context(class_cache, monkeypatch):
    from egmf.pipeline import data as data_module
    from egmf.pipeline.data import BatchStream, load_split, task_of
    cache = Cache.open(class_cache)
    calls, pool_steps = [], data_module.pool_steps
    monkeypatch.setattr(data_module, "pool_steps", lambda x, lengths: calls.append(1) or pool_steps(x, lengths))
    plain = load_split(cache, "dev", ["audio", "text"], task_of(cache), 0, context_turns=0)
    batch = next(iter(BatchStream([plain], 4, shuffle=False)))
    assert batch.context["audio"].shape == (4, 0, 4) and not calls  # no context wanted: nothing pooled
    dialogue = load_split(cache, "dev", ["audio", "text"], task_of(cache), 0, context_turns=2)
    for _ in range(3):  # as in three dev evaluations
        batches = list(BatchStream([dialogue], 4, shuffle=False))
    assert len(calls) == 2  # once per modality
    for m in ("audio", "text"):  # some rows lack audio: they pool to zeros
        x, lengths = dialogue.features[m], dialogue.lengths[m]
        expected = np.stack([x[i, :n].astype(np.float32).mean(0) if n else np.zeros(x.shape[2], np.float32)
                             for i, n in enumerate(lengths)])
        np.testing.assert_allclose(dialogue.pooled()[m], expected, rtol=1e-6, atol=1e-6)
    row = int(np.flatnonzero(dialogue.context[:4, -1] >= 0)[0])  # the first row of the batch after another turn
    turn = dialogue.context[row, -1]
    assert batches[0].context_mask[row, -1] and expected[turn].any()
    np.testing.assert_allclose(batches[0].context["text"][row, -1].numpy(), expected[turn], rtol=1e-6)


# --- the model folder describes the model ----------------------------------------------------------------------------

def test_the_model_folder_alone_says_what_the_model_reads_and_on_which_llm(class_cache, tmp_path, monkeypatch):
    from egmf.llm.loading import llm_sha256
    from egmf.pipeline import evaluate

    run = tmp_path / "run"
    r = runner.invoke(train_app, ["--cache", str(class_cache), "--out", str(run), "--preset", "tiny", "--epochs", "1",
                                  "--context-turns", "1", "--lora-r", "4", "--lora-dropout", "0",
                                  "--lora-targets", "attention,down_proj"])
    assert r.exit_code == 0, r.output
    saved = json.loads((run / "model" / "model.json").read_text())
    assert saved["format"] == 2 and saved["llm"] == "random:llama-tiny"  # a reference, no machine's path
    assert saved["llm_sha256"] == llm_sha256("random:llama-tiny")
    assert saved["context_turns"] == 1 and saved["max_history_tokens"] == 48
    assert (saved["lora_r"], saved["lora_alpha"]) == (4, 16)  # --lora-r leaves the preset's alpha alone
    assert saved["lora_dropout"] == 0.0 != ModelConfig.lora_dropout
    assert saved["lora_targets"] == ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
    from egmf.pipeline.runfolder import RunFolder
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in RunFolder(run).load_model().llm.named_parameters()
               if "lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "down_proj"}  # the saved adapter has them all
    asked = []
    real = evaluate.load_split
    monkeypatch.setattr(evaluate, "load_split", lambda *a: asked.append(a[2:]) or real(*a))
    evaluate_run(str(run), str(class_cache), "dev")
    # modalities, context, (no) speaker pattern and (no) speaker names from model.json
    assert asked == [(["audio", "visual", "text"], asked[0][1], 0, 1, None, False)]


def test_an_old_run_folder_loads_with_its_training_configs_context_turns(class_cache, tmp_path):
    run = tmp_path / "run"
    _train(class_cache, run, epochs=1)
    model_json, config_json = run / "model" / "model.json", run / "config.json"
    saved = json.loads(model_json.read_text())
    for key in ("format", "llm_sha256", "context_turns"):  # what an egmf 0.1 model.json lacked
        del saved[key]
    model_json.write_text(json.dumps(saved))
    config = json.loads(config_json.read_text())
    config["train"]["context_turns"] = 2
    config_json.write_text(json.dumps(config))
    from egmf.pipeline.runfolder import RunFolder
    model = RunFolder(run).load_model()
    assert model.config.context_turns == 2 and len(model.config.llm_sha256) == 64


def test_model_presets_are_json_data_and_bad_ones_name_their_file(tmp_path):
    from egmf.pipeline.batch import TaskSpec
    from egmf.pipeline.presets import available, model_config
    task = TaskSpec("synthetic/emotion", sc.spec().label("emotion"))
    assert available() == ["hub", "offline", "offline-bilingual", "tiny"]
    tiny = model_config("tiny", {"text": 8}, [task], lora_alpha=8, fusion={"n_tokens": 3})
    assert (tiny.llm, tiny.lora_alpha, tiny.fusion.d_model, tiny.fusion.n_tokens) == ("random:llama-tiny", 8, 32, 3)
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"model": {"llm": "random:llama-tiny", "lora_rank": 4}}))
    with pytest.raises(ValueError, match=r"mine\.json: unknown settings \['lora_rank'\]"):
        model_config(str(mine), {"text": 8}, [task])
    with pytest.raises(FileNotFoundError, match="no model preset 'huge'"):
        model_config("huge", {"text": 8}, [task])


def test_predicting_a_clip_answers_as_eval_does_on_its_cached_row(tmp_path):
    from egmf.extract.run import ExtractConfig, extract
    from egmf.pipeline.evaluate import score_run
    from egmf.pipeline.predict import predict_clip
    from egmf.pipeline.runfolder import RunFolder

    cache = tmp_path / "demo"
    extract(ExtractConfig("demo", tmp_path / "data", str(cache), preset="tiny", rows_per_shard=8, progress=False,
                          dataset_options={"n_clips": 21, "progress": False}))
    _train(cache, tmp_path / "run", epochs=1, precision="fp32")  # bf16 rounding could flip near ties
    opened = Cache.open(cache)
    pred, _ = score_run(RunFolder(tmp_path / "run"), opened, "test")
    for k, row in enumerate(pred.rows[:3]):
        clip = tmp_path / "data" / "clips" / f"{opened.meta['id'][row]}.mp4"
        one = predict_clip(tmp_path / "run", clip, opened.meta["text"][row], opened.meta["language"][row])
        assert one["answer"] == pred.answers[k]
        # the cache's float16 features are those of a batch, the clip's its own: equal to float rounding
        np.testing.assert_allclose(list(one["expert_weights"].values()), pred.gates[k], atol=1e-4)
# --- refusals and the training recipe ---------------------------------------------------------------------------------

def test_a_partly_extracted_split_is_refused_naming_its_rows_and_the_command(tmp_path):
    from egmf.pipeline.data import load_split, task_of
    path = tmp_path / "part"
    sc.write(path, n=24, rows_per_shard=4, blocks=[(0, 4)] + [(a, a + 4) for a in range(8, 24, 4)])  # not 4..7
    cache = Cache.open(path)
    with pytest.raises(CacheError) as error:
        load_split(cache, "dev", ["audio"], task_of(cache), 0)
    message = str(error.value)
    # dev = every third row: 4 and 7 fall in the missing shard
    assert "2 of 8 rows of split 'dev'" in message and "clip0004, clip0007" in message
    assert "egmf-extract --dataset synthetic" in message and str(path) in message
    result = runner.invoke(train_app, ["--cache", str(path), "--out", str(tmp_path / "run"), "--preset", "tiny"])
    assert result.exit_code == 1 and "not extracted yet" in result.output


def test_the_auxiliary_head_and_the_fusion_rate_are_trained_and_recorded(class_cache, tmp_path):
    summary = _train(class_cache, tmp_path / "run", epochs=1, fusion_lr=5e-3, overrides={"head_weight": 0.5})
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert history[0]["train_head_loss"] > 0  # cross-entropy of 3 classes from an untrained head: about ln 3
    assert history[0]["train_loss"] > history[0]["train_lm_loss"] + 0.4 * history[0]["train_head_loss"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["fusion_lr"] == 5e-3 and config["model"]["head_weight"] == 0.5
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert [g["initial_lr"] for g in checkpoint["optimizer"]["param_groups"]] == [5e-3, 1e-3]
    assert any(k.startswith("heads.") for k in checkpoint["model"]) and summary["steps"] > 0
def test_class_weights_follow_inverse_class_frequency_with_mean_one_over_the_training_rows():
    from types import SimpleNamespace
    from egmf.cache.schema import LabelSpec
    from egmf.pipeline.batch import TaskSpec
    from egmf.pipeline.train import class_weights
    task = TaskSpec("x/emotion", LabelSpec("emotion", "class", ("a", "b", "c")))
    data = SimpleNamespace(targets=[0] * 6 + [1] * 2)  # no row of class c
    np.testing.assert_allclose(class_weights(data, task, 1.0).numpy(), [2 / 3, 2, 0], rtol=1e-6)
    sqrt = class_weights(data, task, 0.5).numpy()
    assert sqrt[1] / sqrt[0] == pytest.approx(3 ** 0.5) and (6 * sqrt[0] + 2 * sqrt[1]) / 8 == pytest.approx(1)
    assert class_weights(data, task, 0.0) is None
    score = TaskSpec("x/sentiment", LabelSpec("sentiment", "score", low=-1.0, high=1.0))
    assert class_weights(SimpleNamespace(targets=[0.5, -0.2]), score, 1.0) is None


def test_class_weighting_changes_the_training_loss_and_is_recorded(class_cache, tmp_path):
    from egmf.pipeline.data import load_split, task_of
    from egmf.pipeline.train import class_weights
    plain = _train(class_cache, tmp_path / "plain", epochs=1)
    weighted = _train(class_cache, tmp_path / "weighted", epochs=1, class_weighting=1.0)
    cache = Cache.open(class_cache)
    task = task_of(cache)
    expected = class_weights(load_split(cache, "train", cache.modalities, task, 0), task, 1.0)
    recorded = json.loads((tmp_path / "weighted" / "metrics.json").read_text())["summary"]["class_weights"]
    assert list(recorded[task.name].values()) == pytest.approx(expected.tolist())
    assert plain["class_weights"] == {}
    assert json.loads((tmp_path / "weighted" / "config.json").read_text())["train"]["class_weighting"] == 1.0
    loss = lambda run: json.loads((tmp_path / run / "metrics.json").read_text())["history"][0]["train_loss"]
    assert loss("weighted") != pytest.approx(loss("plain"), rel=1e-4)


def test_a_fusion_warmup_trains_the_models_fusion_and_head_before_the_llm_joins(class_cache, tmp_path, monkeypatch):
    import egmf.pipeline.train as train
    from safetensors.torch import load_file
    fit, seen = train.fit_fusion_alone, []

    def head_loss(network, heads, stream) -> float:
        network.eval()
        with torch.no_grad():
            losses = [heads.loss(network(b.features, b.masks, b.context, b.context_mask, b.task).tokens, b).item()
                      for b in stream]
        network.train()
        return float(np.mean(losses))

    def spy(network, heads, stream, epochs, lr, *args, **kw):
        before = head_loss(network, heads, stream)
        fit(network, heads, stream, epochs, lr, *args, **kw)
        seen.append((epochs, lr, before, head_loss(network, heads, stream),
                     {k: v.clone() for k, v in network.state_dict().items()}))

    monkeypatch.setattr(train, "fit_fusion_alone", spy)
    summary = _train(class_cache, tmp_path / "warm", epochs=1, fusion_lr=1e-2, fusion_warmup=5)
    (epochs, lr, before, after, _), = seen
    assert (epochs, lr) == (5, 1e-2) and after < 0.8 * before  # the head fits the 10 training rows
    assert summary["steps"] == 2  # the warm-up's steps are not the model's
    assert json.loads((tmp_path / "warm" / "config.json").read_text())["train"]["fusion_warmup"] == 5
    _train(class_cache, tmp_path / "cold", epochs=1)
    assert len(seen) == 1  # no warm-up unless asked
    # --fusion-lr 0: the warm-up runs at --lr, and the LLM then reads the fusion as the warm-up left it.
    _train(class_cache, tmp_path / "frozen", epochs=1, fusion_lr=0.0, fusion_warmup=2)
    epochs, lr, _, _, warmed = seen[1]
    saved = load_file(tmp_path / "frozen" / "model" / "fusion.safetensors")
    assert (epochs, lr) == (2, 1e-3) and all(torch.equal(saved[k], warmed[k]) for k in warmed)
    with pytest.raises(ConfigError, match="--fusion-warmup trains the fusion through the auxiliary head"):
        _train(class_cache, tmp_path / "headless", epochs=1, fusion_warmup=1, overrides={"head_weight": 0.0})


def test_speaker_names_go_from_the_cache_into_the_prompts_of_a_model_that_records_them(class_cache, tmp_path):
    from egmf.pipeline.data import BatchStream, load_split, task_of
    from egmf.pipeline.runfolder import RunFolder
    cache = Cache.open(class_cache)
    named = load_split(cache, "train", ["text"], task_of(cache), 0, 2, None, True)
    batch = next(iter(BatchStream([named], len(named), shuffle=False)))
    # Train rows 0, 3, 6, 9 are said by Ross, nobody named, Ross, Rachel; row 3 follows row 0 in its dialogue.
    assert batch.speakers[:4] == ["Ross", "", "Ross", "Rachel"] and batch.history[1] == [("Ross", "utterance 0 你好")]
    assert load_split(cache, "train", ["audio"], task_of(cache), 0, 2, None, True).speaker_names == []  # no words
    _train(class_cache, tmp_path / "named", epochs=1, overrides={"speaker_names": True})
    model = RunFolder(tmp_path / "named").load_model()
    assert model.config.speaker_names
    prompts = [model.tokenizer.decode([i for i in ids if i >= 0]) for ids in model._prompts(batch)]
    assert "Before: Ross: utterance 0 你好\nTranscript: utterance 3 你好\n" in prompts[1]
    assert prompts[2].startswith("Transcript: Ross: utterance 6 你好\n")
    # egmf-eval reads the setting from model.json: on a store without names it refuses as training does.
    with pytest.raises(CacheError, match="no row of split 'dev' names its speaker"):
        evaluate_run(str(tmp_path / "named"), str(store_without_speakers(class_cache, tmp_path)), "dev")
    with pytest.raises(ConfigError, match="--speaker-names names the speakers of the transcripts.*reads no text"):
        _train(class_cache, tmp_path / "audio", epochs=1, modalities=["audio"], overrides={"speaker_names": True})


def store_without_speakers(store, tmp_path):
    """A copy of a store as written before the speaker column existed."""
    old = tmp_path / "old"
    shutil.copytree(store, old)
    shutil.rmtree(old / "meta" / "speaker")
    return old


def test_a_store_written_before_speakers_reads_as_unnamed_and_speaker_names_are_refused(class_cache, tmp_path):
    from egmf.pipeline.data import load_split, task_of
    cache = Cache.open(store_without_speakers(class_cache, tmp_path))
    assert set(cache.meta["speaker"].tolist()) == {""} and len(cache.meta["speaker"]) == cache.n_rows
    assert load_split(cache, "train", ["text"], task_of(cache), 0).texts[0] == "utterance 0 你好"
    with pytest.raises(CacheError, match="no row of split 'train' names its speaker.*into a new store"):
        _train(cache.url, tmp_path / "run", epochs=1, overrides={"speaker_names": True})


def test_a_speaker_pattern_is_recorded_in_the_model_applied_by_eval_and_refused_by_predict(class_cache, tmp_path,
                                                                                         monkeypatch):
    import egmf.pipeline.evaluate as evaluate
    from egmf.pipeline.predict import predict_clip
    import egmf.pipeline.train as train
    pattern = r"clip\d{3}(\d)"  # 10 speakers, by the last digit of the id
    patterns, load_split = [], evaluate.load_split
    spy = lambda *a: patterns.append(a[6]) or load_split(*a)
    monkeypatch.setattr(train, "load_split", spy)
    monkeypatch.setattr(evaluate, "load_split", spy)
    _train(class_cache, tmp_path / "run", epochs=1, overrides={"speaker_pattern": pattern})
    assert json.loads((tmp_path / "run" / "model" / "model.json").read_text())["speaker_pattern"] == pattern
    evaluate_run(str(tmp_path / "run"), str(class_cache), "dev")
    assert patterns == [pattern] * 3  # train, dev, then egmf-eval's dev
    with pytest.raises(ValueError, match="one clip alone has no speaker statistics"):
        predict_clip(tmp_path / "run", tmp_path / "clip.wav", "hi", "en")


def test_the_fusion_standardises_with_statistics_of_the_training_split(class_cache, tmp_path):
    from egmf.pipeline.data import feature_statistics, load_split, task_of
    from safetensors.torch import load_file
    cache = Cache.open(class_cache)
    train = load_split(cache, "train", ["audio"], task_of(cache), 0)
    mean, std = feature_statistics([train], rows=3)["audio"]  # blocks of 3 rows: the sums must span blocks
    x, n = train.features["audio"], train.lengths["audio"]
    steps = np.concatenate([x[i, :n[i]] for i in range(len(x))]).astype(np.float64)  # every valid step, no padding
    np.testing.assert_allclose(mean, steps.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std, steps.std(0), rtol=1e-3)
    _train(class_cache, tmp_path / "run", epochs=1, modalities=["audio"])
    fusion = load_file(tmp_path / "run" / "model" / "fusion.safetensors")
    np.testing.assert_allclose(fusion["projection.mean_audio"].numpy(), mean, rtol=1e-6)


def test_resuming_with_another_fusion_rate_setting_is_refused_with_the_fix(class_cache, tmp_path):
    _train(class_cache, tmp_path / "run", epochs=1, fusion_lr=5e-3)
    result = runner.invoke(train_app, ["--cache", str(class_cache), "--out", str(tmp_path / "run"), "--preset", "tiny",
                                       "--epochs", "2", "--batch-size", "8"])
    assert result.exit_code == 1
    assert "trained with --fusion-lr and is resumed without it" in result.output
    assert "resume with the options the run started with" in result.output


def test_the_weight_average_follows_each_step_and_swaps_in_and_back_exactly():
    layer = torch.nn.Linear(3, 2)
    params = dict(layer.named_parameters())
    start = {n: p.detach().clone() for n, p in params.items()}
    average = WeightAverage(params, decay=0.75)
    steps = []
    for _ in range(3):
        with torch.no_grad():
            for p in params.values():
                p.add_(torch.randn_like(p))
        steps.append({n: p.detach().clone() for n, p in params.items()})
        average.update()
    for n in params:  # shadow_k = 0.75 shadow_(k-1) + 0.25 weights_k, from the starting weights
        expected = start[n]
        for weights in steps:
            expected = 0.75 * expected + 0.25 * weights[n]
        assert torch.allclose(average.state_dict()[n], expected, atol=1e-6)
    averaged = {n: t.clone() for n, t in average.state_dict().items()}
    with average.swapped_in():
        assert all(torch.equal(params[n], averaged[n]) for n in params)
    assert all(torch.equal(params[n], steps[-1][n]) for n in params)  # the trained weights are back, bit for bit
    assert all(torch.equal(average.state_dict()[n], averaged[n]) for n in params)


def test_an_ema_run_saves_and_checkpoints_the_average_and_refuses_to_resume_without_it(class_cache, tmp_path):
    run = tmp_path / "run"
    _train(class_cache, run, epochs=1, ema_decay=0.5)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    average, trained = checkpoint["average"], checkpoint["model"]
    assert average.keys() == trained.keys()
    assert any(not torch.equal(average[n], trained[n]) for n in average)  # two steps: they differ
    assert json.loads((run / "config.json").read_text())["train"]["ema_decay"] == 0.5
    saved = dict(RunFolder(run).load_model().named_parameters())
    kept = [n for n in average if not n.startswith("heads.")]  # the auxiliary head trains only: it is not saved
    assert any(n.startswith("fusion.") for n in kept) and any("lora_" in n for n in kept)
    for name in kept:  # the model folder holds the average, not the last weights
        assert torch.equal(saved[name].detach(), average[name]), name
    _train(class_cache, tmp_path / "plain", epochs=1)
    assert "average" not in torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)
    result = runner.invoke(train_app, ["--cache", str(class_cache), "--out", str(run), "--preset", "tiny",
                                       "--epochs", "2", "--batch-size", "8"])
    assert result.exit_code == 1
    assert "trained with --ema-decay and is resumed without it" in result.output


def test_an_ema_run_stopped_mid_epoch_resumes_to_the_uninterrupted_average(class_cache, tmp_path, monkeypatch):
    class Stopped(Exception):
        pass

    def train(out):
        _train(class_cache, out, batch_size=2, ema_decay=0.9, checkpoint_every=1)  # 5 steps per epoch
        return torch.load(out / "checkpoint.pt", weights_only=True)

    whole = train(tmp_path / "whole")
    step, calls = torch.optim.AdamW.step, []

    def stopping(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise Stopped
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", stopping)
    with pytest.raises(Stopped):
        train(tmp_path / "cut")
    monkeypatch.undo()
    resumed = train(tmp_path / "cut")
    assert whole["state"]["step"] == resumed["state"]["step"] == 10
    for part in ("average", "model"):
        assert all(torch.equal(whole[part][n], resumed[part][n]) for n in whole[part]), part


def test_each_ablation_trains_without_its_part_and_is_recorded(class_cache, tmp_path):
    from egmf.pipeline.cli import ABLATIONS
    from egmf.pipeline.evaluate import predict_split
    from egmf.pipeline.model import EGMF
    for name, settings in ABLATIONS.items():
        out = tmp_path / name
        result = runner.invoke(train_app, ["--cache", str(class_cache), "--out", str(out), "--preset", "tiny",
                                           "--epochs", "1", "--batch-size", "8", "--ablate", name])
        assert result.exit_code == 0, result.output
        saved = json.loads((out / "config.json").read_text())["model"]
        assert all(saved["fusion"][k] == v for k, v in settings["fusion"].items())
    model = EGMF.load(tmp_path / "no-local" / "model")
    assert [type(e).__name__ for e in model.fusion.experts] == ["CorrelationExpert", "ContextExpert"]
    cache = Cache.open(class_cache)
    from egmf.pipeline.data import load_split, task_of
    dev = load_split(cache, "dev", cache.modalities, task_of(cache), 0)
    gates = predict_split(model, dev, task_of(cache), 8).gates  # the removed expert keeps its column, at weight 0
    assert np.all(gates[:, 0] == 0) and np.allclose(gates.sum(1), 1)
    uniform = EGMF.load(tmp_path / "uniform-gates" / "model")
    gates = predict_split(uniform, dev, task_of(cache), 8).gates
    assert np.allclose(gates, 1 / 3)
    # Without pseudo tokens the features cannot reach the answer: garbage features give the same answers.
    blind = EGMF.load(tmp_path / "no-tokens" / "model")
    garbage = load_split(cache, "dev", cache.modalities, task_of(cache), 0)
    garbage.features = {m: np.random.default_rng(1).normal(size=x.shape).astype(x.dtype) * 100
                        for m, x in garbage.features.items()}
    assert predict_split(blind, garbage, task_of(cache), 8).answers == predict_split(blind, dev, task_of(cache), 8).answers
    result = runner.invoke(train_app, ["--cache", str(class_cache), "--out", str(tmp_path / "x"), "--ablate", "no-gates"])
    assert result.exit_code == 1 and "choose one of no-tokens" in result.output


def test_the_gate_z_weight_joins_an_ablations_fusion_settings_and_trains_into_the_aux_loss(class_cache, tmp_path):
    for z in ("0", "50"):
        result = runner.invoke(train_app, ["--cache", str(class_cache), "--out", str(tmp_path / z), "--preset", "tiny",
                                           "--epochs", "1", "--batch-size", "8", "--ablate", "no-local",
                                           "--gate-z-weight", z])
        assert result.exit_code == 0, result.output
    saved = [json.loads((tmp_path / z / "config.json").read_text())["model"]["fusion"] for z in ("0", "50")]
    assert saved[1]["z_weight"] == 50 and saved[1]["experts"] == ["correlation", "context"] == saved[0]["experts"]
    aux = [json.loads((tmp_path / z / "metrics.json").read_text())["history"][0]["train_aux_loss"] for z in ("0", "50")]
    assert aux[1] > aux[0] + 1  # the z-loss of logits near 0 is about (ln 2) ** 2 per row, times 50


def test_length_bucketed_batches_hold_every_row_once_with_less_padding():
    from egmf.pipeline.data import BUCKET_POOL, BatchStream
    n = 600  # several pools of 2-row batches; a plan needs only each split's length
    lengths = np.random.default_rng(0).integers(20, 120, n)
    rows = np.arange(n)
    plan_bucketed = BatchStream([rows], 2, shuffle=True, lengths=[lengths])._plan()
    plan_random = BatchStream([rows], 2, shuffle=True)._plan()
    for plan in (plan_bucketed, plan_random):
        assert sorted(np.concatenate([b for _, b in plan]).tolist()) == list(range(n))
    padded = {name: sum(len(b) * lengths[b].max() for _, b in plan)
              for name, plan in (("bucketed", plan_bucketed), ("random", plan_random))}
    assert padded["bucketed"] < 0.85 * padded["random"]
    # still shuffled: consecutive batches are not in length order, and a pool's rows span the split
    firsts = [lengths[b].max() for _, b in plan_bucketed[:20]]
    assert firsts != sorted(firsts) and BUCKET_POOL * 2 < n


def test_bucketing_counts_the_tokens_the_model_puts_through_its_llm(class_cache, tmp_path):
    from egmf.pipeline.data import BatchStream, load_split, task_of
    from egmf.pipeline.model import EGMF
    from egmf.pipeline.presets import model_config
    from egmf.pipeline.train import llm_tokens
    cache = Cache.open(class_cache)
    task = task_of(cache)
    data = load_split(cache, "train", ["text"], task, 0, context_turns=2)
    model = EGMF(model_config("tiny", {"text": cache.encoders["text"].dim}, [task], max_history_tokens=12))
    batch = next(iter(BatchStream([data], len(data), shuffle=False)))
    answers = [model.prompter.answer_ids(0, lang)[y] for lang, y in zip(batch.languages, batch.targets)]
    expected = [len(p) + len(a) for p, a in zip(model._prompts(batch), answers)]
    assert llm_tokens(model, data).tolist() == expected and len(set(expected)) > 1
    summary = _train(class_cache, tmp_path / "run", epochs=1, bucket_by_length=True)
    assert summary["steps"] == len(BatchStream([data], 8, shuffle=True))
