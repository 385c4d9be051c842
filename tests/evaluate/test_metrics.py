import numpy as np
import pytest

from geoseg.evaluate.metrics import confusion_matrix, scores_from_confusion


def test_scores_by_hand():
    truth = np.array([0, 0, 1, 1, 2, 2, 255])
    pred = np.array([0, 1, 1, 1, 2, 0, 0])
    matrix = confusion_matrix(truth, pred, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    scores = scores_from_confusion(matrix, ["bg", "water", "road"])
    assert scores["pixel_accuracy"] == pytest.approx(4 / 6)
    iou = [1 / 3, 2 / 3, 1 / 2]
    assert list(scores["per_class_iou"].values()) == pytest.approx(iou)
    assert scores["mean_iou"] == pytest.approx(np.mean(iou))
    assert scores["mean_accuracy"] == pytest.approx(np.mean([1 / 2, 1, 1 / 2]))
    assert scores["frequency_weighted_iou"] == pytest.approx(np.dot([2 / 6, 2 / 6, 2 / 6], iou))
    assert scores["per_class_f1"]["water"] == pytest.approx(2 * 2 / (2 + 3))


def test_streaming_sum_equals_one_shot_and_invalid_pixels_ignored():
    rng = np.random.default_rng(1)
    truth, pred = rng.integers(0, 4, 1000), rng.integers(0, 4, 1000)
    valid = rng.random(1000) > 0.2
    whole = confusion_matrix(truth, pred, 4, valid)
    parts = sum(
        confusion_matrix(truth[i : i + 100], pred[i : i + 100], 4, valid[i : i + 100]) for i in range(0, 1000, 100)
    )
    assert (whole == parts).all() and whole.sum() == valid.sum()


def test_absent_class_is_left_out_of_the_mean():
    scores = scores_from_confusion(confusion_matrix(np.array([0, 0]), np.array([0, 0]), 2), ["a", "b"])
    assert scores["per_class_iou"]["b"] is None and scores["mean_iou"] == 1.0
