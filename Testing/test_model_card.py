"""The model card carries the model's metadata and the evaluation's numbers."""

from __future__ import annotations

from helpers import tiny_model_file

from MammoPatchLib.evaluation.model_card import model_card


def test_model_card_lists_metadata_and_metrics(tmp_path):
    model = tiny_model_file(tmp_path / "m.pt", spacing_mm=0.2)
    per_class = {"No Finding": {"accuracy": 0.9, "precision": 0.8, "recall": 0.7, "f1": 0.75, "support": 10,
                                "auc": 0.66},
                 "Mass": {"accuracy": 0.5, "precision": 0.25, "recall": 0.125, "f1": 0.1667, "support": 4,
                          "auc": float("nan")}}
    report = {"data": {"source": "mini-mias", "split": "validation", "images": 3, "women": 2},
              "mode": "exact",
              "patch_level": {"per_class": per_class, "weighted_f1": 0.4321, "weighted_f1_without_no_finding": 0.1667,
                              "calibration": {"ece": 0.05}},
              "image_level": {"auc_abnormal_vs_normal": 0.8125, "interval": (0.61, 0.93), "abnormal": 2, "normal": 1},
              "lesion_level": {"all_classes_froc": {"0.25": 0.125, "0.5": 0.25, "1": 0.5, "2": 0.625, "4": 0.75},
                               "intervals": {"sens@1": (0.25, 0.75)}, "lesions": 8,
                               "per_class": {"Mass": {"froc": {"1": 0.5}, "lesions": 8}}}}
    text = model_card(model, report, "mammopatch train --data X")
    assert "efficientnet-lite0" in text and "0.2 mm" in text and "Suspicious Calcification" in text
    assert "| Mass | 0.500 | 0.250 | 0.125 | 0.167 | 4 | n/a |" in text
    assert "ROC AUC 0.812 (95 % CI 0.610-0.930)" in text or "ROC AUC 0.813 (95 % CI 0.610-0.930)" in text
    assert "| sensitivity | 0.125 | 0.250 | 0.500 | 0.625 | 0.750 |" in text
    assert "| 95 % CI | n/a | n/a | 0.250-0.750 | n/a | n/a |" in text
    assert "Mass 0.500 (n=8)" in text
    assert "Suckling" in text and "Mellado" in text and "mammopatch train --data X" in text
