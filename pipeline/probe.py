"""`egmf-probe`: what the cached features alone give, before any training.

A linear model on each utterance's pooled features (mean and standard deviation over its valid steps, per
modality): logistic regression for classes, ridge regression for scores. It is fitted on train and scored on
dev (and test when asked) with the same metrics as `egmf-eval`, for each modality alone and for all together,
so every trained model has a baseline from the same cache beside it.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..cache.reader import Cache
from ..cache.schema import CacheError
from .data import SplitData, load_split, pool_steps, task_of
from .metrics import compute_metrics, metric_kind

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


def probe_cache(url: str, modalities: list[str] | None = None, splits: tuple[str, ...] = ("dev",)) -> dict:
    """Fit on train, score on `splits`, for each modality alone and (with several) all together.

    Returns {"cache", "fingerprint", "task", "model", "settings": {setting: {split: metrics}}}; a setting is a
    modality name or "all".
    """
    cache = Cache.open(url)
    task = task_of(cache)
    chosen = list(cache.modalities) if modalities is None else list(modalities)
    unknown = [m for m in chosen if m not in cache.modalities]
    if unknown:
        raise CacheError(f"{cache.url}: --modalities {','.join(chosen)}: {unknown} not in the cache (it has "
                         f"{','.join(cache.modalities)}). Fix: choose among those")
    data = {split: load_split(cache, split, chosen, task, 0) for split in ("train", *splits)}
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
            "model": f"{model} on standardised mean+std pooled features", "train_rows": len(data["train"]),
            "settings": results}


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
