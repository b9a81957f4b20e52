"""Every metric on hand-made predictions equals the value computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from MammoPatchLib.evaluation.metrics import (
    binary_metrics,
    calibration,
    FALSE_POSITIVE,
    FOUND_AGAIN,
    NEW_LESION,
    froc,
    match_image,
    patch_metrics,
    roc_auc,
)


def test_binary_metrics_by_hand():
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    pred = np.array([1, 1, 0, 1, 0, 0, 0, 0], bool)
    m = binary_metrics(truth, pred)  # tp 2, fp 1, fn 1, tn 4
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["support"] == 3


def test_roc_auc_by_hand():
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) -> 3/4
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1])) == pytest.approx(0.75)
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)  # ties count half
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_calibration_error_by_hand():
    # bin [0.2,0.3): p=0.25 x2, observed 0.5 -> |0.25|; bin [0.9,1]: p=0.95 x2, observed 1 -> 0.05
    result = calibration(np.array([1, 0, 1, 1]), np.array([0.25, 0.25, 0.95, 0.95]), bins=10)
    assert result["ece"] == pytest.approx(0.5 * 0.25 + 0.5 * 0.05)


def test_patch_table_with_no_finding_and_weighted_averages():
    classes = ["Mass", "Calc"]
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [0, 0]])
    probs = np.array([[0.9, 0.1], [0.2, 0.1], [0.1, 0.8], [0.6, 0.1], [0.1, 0.1]])
    table = patch_metrics(targets, probs, classes)
    rows = table["per_class"]
    # Mass: tp1 fp1 fn1 -> P=R=F1=0.5; Calc: tp1 -> 1.0; No Finding: truth [0,0,0,1,1], pred [0,1,0,0,1] -> tp1 fp1 fn1
    assert rows["Mass"]["f1"] == pytest.approx(0.5) and rows["Calc"]["f1"] == pytest.approx(1.0)
    assert rows["No Finding"]["f1"] == pytest.approx(0.5) and rows["No Finding"]["support"] == 2
    assert table["weighted_f1"] == pytest.approx((0.5 * 2 + 1.0 * 1 + 0.5 * 2) / 5)
    assert table["weighted_f1_without_no_finding"] == pytest.approx((0.5 * 2 + 1.0 * 1) / 3)


def test_froc_by_hand():
    truths = [[(10, 10, 20, 20)], [(50, 50, 70, 70)], []]
    detections = [
        [(0.9, (9, 9, 21, 21), (15, 15)), (0.3, (100, 100, 110, 110), (105, 105))],  # hit, then FP
        [(0.8, (0, 0, 5, 5), (2, 2)), (0.6, (52, 52, 70, 70), (60, 60))],  # FP, then hit
        [(0.7, (30, 30, 40, 40), (35, 35))],  # FP on a normal image
    ]
    result = froc(detections, truths, fp_rates=(0.25, 0.5, 1))
    # ranked: 0.9 hit (1/2), 0.8 FP (1 FP = 0.33/img), 0.7 FP (0.67/img), 0.6 hit (2/2 at 0.67/img), 0.3 FP (1.0/img)
    assert result["sensitivity_at_fp"]["0.25"] == pytest.approx(0.5)
    assert result["sensitivity_at_fp"]["0.5"] == pytest.approx(0.5)
    assert result["sensitivity_at_fp"]["1"] == pytest.approx(1.0)


def test_match_image_says_new_lesion_false_positive_or_found_again_highest_score_first():
    """A second detection of a found lesion is neither a hit nor a false positive; with two
    lesions under one detection, the next detection can still find the second."""
    truths = [(10, 10, 30, 30), (12, 12, 28, 28)]
    detections = [(0.2, (200, 200, 210, 210), (205, 205)), (0.9, (11, 11, 29, 29), (20, 20)),
                  (0.5, (13, 13, 27, 27), (20, 20)), (0.4, (10, 10, 30, 30), (20, 20))]
    assert match_image(detections, truths) == [(0.9, NEW_LESION), (0.5, NEW_LESION), (0.4, FOUND_AGAIN),
                                              (0.2, FALSE_POSITIVE)]
    assert match_image(detections, []) == [(0.9, FALSE_POSITIVE), (0.5, FALSE_POSITIVE), (0.4, FALSE_POSITIVE),
                                          (0.2, FALSE_POSITIVE)]
    result = froc([detections], [truths], fp_rates=(0.5, 1))
    assert result["sensitivity_at_fp"] == {"0.5": 1.0, "1": 1.0}
    assert result["curve"] == [(0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (1.0, 1.0)]
