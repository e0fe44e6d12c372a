"""`egmf-probe`: what the cached features alone give, before any training.

A linear model on each utterance's pooled features (mean and standard deviation over its valid steps, per
modality): logistic regression for classes, ridge regression for scores. It is fitted on train and scored on
dev (and test when asked) with the same metrics as `egmf-eval`, for each modality alone and for all together,
so every trained model has a baseline from the same cache beside it.

With --fusion, a second baseline: the preset's fusion network alone with the auxiliary head on its mean pseudo
token (no LLM), trained on train as egmf-train trains the whole model and scored at its best dev epoch. Between the
linear probe and the full model, it tells which part a gap comes from: the fusion, or the LLM reading its tokens.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from ..cache.reader import Cache
from ..cache.schema import CacheError
from ..fuse import FusionNetwork
from .averaging import WeightAverage
from .data import BatchStream, SplitData, load_split, pool_steps, task_of
from .evaluate import EVAL_BATCH_SIZE, primary_score
from .metrics import compute_metrics, metric_kind
from .model import AnswerHeads
from .presets import model_config
from .train import TrainConfig, feature_dims, fit_fusion_alone, seed_everything, standardise_inputs

# One fixed regularisation, not tuned on dev: the probe is a reference point, and tuning it on the split it is
# scored on would flatter it. Standardised inputs make one strength fit every feature scale.
LOGISTIC_C = 1.0
RIDGE_ALPHA = 1.0
MAX_ITER = 2000


def pooled_features(data: SplitData, modalities: list[str]) -> np.ndarray:
    """(n, sum over modalities of 2 D_m) float32: mean and std over each row's valid steps (zeros where missing)."""
    return np.concatenate([pool_steps(data.features[m], data.lengths[m], with_std=True) for m in modalities], 1)


def fit_probe(label, train_x: np.ndarray, train_y: list):
    """A standardised linear model for the label: logistic regression (classes) or ridge (scores)."""
    model = (LogisticRegression(C=LOGISTIC_C, max_iter=MAX_ITER) if label.kind == "class"
             else Ridge(alpha=RIDGE_ALPHA))
    return make_pipeline(StandardScaler(), model).fit(train_x, train_y)


def predict_probe(probe, label, x: np.ndarray) -> list:
    """Class indices, or scores clipped to the label's range (as the LLM's answers are)."""
    if label.kind == "class":
        return [int(v) for v in probe.predict(x)]
    return [float(v) for v in np.clip(probe.predict(x), label.low, label.high)]


def chosen_modalities(cache: Cache, modalities: list[str] | None) -> list[str]:
    chosen = list(cache.modalities) if modalities is None else list(modalities)
    unknown = [m for m in chosen if m not in cache.modalities]
    if unknown:
        raise CacheError(f"{cache.url}: --modalities {','.join(chosen)}: {unknown} not in the cache (it has "
                         f"{','.join(cache.modalities)}). Fix: choose among those")
    return chosen


def probe_cache(url: str, modalities: list[str] | None = None, splits: tuple[str, ...] = ("dev",),
                speaker_pattern: str | None = None) -> dict:
    """Fit on train, score on `splits`, for each modality alone and (with several) all together.

    Returns {"cache", "fingerprint", "task", "model", "settings": {setting: {split: metrics}}}; a setting is a
    modality name or "all". speaker_pattern: features standardised per speaker first, as egmf-train's.
    """
    cache = Cache.open(url)
    task = task_of(cache)
    chosen = chosen_modalities(cache, modalities)
    data = {split: load_split(cache, split, chosen, task, 0, speaker_pattern=speaker_pattern)
            for split in ("train", *splits)}
    settings = {m: [m] for m in chosen}
    if len(chosen) > 1:
        settings["all"] = chosen
    label = task.label
    results = {}
    for name, used in settings.items():
        probe = fit_probe(label, pooled_features(data["train"], used), data["train"].targets)
        results[name] = {split: compute_metrics(metric_kind(label), data[split].targets,
                                                predict_probe(probe, label, pooled_features(data[split], used)),
                                                class_names=label.classes or None,
                                                score_range=(label.low, label.high))
                         for split in splits}
    model = (f"logistic regression (C={LOGISTIC_C})" if label.kind == "class" else f"ridge (alpha={RIDGE_ALPHA})")
    return {"cache": cache.url, "fingerprint": cache.fingerprint, "task": task.name,
            "model": f"{model} on standardised mean+std pooled features"
                     + (f", each speaker's standardised first (speaker pattern {speaker_pattern})"
                        if speaker_pattern else ""), "train_rows": len(data["train"]),
            "settings": results}


