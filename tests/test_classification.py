"""Describe metrics at a development threshold, their intervals, Brier score and calibration."""

from __future__ import annotations

import pytest

from lncr.evaluation.classification import (
    brier_score,
    calibration_table,
    development_threshold,
    threshold_metrics,
)

LABELS = [1, 1, 1, 0, 0, 0, 1, 0]
PROBS = [0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.7, 0.4]


class DescribeThresholdMetrics:
    def it_counts_the_confusion_matrix_at_the_threshold(self):
        t = threshold_metrics(LABELS, PROBS, 0.5, resamples=200).set_index("metric")
        # predicted CR (p >= 0.5): 0.9, 0.8, 0.6, 0.7 -> tp 3, fp 1, fn 1, tn 3
        assert t.loc["sensitivity", "value"] == 0.75 and t.loc["specificity", "value"] == 0.75
        assert t.loc["ppv", "value"] == 0.75 and t.loc["npv", "value"] == 0.75
        assert t.loc["accuracy", "value"] == 0.75 and t.loc["f1", "value"] == 0.75
        assert (t.loc["sensitivity", "successes"], t.loc["sensitivity", "total"]) == (3, 4)
        assert (t.ci_low <= t.value).all() and (t.value <= t.ci_high).all()
        assert t.loc["f1", "ci_method"] == "bootstrap" and (t.threshold == 0.5).all()

    def it_counts_a_probability_equal_to_the_threshold_as_cr(self):
        t = threshold_metrics([1, 0], [0.5, 0.2], 0.5, resamples=50).set_index("metric")
        assert t.loc["sensitivity", "value"] == 1.0

    def it_transfers_the_development_threshold_unchanged(self):
        dev = development_threshold(LABELS, PROBS, "youden")
        external = threshold_metrics([1, 0, 1], [0.65, 0.62, 0.2], dev, resamples=50)
        assert dev == 0.7 and (external.threshold == dev).all()
        assert development_threshold(LABELS, PROBS, "0.5") == 0.5
        with pytest.raises(ValueError, match="youden or 0.5"):
            development_threshold(LABELS, PROBS, "f1")


class DescribeCalibration:
    def it_scores_and_bins_probabilities(self):
        assert brier_score([1, 0], [1.0, 0.0]) == 0.0
        assert brier_score([1, 0], [0.5, 0.5]) == 0.25
        t = calibration_table(LABELS, PROBS, bins=2)
        assert t.n.tolist() == [4, 4] and t.observed.tolist() == [0.25, 0.75]
        assert t.mean_predicted.iloc[0] == pytest.approx(0.25)
