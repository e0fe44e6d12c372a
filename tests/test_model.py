"""EGMF end to end on a tiny random LLM: valid answers untrained, overfitting, save/load."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from egmf.cache.schema import LabelSpec
from egmf.fuse import FusionConfig
from egmf.llm.prompts import score_strings
from egmf.llm.tiny import save_tiny_lm
from egmf.pipeline.batch import Batch, TaskSpec
from egmf.pipeline.model import EGMF, ModelConfig
from egmf.weights import resolve, weights_sha256

DIMS = {"audio": 10, "text": 16}
EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
TASKS = [TaskSpec("meld/emotion", LabelSpec("emotion", "class", EMOTIONS)),
         TaskSpec("cherma/emotion", LabelSpec("emotion", "class", ("愤怒", "厌恶", "恐惧", "高兴", "平静", "悲伤", "惊奇"))),
         TaskSpec("sims-v2/sentiment", LabelSpec("sentiment", "score", low=-1.0, high=1.0))]


def make_batch(task: int, targets: list, seed: int, language: str = "en") -> Batch:
    """Rows whose text features encode the target (one-hot for a class, a level for a score); audio is noise,
    and the second row of each batch lacks audio."""
    g = torch.Generator().manual_seed(seed)
    B = len(targets)
    features = {m: torch.randn(B, 6, d, generator=g) for m, d in DIMS.items()}
    for i, y in enumerate(targets):
        features["text"][i] += 3 * torch.nn.functional.one_hot(torch.tensor(y), DIMS["text"]) if task < 2 else 2 * y
    masks = {m: torch.ones(B, 6, dtype=torch.bool) for m in DIMS}
    masks["audio"][1] = False
    features["audio"][1] = 0
    context = {m: torch.randn(B, 2, d, generator=g) for m, d in DIMS.items()}
    context_mask = torch.tensor([[i % 2 == 0, True] for i in range(B)])
    return Batch(features, masks, context, context_mask, texts=[f"utterance {i}" for i in range(B)],
                 languages=[language] * B, task=torch.full((B,), task), targets=targets, rows=torch.arange(B))


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    llm = str(save_tiny_lm(tmp_path_factory.mktemp("tiny")))
    return ModelConfig(DIMS, TASKS, llm=llm, lora_r=8, lora_alpha=16, lora_dropout=0.0, max_text_tokens=16,
                       fusion=FusionConfig(d_model=32, n_heads=4, n_tokens=2, local_layers=1, dropout=0.0))


@pytest.fixture(scope="module")
def trained(config):
    """One unified model trained on a classification batch and a regression batch until it fits both."""
    torch.manual_seed(0)
    model = EGMF(config)
    classes = make_batch(0, list(range(7)) * 2, seed=1)
    scores = make_batch(2, [round(-1 + 0.2 * i, 1) for i in range(11)], seed=2, language="zh")
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    history = []
    for step in range(1, 201):
        for batch in (classes, scores):
            optimiser.zero_grad()
            model(batch).loss.backward()
            optimiser.step()
        if step % 10 == 0:
            accuracy = sum(v == y for v, y in zip(model.predict(classes).values, classes.targets)) / len(classes)
            mae = sum(abs(v - y) for v, y in zip(model.predict(scores).values, scores.targets)) / len(scores)
            history.append((step, accuracy, mae))
            if accuracy == 1.0 and mae < 0.1:
                break
    return model, classes, scores, history


def test_untrained_model_answers_only_valid_labels_and_numbers(config):
    torch.manual_seed(3)
    model = EGMF(config)
    assert model.trainable_parameters() > 0
    for task, language, targets in [(0, "en", [0] * 5), (1, "zh", [0] * 5), (2, "zh", [0.0] * 5), (2, "en", [0.0] * 5)]:
        prediction = model.predict(make_batch(task, targets, seed=task))
        assert prediction.parse_failures == 0
        assert prediction.expert_weights.shape == (5, 3)
        valid = list(TASKS[task].label.classes) if task < 2 else score_strings(-1.0, 1.0)
        assert all(a in valid for a in prediction.answers)
        if task < 2:
            assert [valid[v] for v in prediction.values] == prediction.answers
        else:
            assert all(-1.0 <= v <= 1.0 for v in prediction.values)


def test_mixed_task_batch_and_loss_parts(config):
    torch.manual_seed(4)
    model = EGMF(config)
    a, b = make_batch(0, [1, 4], seed=5), make_batch(2, [0.3, -0.6], seed=6, language="zh")
    mixed = Batch({m: torch.cat([a.features[m], b.features[m]]) for m in DIMS},
                  {m: torch.cat([a.masks[m], b.masks[m]]) for m in DIMS},
                  {m: torch.cat([a.context[m], b.context[m]]) for m in DIMS},
                  torch.cat([a.context_mask, b.context_mask]), a.texts + b.texts, a.languages + b.languages,
                  torch.cat([a.task, b.task]), a.targets + b.targets, torch.arange(4))
    out = model(mixed)
    assert out.loss.item() == pytest.approx(out.lm_loss.item() + out.aux_loss.item(), rel=1e-5)
    assert out.expert_weights.shape == (4, 3) and out.modality_gates.shape == (4, 3, 2)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    prediction = model.predict(mixed)
    assert prediction.answers[0] in EMOTIONS and prediction.answers[2] in score_strings(-1.0, 1.0)
    assert model.training  # predict() restores the mode it found
    unlabelled = make_batch(0, [0, 2], seed=7)
    unlabelled.targets = [-1, 2]
    with pytest.raises(ValueError, match="unlabelled"):
        model(unlabelled)


def test_overfits_classification_and_regression(trained):
    model, classes, scores, history = trained
    step, accuracy, mae = history[-1]
    assert accuracy == 1.0, history
    assert mae < 0.1, history
    assert model.predict(classes).parse_failures == 0 and model.predict(scores).parse_failures == 0


def test_free_generation_and_every_score_readout_are_read_beside_the_answer(trained, config):
    model, classes, scores, _ = trained
    fitted = model.predict(classes)
    # Trained to fit, the LLM spells the right class by itself; an untrained one does not spell valid answers.
    assert fitted.free_answers == fitted.values and fitted.readings == {}
    torch.manual_seed(3)
    assert None in EGMF(config).predict(classes).free_answers
    read = model.predict(scores)
    grid = [float(s) for s in score_strings(-1.0, 1.0)]
    assert set(read.readings) == {"mean", "median", "argmax"}
    assert read.readings["mean"] == pytest.approx(read.values)  # the default readout is the answer
    assert all(v in grid for v in read.readings["median"] + read.readings["argmax"])
    assert all(f is not None for f in read.free_answers)
    assert [grid[f] for f in read.free_answers] == read.readings["argmax"]  # greedy = the most likely string here


def test_saved_model_is_small_and_reloads_to_the_same_predictions(trained, config, tmp_path):
    model, classes, scores, _ = trained
    directory = model.save(tmp_path / "model")
    assert sorted(p.name for p in directory.iterdir()) == ["adapter", "fusion.safetensors", "model.json"]
    adapter = json.loads((directory / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == config.llm and adapter["r"] == 8
    saved = json.loads((directory / "model.json").read_text())
    assert saved["tasks"][1]["label"]["classes"][3] == "高兴" and saved["modality_dims"] == DIMS
    base_bytes = (Path(config.llm) / "model.safetensors").stat().st_size
    assert (directory / "adapter" / "adapter_model.safetensors").stat().st_size < base_bytes / 2  # no base weights

    reloaded = EGMF.load(directory)
    assert saved["llm_sha256"] == weights_sha256(resolve(config.llm)) and config.llm_sha256 is None
    assert ModelConfig.from_dict(reloaded.config.to_dict()) == model.config
    assert model.config == replace(config, llm_sha256=saved["llm_sha256"])
    for batch in (classes, scores):
        before, after = model.predict(batch), reloaded.predict(batch)
        assert after.answers == before.answers
        assert after.values == pytest.approx(before.values, abs=1e-5)
        torch.testing.assert_close(after.expert_weights, before.expert_weights)
    with pytest.raises(FileNotFoundError, match="EGMF.save"):
        EGMF.load(tmp_path)


def test_a_saved_model_refuses_other_llm_weights_and_weights_it_does_not_fit(trained, tmp_path):
    directory = trained[0].save(tmp_path / "model")
    saved = json.loads((directory / "model.json").read_text())
    (directory / "model.json").write_text(json.dumps({**saved, "llm_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="trained on 0000000000000000.*Fix: install the LLM weights"):
        EGMF.load(directory)
    (directory / "model.json").write_text(json.dumps({**saved, "format": 3}))
    with pytest.raises(ValueError, match="model format 3, this egmf reads up to 2. Fix: upgrade"):
        EGMF.load(directory)
    (directory / "model.json").write_text(json.dumps(saved))
    fusion = load_file(directory / "fusion.safetensors")
    save_file({**fusion, "experts.9.norm.weight": torch.ones(3)}, directory / "fusion.safetensors")
    with pytest.raises(ValueError, match=r"fusion.safetensors does not fit.*experts\.9\.norm.*Fix: train it again"):
        EGMF.load(directory)


def test_input_statistics_are_saved_with_the_model_and_a_model_saved_without_them_loads(trained, config, tmp_path):
    model, classes, _, _ = trained
    stats = {m: (torch.full((d,), 0.5), torch.full((d,), 2.0)) for m, d in DIMS.items()}
    model.fusion.projection.set_statistics(stats)
    directory = model.save(tmp_path / "model")
    reloaded = EGMF.load(directory)
    assert torch.equal(reloaded.fusion.projection.std_audio, stats["audio"][1])
    assert reloaded.predict(classes).answers == model.predict(classes).answers
    # A model saved before the statistics existed was trained on raw features: it loads with identity statistics.
    fusion = load_file(directory / "fusion.safetensors")
    save_file({k: v for k, v in fusion.items() if not k.startswith(("projection.mean_", "projection.std_"))},
              directory / "fusion.safetensors")
    old = EGMF.load(directory)
    assert torch.equal(old.fusion.projection.std_audio, torch.ones(DIMS["audio"]))
    assert torch.equal(old.fusion.projection.mean_text, torch.zeros(DIMS["text"]))
    identity = {m: (torch.zeros(d), torch.ones(d)) for m, d in DIMS.items()}
    model.fusion.projection.set_statistics(identity)


@pytest.mark.slow
def test_smollm2_model_trains_predicts_and_reloads(tmp_path):
    config = ModelConfig(DIMS, TASKS, fusion=FusionConfig(n_tokens=4))  # the offline default LLM
    model = EGMF(config)
    batch = make_batch(2, [0.4, -0.2, 1.0], seed=8)
    model(batch).loss.backward()
    prediction = model.predict(batch)
    assert prediction.parse_failures == 0 and all(a in score_strings(-1.0, 1.0) for a in prediction.answers)
    directory = model.save(tmp_path / "model")
    adapter = json.loads((directory / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == config.llm  # portable: no site-packages path
    assert EGMF.load(directory).predict(batch).answers == prediction.answers
