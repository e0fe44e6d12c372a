"""The field's metrics, computed the way MMSA computes them, so our numbers sit in the same tables as published ones.

Reference: thuiar/MMSA `src/MMSA/utils/metricsTop.py` (eval_mosei_regression, eval_sims_regression) and the
accuracy / weighted F1 that every MELD and CHERMA paper reports. Three conventions of the field, and one of ours:

- "classification" (MELD, CHERMA): Accuracy, Weighted_F1 (the headline number), Macro_F1, Per_class_F1 and the
  confusion matrix (rows = true class, columns = predicted class).
- "mosei" (CMU-MOSI / MOSEI, scores in [-3, 3]): Has0_acc_2 / Has0_F1_score (>= 0 vs < 0, every row),
  Non0_acc_2 / Non0_F1_score (rows whose label is exactly 0 dropped; > 0 vs <= 0), Mult_acc_5 and Mult_acc_7
  (clip to [-2, 2] / [-3, 3], then round half to even as numpy does), MAE and Corr on the unclipped values.
- "sims" (CH-SIMS, CH-SIMS v2, scores in [-1, 1]): everything on values clipped to [-1, 1]; Mult_acc_2 over
  [-1, 0] vs (0, 1], Mult_acc_3 over [-1, -0.1], (-0.1, 0.1], (0.1, 1], Mult_acc_5 over [-1, -0.7], (-0.7, -0.1],
  (-0.1, 0.1], (0.1, 0.7], (0.7, 1]; F1_score is the weighted F1 of the Acc2 classes; MAE; Corr.
- "score" (any other score range, e.g. a `folder` corpus rated 1 to 5): N, MAE and Corr only, as the field has no
  accuracy bins for such a scale.

Key names are MMSA's, so a result can be compared key by key with MMSA's logs. Values are fractions (not
percent), unrounded, plain Python numbers; None where a metric is undefined on the given rows (Pearson correlation
when one side is constant, the non-zero Acc2 of a split whose labels are all 0).

SIMS bins are MMSA's exactly: MMSA compares float32 arrays (its tensors' dtype) with Python float edges, and numpy
does that comparison in float32 (the array's dtype wins over a Python scalar, in numpy 1 and 2 alike). So a
value equal to an edge in float32 (a one-decimal answer such as 0.1, or a float32 label of 0.1) falls in the bin
the stated intervals give it, and a value just above an edge in float32 falls above it. Our bins do the same:
values and edges in float32, no rounding.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from ..cache.schema import LabelSpec
from ..fuse import EXPERTS  # the order of the expert gate's columns

CONVENTIONS = ("classification", "mosei", "sims", "score")
SCORE_CONVENTIONS = {(-3.0, 3.0): "mosei", (-1.0, 1.0): "sims"}  # label range -> convention; others: "score"

SIMS_ACC2_EDGES = (0.0,)
SIMS_ACC3_EDGES = (-0.1, 0.1)
SIMS_ACC5_EDGES = (-0.7, -0.1, 0.1, 0.7)


def score_convention(low: float, high: float) -> str:
    """The metric convention for a score label with range [low, high]: "mosei", "sims", or else "score"."""
    return SCORE_CONVENTIONS.get((float(low), float(high)), "score")


def metric_kind(label: LabelSpec) -> str:
    """The metric convention for a cache's label: "classification", "mosei", "sims" or "score"."""
    return "classification" if label.kind == "class" else score_convention(label.low, label.high)


def compute_metrics(kind: str, y_true, y_pred, class_names=None, score_range=None) -> dict:
    """The metrics of one split under one convention.

    kind: "classification", "mosei", "sims", or "score" (then score_range=(low, high) picks mosei or sims, or for
    any other range the generic score metrics). y_true, y_pred: class indices (classification) or scores, one per
    labelled row; unlabelled rows must be dropped first. class_names: names for the class indices
    (classification only).
    """
    if kind == "score":
        if score_range is None:
            raise ValueError("kind='score' needs score_range=(low, high), e.g. the LabelSpec's (low, high)")
        kind = score_convention(*score_range)
    if kind == "classification":
        return classification_metrics(y_true, y_pred, class_names)
    if kind == "mosei":
        return mosei_metrics(y_true, y_pred)
    if kind == "sims":
        return sims_metrics(y_true, y_pred)
    if kind == "score":
        return score_metrics(y_true, y_pred)
    raise ValueError(f"unknown metric kind {kind!r}: use one of {CONVENTIONS}")


