"""Describe the published ensembles on hand-computed examples, missing inputs included."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from lncr.evaluation.ensemble import multi_stain_ensemble, stain_ensembles

ROWS = [  # patient, stain, magnification, probability, label
    ("P1", "HE", "10x", 0.2, 1), ("P1", "HE", "20x", 0.4, 1), ("P1", "HE", "40x", 0.9, 1),
    ("P1", "PAS", "10x", 0.7, 1), ("P1", "PAS", "20x", 0.8, 1), ("P1", "PAS", "40x", 0.6, 1),
    ("P2", "HE", "10x", 0.1, 0), ("P2", "HE", "20x", 0.3, 0),  # no 40x
    # P2 has no PAS slide at all
]


@pytest.fixture
def predictions() -> pd.DataFrame:
    return pd.DataFrame(ROWS, columns=["patient_id", "stain", "magnification", "probability",
                                       "label"])


class DescribeStainEnsembles:
    def it_averages_the_magnifications_of_each_stain(self, predictions):
        t = stain_ensembles(predictions).set_index(["patient_id", "stain"])
        assert t.loc[("P1", "HE"), "probability"] == pytest.approx(0.5)
        assert t.loc[("P1", "PAS"), "probability"] == pytest.approx(0.7)
        assert t.loc[("P1", "HE"), "magnifications_used"] == "10x+20x+40x"

    def it_averages_what_exists_and_says_so(self, predictions):
        t = stain_ensembles(predictions).set_index(["patient_id", "stain"])
        assert t.loc[("P2", "HE"), "probability"] == pytest.approx(0.2)
        assert t.loc[("P2", "HE"), "magnifications_used"] == "10x+20x"
        assert not t.loc[("P2", "HE"), "complete"] and t.loc[("P1", "HE"), "complete"]
        assert ("P2", "PAS") not in t.index and t.loc[("P2", "HE"), "label"] == 0

    def it_refuses_two_models_for_one_stain_and_magnification(self, predictions):
        twice = pd.concat([predictions, predictions.iloc[:1]])
        with pytest.raises(ValueError, match="patient P1, HE 10x"):
            stain_ensembles(twice)


class DescribeMultiStainEnsemble:
    def it_takes_the_maximum_over_the_stains(self, predictions):
        t = multi_stain_ensemble(stain_ensembles(predictions), ("HE", "PAS")).set_index("patient_id")
        assert t.loc["P1", "probability"] == pytest.approx(0.7)  # max(0.5, 0.7)
        assert t.loc["P1", "stains_used"] == "HE+PAS" and t.loc["P1", "stains_missing"] == ""

    def it_uses_the_stains_a_patient_has_and_lists_the_missing(self, predictions):
        t = multi_stain_ensemble(stain_ensembles(predictions), ("HE", "PAS")).set_index("patient_id")
        assert t.loc["P2", "probability"] == pytest.approx(0.2)
        assert (t.loc["P2", "stains_used"], t.loc["P2", "stains_missing"]) == ("HE", "PAS")

    def it_keeps_a_patient_without_any_prediction(self, predictions):
        t = multi_stain_ensemble(stain_ensembles(predictions), ("HE", "PAS"),
                                 patients=["P1", "P2", "P3"]).set_index("patient_id")
        assert math.isnan(t.loc["P3", "probability"])
        assert (t.loc["P3", "stains_used"], t.loc["P3", "stains_missing"]) == ("", "HE+PAS")
