"""Predicting a split with a trained model and scoring it the way the field does; egmf-eval (evaluate_run)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cache.reader import Cache
from ..weights import pick_device
from . import plots
from .batch import TaskSpec
from .data import BatchStream, SplitData, load_split
from .metrics import compute_metrics, expert_gates_by_class, metric_kind, scalar_metrics
from .precision import autocast, use_bf16
from .runfolder import RunFolder

EVAL_BATCH_SIZE = 16  # rows per batch when predicting a split (no gradients: larger than training's)


@dataclass
class SplitPredictions:
    task: TaskSpec
    y_true: list
    y_pred: list
    answers: list[str]  # the generated text of each answer
    gates: np.ndarray  # (N, 3) expert-gate weights
    modality_weights: np.ndarray  # (N, M) each modality's share in the pseudo tokens, in `modalities` order
    modalities: list[str]
    parse_failures: int
    rows: np.ndarray  # (N,) cache rows
    free_answers: list = field(default_factory=list)  # per row: the answer free greedy generation spells, or None
    readings: dict[str, list[float]] = field(default_factory=dict)  # scores: values under every readout


@torch.no_grad()
def predict_split(model, data: SplitData, task: TaskSpec, batch_size: int, device="cpu") -> SplitPredictions:
    model.eval()
    y_pred, answers, gates, shares, failures, free, readings = [], [], [], [], 0, [], {}
    for batch in BatchStream([data], batch_size, shuffle=False):
        p = model.predict(batch.to(device))
        y_pred += list(p.values)
        answers += list(p.answers)
        gates.append(p.expert_weights.float().cpu().numpy())
        shares.append(p.modality_weights.float().cpu().numpy())
        failures += p.parse_failures
        free += p.free_answers
        for name, values in p.readings.items():
            readings.setdefault(name, []).extend(values)
    return SplitPredictions(task, list(data.targets), y_pred, answers, np.concatenate(gates), np.concatenate(shares),
                            list(data.features), failures, data.rows, free, readings)


def score_split(model, data, task, batch_size: int, device: torch.device, bf16: bool
                ) -> tuple[SplitPredictions, dict]:
    """Predict a split and compute its metrics."""
    with autocast(device, bf16):
        pred = predict_split(model, data, task, batch_size, device)
    return pred, split_metrics(pred)


def split_metrics(pred: SplitPredictions) -> dict:
    label = pred.task.label
    m = compute_metrics(metric_kind(label), pred.y_true, pred.y_pred, class_names=label.classes or None,
                        score_range=(label.low, label.high))
    m["parse_failure_rate"] = pred.parse_failures / max(1, len(pred.y_true))
    if pred.free_answers:  # has the LLM learned the answer format itself? (the constrained answer always is one)
        m["free_valid_rate"] = sum(a is not None for a in pred.free_answers) / len(pred.free_answers)
    for readout, values in pred.readings.items():  # the score under every readout; the answer is one of them
        for key, value in scalar_metrics(compute_metrics(metric_kind(label), pred.y_true, values,
                                                         score_range=(label.low, label.high))).items():
            if key != "N":
                m[f"{readout}_{key}"] = value
    if label.kind == "class":
        m["expert_gates_by_class"] = expert_gates_by_class(pred.gates, np.asarray(pred.y_true), label.classes)
        m["modality_weights_by_class"] = expert_gates_by_class(pred.modality_weights, np.asarray(pred.y_true),
                                                               label.classes, pred.modalities)
    return m


def primary_score(task: TaskSpec, metrics: dict) -> float:
    """One number per task where higher is better: weighted F1 for classes, -MAE/range for scores."""
    if task.is_classification:
        return metrics["Weighted_F1"]
    return -metrics["MAE"] / (task.label.high - task.label.low)


def headline(task: TaskSpec, metrics: dict) -> str:
    if task.is_classification:
        return f"acc {100 * metrics['Accuracy']:.2f}  wF1 {100 * metrics['Weighted_F1']:.2f}"
    acc2 = metrics.get("Has0_acc_2", metrics.get("Mult_acc_2"))  # none on scales outside MMSA's conventions
    return (f"MAE {metrics['MAE']:.3f}" + (f"  Acc2 {100 * acc2:.2f}" if acc2 is not None else "")
            + f"  Corr {metrics['Corr'] or 0:.3f}")


def plot_predictions(pred: SplitPredictions, metrics: dict, folder: Path, split: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{pred.task.name.replace('/', '-')}-{split}"
    label = pred.task.label
    if label.kind == "class":
        return [plots.plot_confusion_matrix(metrics["Confusion_matrix"], label.classes,
                                            folder / f"confusion-{stem}.png", title=f"{pred.task.name} {split}"),
                plots.plot_expert_gates(pred.gates, np.asarray(pred.y_true), label.classes,
                                        folder / f"expert-gates-{stem}.png"),
                plots.plot_expert_gates(pred.modality_weights, np.asarray(pred.y_true), label.classes,
                                        folder / f"modality-weights-{stem}.png", pred.modalities,
                                        title="modality weights per true class")]
    return [plots.plot_regression(pred.y_true, pred.y_pred, folder / f"scatter-{stem}.png",
                                  (label.low, label.high))]


def evaluate_run(run_dir: str, cache_url: str, split: str, batch_size: int = EVAL_BATCH_SIZE,
                 device: str = "auto") -> dict:
    """egmf-eval: the best model of a run on one split of a cache; metrics JSON and plots into the run folder."""
    run, cache = RunFolder(Path(run_dir)), Cache.open(cache_url)
    pred, metrics = score_run(run, cache, split, batch_size, device)
    result = {"cache": cache.url, "fingerprint": cache.fingerprint, "split": split, "task": pred.task.name,
              "metrics": metrics}
    run.write_json(f"metrics-{split}.json", result)
    plot_predictions(pred, metrics, run.plots, split)
    return result


def score_run(run: RunFolder, cache: Cache, split: str, batch_size: int = EVAL_BATCH_SIZE, device: str = "auto"
              ) -> tuple[SplitPredictions, dict]:
    """The run's best model on one split of a cache, at the run's precision. What the model reads (modalities,
    dialogue context) comes from its own model.json."""
    run.check_features(cache)
    chosen = pick_device(device)
    model = run.load_model().to(chosen)
    task_index = run.task_index(cache)
    task = model.config.tasks[task_index]
    data = load_split(cache, split, list(model.config.modality_dims), task, task_index, model.config.context_turns,
                      model.config.speaker_pattern, model.config.speaker_names)
    return score_split(model, data, task, batch_size, chosen, run_bf16(run, chosen))


def run_bf16(run: RunFolder, device: torch.device) -> bool:
    """Whether the run's model computes in bf16 on device: as it was trained (its --precision)."""
    return use_bf16(run.config["train"].get("precision", "auto"), device)