def classification_metrics(y_true, y_pred, class_names=None) -> dict:
    """Accuracy and F1 of class predictions; per-class F1 is None for a class absent from both sides."""
    truth, preds = _paired(y_true, y_pred)
    if not (np.all(truth == np.round(truth)) and np.all(preds == np.round(preds))):
        raise ValueError("classification metrics need integer class indices; for scores use kind='mosei' or 'sims'")
    truth, preds = truth.astype(np.int64), preds.astype(np.int64)
    n_classes = len(class_names) if class_names is not None else int(max(truth.max(), preds.max())) + 1
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(n_classes)]
    outside = sorted({int(v) for v in np.concatenate([truth, preds]) if not 0 <= v < n_classes})
    if outside:
        raise ValueError(f"class indices {outside} are outside 0..{n_classes - 1} ({n_classes} class names); "
                         f"drop unlabelled rows (-1) and check class_names")
    labels = list(range(n_classes))
    per_class = f1_score(truth, preds, labels=labels, average=None, zero_division=np.nan)
    return {
        "N": int(len(truth)),
        "Accuracy": float(accuracy_score(truth, preds)),
        "Weighted_F1": float(f1_score(truth, preds, average="weighted", zero_division=0)),
        "Macro_F1": float(f1_score(truth, preds, average="macro", zero_division=0)),
        "Per_class_F1": {name: _number(f) for name, f in zip(names, per_class)},
        "Classes": names,
        "Confusion_matrix": confusion_matrix(truth, preds, labels=labels).tolist(),
    }


def mosei_metrics(y_true, y_pred) -> dict:
    """MMSA's eval_mosei_regression (also used for MOSI)."""
    truth, preds = _paired(y_true, y_pred)
    non_zero = truth != 0
    has0_truth, has0_preds = truth >= 0, preds >= 0
    non0_truth, non0_preds = truth[non_zero] > 0, preds[non_zero] > 0
    any_non_zero = bool(non_zero.any())
    return {
        "N": int(len(truth)),
        "Has0_acc_2": float(accuracy_score(has0_truth, has0_preds)),
        "Has0_F1_score": float(f1_score(has0_truth, has0_preds, average="weighted", zero_division=0)),
        "Non0_acc_2": float(accuracy_score(non0_truth, non0_preds)) if any_non_zero else None,
        "Non0_F1_score": (float(f1_score(non0_truth, non0_preds, average="weighted", zero_division=0))
                          if any_non_zero else None),
        "Mult_acc_5": _agreement(_rounded_class(preds, 2.0), _rounded_class(truth, 2.0)),
        "Mult_acc_7": _agreement(_rounded_class(preds, 3.0), _rounded_class(truth, 3.0)),
        "MAE": float(np.mean(np.abs(preds - truth))),
        "Corr": _pearson(preds, truth),
    }


def sims_metrics(y_true, y_pred) -> dict:
    """MMSA's eval_sims_regression (CH-SIMS and CH-SIMS v2)."""
    truth, preds = _paired(y_true, y_pred)
    truth, preds = np.clip(truth, -1.0, 1.0), np.clip(preds, -1.0, 1.0)
    acc2_truth, acc2_preds = _binned(truth, SIMS_ACC2_EDGES), _binned(preds, SIMS_ACC2_EDGES)
    return {
        "N": int(len(truth)),
        "Mult_acc_2": _agreement(acc2_preds, acc2_truth),
        "Mult_acc_3": _agreement(_binned(preds, SIMS_ACC3_EDGES), _binned(truth, SIMS_ACC3_EDGES)),
        "Mult_acc_5": _agreement(_binned(preds, SIMS_ACC5_EDGES), _binned(truth, SIMS_ACC5_EDGES)),
        "F1_score": float(f1_score(acc2_truth, acc2_preds, average="weighted", zero_division=0)),
        "MAE": float(np.mean(np.abs(preds - truth))),
        "Corr": _pearson(preds, truth),
    }


