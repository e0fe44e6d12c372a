"""The field's metrics against values worked out by hand, for every convention and at every bin edge."""
import json

import numpy as np
import pytest

from egmf.cache.schema import LabelSpec
from egmf.pipeline.batch import TaskSpec
from egmf.pipeline.evaluate import SplitPredictions, headline, primary_score, split_metrics
from egmf.pipeline.metrics import compute_metrics, expert_gates_by_class, format_table, metric_kind, scalar_metrics

# MOSEI example; its rows exercise every edge of the convention:
MOSEI_TRUE = [0.0, 1.2, -2.4, 0.0, 3.0, -0.4, 0.6, -1.0]
MOSEI_PRED = [0.5, 0.0, -3.6, -0.2, 2.5, 0.1, 1.5, -0.5]
# label 0 (has-zero: positive; dropped in non-zero); pred 0.0 (has-zero: positive, non-zero: negative);
# pred beyond -3 (clipped for Acc7, not for MAE); 2.5 / 1.5 / 0.5 / -0.5 round half to even (2, 2, 0, 0).


def test_mosei_matches_hand_computed_values():
    m = compute_metrics("mosei", MOSEI_TRUE, MOSEI_PRED)
    # has-zero: truth>=0 TTFTTFTF, pred>=0 TTFFTTTF -> 6/8 agree;
    # F1(True) = 2*4/(2*4+1+1) = 0.8 (support 5), F1(False) = 2*2/(2*2+1+1) = 2/3 (support 3) -> weighted 0.75
    assert m["Has0_acc_2"] == pytest.approx(6 / 8)
    assert m["Has0_F1_score"] == pytest.approx((5 * 0.8 + 3 * 2 / 3) / 8)
    # non-zero: rows 1 and 4 dropped; truth>0 TFTFTF, pred>0 FFTTTF -> 4/6;
    # F1(True) = 2*2/(4+1+1) = 2/3, F1(False) = 2*2/(4+1+1) = 2/3, 3 rows each
    assert m["Non0_acc_2"] == pytest.approx(4 / 6)
    assert m["Non0_F1_score"] == pytest.approx(2 / 3)
    # Acc7 classes truth 0 1 -2 0 3 0 1 -1, pred 0 0 -3 0 2 0 2 0 -> rows 1, 4, 6 agree
    assert m["Mult_acc_7"] == pytest.approx(3 / 8)
    # Acc5 (clip to [-2, 2]) truth 0 1 -2 0 2 0 1 -1, pred 0 0 -2 0 2 0 2 0 -> rows 1, 3, 4, 5, 6 agree
    assert m["Mult_acc_5"] == pytest.approx(5 / 8)
    # MAE on unclipped values: (0.5+1.2+1.2+0.2+0.5+0.5+0.9+0.5)/8
    assert m["MAE"] == pytest.approx(5.5 / 8)
    assert m["N"] == 8


def test_mosei_correlation_uses_unclipped_predictions():
    # deviations (-1, 0, 1) and (-1, 1, 0): covariance 1, variances 2 and 2 -> r = 0.5
    assert compute_metrics("mosei", [1.0, 2.0, 3.0], [1.0, 3.0, 2.0])["Corr"] == pytest.approx(0.5)
    # the prediction 4.0 lies beyond 3: exactly linear only if it is not clipped
    assert compute_metrics("mosei", [-1.0, 0.0, 1.0, 2.0], [-2.0, 0.0, 2.0, 4.0])["Corr"] == pytest.approx(1.0)


