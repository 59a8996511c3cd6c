"""Describe the ROC statistics against pROC's values on DeLong et al.'s (1988) example."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from lncr.evaluation.stats import bootstrap_auc_ci, delong_auc, delong_test, wilson_interval
from lncr.training.metrics import auc

REFERENCE = REPO / "tests" / "data" / "reference"


@pytest.fixture(scope="module")
def ovarian() -> pd.DataFrame:
    return pd.read_csv(REFERENCE / "delong1988_ovarian.csv")


class DescribeDelong:
    def it_reproduces_proc_auc_variance_and_interval(self, ovarian):
        rows = pd.read_csv(REFERENCE / "delong1988_pROC_auc.csv").to_dict("records")
        assert len(rows) == 3
        for row in rows:
            result = delong_auc(ovarian.popind, ovarian[row["marker"]])
            assert result.auc == pytest.approx(row["auc"], abs=1e-9)
            assert result.variance == pytest.approx(row["var_delong"], abs=1e-9)
            assert result.ci_low == pytest.approx(row["ci_low"], abs=1e-7)
            assert result.ci_high == pytest.approx(row["ci_high"], abs=1e-7)

    def it_reproduces_proc_paired_tests(self, ovarian):
        for row in pd.read_csv(REFERENCE / "delong1988_pROC_tests.csv").to_dict("records"):
            test = delong_test(ovarian.popind, ovarian[row["a"]], ovarian[row["b"]])
            assert test.z == pytest.approx(row["z"], abs=1e-7)
            assert test.p == pytest.approx(row["p"], abs=1e-7)
            assert (test.auc_a, test.auc_b) == pytest.approx((row["auc_a"], row["auc_b"]), abs=1e-9)

    def it_agrees_with_the_plain_auc_with_ties(self):
        y = [0, 0, 1, 1, 0, 1]
        s = [0.1, 0.5, 0.5, 0.9, 0.3, 0.2]
        assert delong_auc(y, s).auc == pytest.approx(auc(y, s))

    def it_refuses_a_single_class(self):
        with pytest.raises(ValueError, match="one positive and one negative"):
            delong_auc([1, 1], [0.2, 0.3])


class DescribeBootstrap:
    def it_is_seeded_and_brackets_the_auc(self, ovarian):
        a = bootstrap_auc_ci(ovarian.popind, ovarian.kg_score, resamples=500, seed=1)
        assert a == bootstrap_auc_ci(ovarian.popind, ovarian.kg_score, resamples=500, seed=1)
        value = delong_auc(ovarian.popind, ovarian.kg_score)
        assert a[0] < value.auc < a[1]
        # close to DeLong's interval on 43 cases
        assert a[0] == pytest.approx(value.ci_low, abs=0.06)
        assert a[1] == pytest.approx(value.ci_high, abs=0.06)


class DescribeWilson:
    def it_matches_the_textbook_example(self):
        low, high = wilson_interval(81, 263)  # Newcombe (1998), example (i): 0.2553–0.3662
        assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
        assert np.isnan(wilson_interval(0, 0)[0])
        assert wilson_interval(0, 10)[0] == 0.0