def score_metrics(y_true, y_pred) -> dict:
    """Scores on a scale without a convention of the field: the error and the correlation, no accuracies."""
    truth, preds = _paired(y_true, y_pred)
    return {"N": int(len(truth)), "MAE": float(np.mean(np.abs(preds - truth))), "Corr": _pearson(preds, truth)}


def scalar_metrics(metrics: dict) -> dict:
    """The plain numbers of a metrics dict: no per-class dicts, lists, or undefined (None) values."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}


def expert_gates_by_class(gates, labels, class_names, experts=EXPERTS) -> dict:
    """Mean expert-gate weight per true class: {class: {"n": rows, expert: mean weight or None, ...}}."""
    weights = np.asarray(gates, dtype=np.float64)  # (N, E)
    classes = np.asarray(labels).reshape(-1)  # (N,)
    if weights.ndim != 2 or weights.shape != (len(classes), len(experts)):
        raise ValueError(f"gate weights have shape {weights.shape}; expected ({len(classes)}, {len(experts)}): "
                         f"one row per labelled sample, one column per expert {tuple(experts)}")
    result = {}
    for index, name in enumerate(class_names):
        rows = weights[classes == index]  # (n, E)
        means = rows.mean(axis=0) if len(rows) else [None] * len(experts)
        result[str(name)] = {"n": int(len(rows)), **{e: _number(m) for e, m in zip(experts, means)}}
    return result


def format_table(metrics: dict) -> str:
    """A plain-text table of one metrics dict, or of {split: metrics dict} with one column per split.

    Scalars and per-class F1 are shown; the confusion matrix and class list are left to the JSON and the plots.
    """
    by_split = bool(metrics) and all(isinstance(v, dict) for v in metrics.values())
    columns = metrics if by_split else {"value": metrics}
    rows: dict[str, dict[str, str]] = {}
    for split, values in columns.items():
        for key, value in values.items():
            if isinstance(value, dict):
                for name, sub in value.items():
                    rows.setdefault(f"{key}[{name}]", {})[split] = _cell(sub)
            elif value is None or isinstance(value, (int, float, np.number)):
                rows.setdefault(key, {})[split] = _cell(value)
    header = ["metric", *columns]
    lines = [header] + [[key, *(cells.get(split, "") for split in columns)] for key, cells in rows.items()]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in lines)


def _vector(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)  # (N,)
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} NaN/inf values: drop unlabelled rows (NaN scores) before computing "
                         f"metrics")
    return array


def _paired(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    truth, preds = _vector("y_true", y_true), _vector("y_pred", y_pred)
    if len(truth) != len(preds):
        raise ValueError(f"y_true has {len(truth)} values but y_pred has {len(preds)}: pass one prediction per row")
    if not len(truth):
        raise ValueError("no rows to evaluate: the split is empty or every row is unlabelled")
    return truth, preds


def _rounded_class(scores: np.ndarray, bound: float) -> np.ndarray:
    # np.round rounds half to even (2.5 -> 2, -0.5 -> 0), as MMSA's __multiclass_acc does.
    return np.round(np.clip(scores, -bound, bound)).astype(np.int64)


def _binned(scores: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    # Bins are (left, right]: the class is the number of edges strictly below the value, compared in float32 as
    # MMSA compares them.
    return np.searchsorted(np.asarray(edges, np.float32), scores.astype(np.float32), side="left")


def _agreement(preds: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(preds == truth))


def _pearson(preds: np.ndarray, truth: np.ndarray):
    if np.ptp(preds) == 0 or np.ptp(truth) == 0:
        return None  # correlation with a constant is undefined
    return float(np.corrcoef(preds, truth)[0, 1])


def _number(value):
    return None if value is None or np.isnan(value) else float(value)


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.4f}"