def test_mosei_undefined_metrics_are_none_and_json_is_strict():
    m = compute_metrics("mosei", [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    assert m["Non0_acc_2"] is None and m["Non0_F1_score"] is None  # every label is 0
    assert m["Corr"] is None  # constant on both sides
    assert m["Has0_acc_2"] == 1.0
    json.dumps(m, allow_nan=False)


# SIMS example, float32 as the cache stores scores; predictions sit on the bin edges -0.7, -0.1, 0.1, 0.7.
SIMS_TRUE = np.float32([-0.8, -0.8, -0.2, 0.0, 0.0, 0.2, 0.8, 0.6])
SIMS_PRED = np.float32([-0.7, -0.6, -0.1, 0.1, -0.1, 0.7, 1.4, 0.05])
#                   Acc5 bins truth / pred   Acc3          Acc2
# -0.8 / -0.7       0 / 0  ok               0 / 0 ok      0 / 0 ok
# -0.8 / -0.6       0 / 1  no               0 / 0 ok      0 / 0 ok
# -0.2 / -0.1       1 / 1  ok               0 / 0 ok      0 / 0 ok
#  0.0 /  0.1       2 / 2  ok               1 / 1 ok      0 / 1 no
#  0.0 / -0.1       2 / 1  no               1 / 0 no      0 / 0 ok
#  0.2 /  0.7       3 / 3  ok               2 / 2 ok      1 / 1 ok
#  0.8 /  1.4->1.0  4 / 4  ok               2 / 2 ok      1 / 1 ok
#  0.6 /  0.05      3 / 2  no               2 / 1 no      1 / 1 ok


def test_sims_matches_hand_computed_values():
    m = compute_metrics("sims", SIMS_TRUE, SIMS_PRED)
    assert m["Mult_acc_5"] == pytest.approx(5 / 8)
    assert m["Mult_acc_3"] == pytest.approx(6 / 8)
    assert m["Mult_acc_2"] == pytest.approx(7 / 8)
    # Acc2 classes truth 00000111, pred 00010111: F1(0) = 8/9 (support 5), F1(1) = 6/7 (support 3)
    assert m["F1_score"] == pytest.approx((5 * 8 / 9 + 3 * 6 / 7) / 8)
    # MAE after clipping 1.4 to 1.0: (0.1+0.2+0.1+0.1+0.1+0.5+0.2+0.55)/8
    assert m["MAE"] == pytest.approx(1.85 / 8, abs=1e-6)


def test_sims_bin_edges_fall_where_the_stated_intervals_put_them():
    edges = np.float32([-1.0, -0.7, -0.69, -0.1, 0.0, 0.1, 0.11, 0.7, 0.71, 1.0])
    # [-1,-0.7] (-0.7,-0.1] (-0.1,0.1] (0.1,0.7] (0.7,1]: each edge value agrees with the middle of its own bin only
    middles = [-0.85, -0.85, -0.4, -0.4, 0.0, 0.0, 0.4, 0.4, 0.85, 0.85]
    assert compute_metrics("sims", middles, edges)["Mult_acc_5"] == 1.0
    assert compute_metrics("sims", middles[2:] + middles[:2], edges)["Mult_acc_5"] == 0.0
    # Acc3 cuts at -0.1 and 0.1, Acc2 at 0: each edge value agrees only with values on its own side
    assert compute_metrics("sims", [-0.2, 0.0, 0.2], np.float32([-0.1, 0.1, 0.11]))["Mult_acc_3"] == 1.0
    assert compute_metrics("sims", [-0.2, 0.2], np.float32([-0.09, 0.1]))["Mult_acc_3"] == 0.0
    assert compute_metrics("sims", [-0.2, 0.2], np.float32([0.0, 0.01]))["Mult_acc_2"] == 1.0


def mmsa_bins(values, cuts):
    """MMSA's eval_sims_regression binning loop, written out: float32 values, Python float edges."""
    edges = [-1.01, *cuts, 1.01]
    values = np.clip(np.asarray(values, np.float32), -1.0, 1.0)
    out = values.copy()
    for i in range(len(edges) - 1):
        out[np.logical_and(values > edges[i], values <= edges[i + 1])] = i
    return out


def test_sims_bins_are_mmsa_bins_in_float32_with_no_snapping():
    above = np.nextafter(np.float32(0.1), np.float32(1))  # the next float32 after the edge: above it, as in MMSA
    assert compute_metrics("sims", [0.2], [above])["Mult_acc_3"] == 1.0
    assert compute_metrics("sims", [0.2], [0.1000004])["Mult_acc_3"] == 1.0  # 6 decimals would snap it to 0.1
    assert compute_metrics("sims", [0.0], [0.1000000001])["Mult_acc_3"] == 1.0  # float32(that) is the edge itself
    rng = np.random.default_rng(0)
    grid = np.concatenate([np.float32([-1, -0.7, -0.1, 0, 0.1, 0.7, 1]), rng.uniform(-1.2, 1.2, 300),
                           np.round(rng.uniform(-1, 1, 100), 1)])
    truth = rng.uniform(-1, 1, len(grid))
    for key, cuts in (("Mult_acc_2", (0.0,)), ("Mult_acc_3", (-0.1, 0.1)), ("Mult_acc_5", (-0.7, -0.1, 0.1, 0.7))):
        expected = float(np.mean(mmsa_bins(grid, cuts) == mmsa_bins(truth, cuts)))
        assert compute_metrics("sims", truth, grid)[key] == pytest.approx(expected)


def test_sims_clips_before_correlation():
    # clipped predictions (-1, 0, 1) are exactly linear in the truth; unclipped (-1.5, 0, 1) are not
    assert compute_metrics("sims", [-0.5, 0.0, 0.5], [-1.5, 0.0, 1.0])["Corr"] == pytest.approx(1.0)


def test_mosei_acc7_rounds_half_to_even_and_clips():
    scores = [-3.7, -2.5, -0.5, 0.4, 0.5, 1.5, 2.5, 3.2]
    assert compute_metrics("mosei", [-3, -2, 0, 0, 0, 2, 2, 3], scores)["Mult_acc_7"] == 1.0
    assert compute_metrics("mosei", [-3, -3, -1, 0, 1, 1, 3, 3], scores)["Mult_acc_7"] == pytest.approx(3 / 8)


CLASS_NAMES = ["neutral", "joy", "anger", "fear"]


def test_classification_matches_hand_computed_values():
    m = compute_metrics("classification", [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], class_names=CLASS_NAMES)
    assert m["Accuracy"] == pytest.approx(4 / 6)
    # F1: neutral 2*2/(4+0+1) = 0.8 (support 3), joy 2/(2+1+1) = 0.5 (2), anger 2/(2+1+0) = 2/3 (1)
    assert m["Weighted_F1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 / 3) / 6)
    assert m["Macro_F1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)  # over the classes that occur
    assert m["Per_class_F1"] == pytest.approx({"neutral": 0.8, "joy": 0.5, "anger": 2 / 3, "fear": None})
    assert m["Confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert m["Classes"] == CLASS_NAMES
    json.dumps(m, allow_nan=False)


def test_kind_follows_the_label_range():
    assert metric_kind(LabelSpec("emotion", "class", classes=("a", "b"))) == "classification"
    assert metric_kind(LabelSpec("sentiment", "score", low=-3.0, high=3.0)) == "mosei"
    assert metric_kind(LabelSpec("sentiment", "score", low=-1.0, high=1.0)) == "sims"
    assert metric_kind(LabelSpec("valence", "score", low=0.0, high=10.0)) == "score"
    assert compute_metrics("score", SIMS_TRUE, SIMS_PRED, score_range=(-1, 1)) == compute_metrics(
        "sims", SIMS_TRUE, SIMS_PRED)
    assert "Has0_acc_2" in compute_metrics("score", MOSEI_TRUE, MOSEI_PRED, score_range=(-3.0, 3.0))


def test_scores_on_another_scale_get_mae_and_corr():
    # A folder corpus rated 1 to 5: no MMSA convention; a dev evaluation must still score it (it used to raise).
    task = TaskSpec("folder/sentiment", LabelSpec("sentiment", "score", low=1.0, high=5.0))
    pred = SplitPredictions(task, [1.0, 2.0, 4.0, 5.0], [1.5, 2.0, 3.0, 5.0], ["1.5", "2.0", "3.0", "5.0"],
                            np.full((4, 3), 1 / 3), np.ones((4, 1)), ["audio"], 0, np.arange(4))
    m = split_metrics(pred)
    assert m["N"] == 4 and m["MAE"] == pytest.approx(1.5 / 4) and m["parse_failure_rate"] == 0
    assert m["Corr"] == pytest.approx(float(np.corrcoef([1.5, 2.0, 3.0, 5.0], [1.0, 2.0, 4.0, 5.0])[0, 1]))
    assert not any("acc" in key for key in m)
    assert primary_score(task, m) == pytest.approx(-1.5 / 4 / 4)
    assert headline(task, m).startswith("MAE 0.375  Corr ")
    generic = compute_metrics("score", [1.0, 5.0], [2.0, 4.0], score_range=(1, 5))
    assert generic == pytest.approx({"N": 2, "MAE": 1.0, "Corr": 1.0})


def test_scalar_metrics_keep_the_plain_numbers():
    m = compute_metrics("classification", [0, 1], [0, 0], class_names=["neutral", "joy"])
    assert set(scalar_metrics(m)) == {"N", "Accuracy", "Weighted_F1", "Macro_F1"}
    assert scalar_metrics({"Corr": None, "N": np.int64(3), "flag": True, "MAE": 0.5}) == {"N": 3, "MAE": 0.5}


@pytest.mark.parametrize("kind, y_true, y_pred, message", [
    ("mosei", [0.5, float("nan")], [0.1, 0.2], "unlabelled"),
    ("sims", [0.5, 0.2], [0.1], "one prediction per row"),
    ("classification", [0, -1], [0, 1], "outside"),
    ("classification", [0.5], [1], "integer class indices"),
    ("mosei", [], [], "no rows"),
    ("score", [0.1], [0.1], "score_range"),
    ("regression", [0.1], [0.1], "unknown metric kind"),
])
def test_bad_inputs_are_refused_with_the_fix(kind, y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(kind, y_true, y_pred, class_names=["a", "b"] if kind == "classification" else None)


def test_expert_gates_are_averaged_per_true_class():
    gates = [[0.2, 0.3, 0.5], [0.4, 0.3, 0.3], [0.1, 0.1, 0.8]]
    by_class = expert_gates_by_class(gates, [0, 0, 1], ["a", "b", "c"])
    assert by_class["a"] == pytest.approx({"n": 2, "local": 0.3, "correlation": 0.3, "context": 0.4})
    assert by_class["b"] == pytest.approx({"n": 1, "local": 0.1, "correlation": 0.1, "context": 0.8})
    assert by_class["c"] == {"n": 0, "local": None, "correlation": None, "context": None}
    with pytest.raises(ValueError, match="one column per expert"):
        expert_gates_by_class([[0.5, 0.5]], [0], ["a"])


def test_format_table_has_one_column_per_split():
    dev = compute_metrics("classification", [0, 1], [0, 0], class_names=["neutral", "joy"])
    test = compute_metrics("classification", [0, 1, 1], [0, 1, 1], class_names=["neutral", "joy"])
    lines = format_table({"dev": dev, "test": test}).splitlines()
    assert lines[0].split() == ["metric", "dev", "test"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["Accuracy"] == ["0.5000", "1.0000"]
    assert rows["N"] == ["2", "3"]
    assert rows["Per_class_F1[joy]"] == ["0.0000", "1.0000"]
    assert not any(key.startswith(("Confusion", "Classes")) for key in rows)


def test_format_table_of_one_dict_shows_undefined_values():
    table = format_table(compute_metrics("mosei", [0.0, 0.0], [1.0, 1.0]))
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()}
    assert rows["metric"] == ["value"]
    assert rows["Corr"] == ["n/a"]
    assert rows["Has0_acc_2"] == ["1.0000"]