def fusion_probe(url: str, modalities: list[str] | None = None, splits: tuple[str, ...] = ("dev",),
                 preset: str = TrainConfig.preset, epochs: int = TrainConfig.epochs,
                 batch_size: int = TrainConfig.batch_size, lr: float = TrainConfig.lr, seed: int = TrainConfig.seed,
                 progress: bool = True, speaker_pattern: str | None = None,
                 ema_decay: float = TrainConfig.ema_decay) -> dict:
    """The fusion network + auxiliary head alone, trained on train with egmf-train's optimiser, schedule and
    clipping (and with ema_decay, its moving average of the weights scored in their place, as egmf-train's), the
    best dev epoch scored on `splits`. Returns probe_cache's layout with one setting, the
    modalities read together as the model reads them ("all", or the one modality's name), and the dev score of
    every epoch."""
    cache = Cache.open(url)
    task = task_of(cache)
    chosen = chosen_modalities(cache, modalities)
    config = model_config(preset, feature_dims([cache], chosen), [task])
    data = {split: load_split(cache, split, chosen, task, 0, config.context_turns, speaker_pattern)
            for split in dict.fromkeys(("train", "dev", *splits))}
    seed_everything(seed)
    # The pseudo tokens at the fusion's own width: without an LLM there is no embedding table to match.
    network = FusionNetwork(config.fusion, config.modality_dims, config.fusion.d_model, 1)
    standardise_inputs(network, [data["train"]])
    heads = AnswerHeads([task], config.fusion.d_model)
    stream = BatchStream([data["train"]], batch_size, shuffle=True, seed=seed)
    average = (WeightAverage({f"{k}.{n}": p for k, part in (("fusion", network), ("heads", heads))
                              for n, p in part.named_parameters()}, ema_decay) if ema_decay else None)

    def score(split: str) -> dict:
        network.eval()
        y = []
        for batch in BatchStream([data[split]], EVAL_BATCH_SIZE, shuffle=False):
            y += heads.predict(network(batch.features, batch.masks, batch.context, batch.context_mask,
                                       batch.task).tokens, batch)
        network.train()
        return compute_metrics(metric_kind(task.label), data[split].targets, y, class_names=task.label.classes or None,
                               score_range=(task.label.low, task.label.high))

    history, best = [], {}

    def keep_best(epoch: int):
        with nullcontext() if average is None else average.swapped_in():
            history.append(primary_score(task, score("dev")))
            if not best or history[-1] > history[best["epoch"]]:
                best.update(epoch=epoch, state=copy.deepcopy((network.state_dict(), heads.state_dict())))

    fit_fusion_alone(network, heads, stream, epochs, lr, after_epoch=keep_best, progress=progress, average=average)
    state = best["state"]
    network.load_state_dict(state[0])
    heads.load_state_dict(state[1])
    return {"cache": cache.url, "fingerprint": cache.fingerprint, "task": task.name,
            "model": f"the {preset} preset's fusion network + a linear head on its mean pseudo token, no LLM "
                     f"({epochs} epochs, batch {batch_size}, lr {lr}, seed {seed}"
                     f"{f', weight average decay {ema_decay}' if ema_decay else ''}; best dev epoch {best['epoch'] + 1})",
            "train_rows": len(data["train"]), "dev_score_by_epoch": history,
            "settings": {"all" if len(chosen) > 1 else chosen[0]: {split: score(split) for split in splits}}}


def probe_table(result: dict) -> str:
    """A markdown table: one row per setting and split with the headline metrics of the task's convention."""
    first = next(iter(next(iter(result["settings"].values())).values()))
    keys = [k for k in ("Accuracy", "Weighted_F1", "Macro_F1", "Has0_acc_2", "Non0_acc_2", "Mult_acc_2",
                        "Mult_acc_7", "MAE", "Corr") if k in first]
    lines = ["| features | split | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, by_split in result["settings"].items():
        for split, m in by_split.items():
            cells = ["n/a" if m[k] is None else (f"{m[k]:.3f}" if k in ("MAE", "Corr") else f"{100 * m[k]:.1f}")
                     for k in keys]
            lines.append(f"| {name} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
