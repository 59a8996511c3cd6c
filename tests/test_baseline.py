"""Describe the baseline control: colour statistics of the same tiles and a logistic
regression fitted on the training patients, through the study's ensembles and statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from conftest import FAST, validated_copy
from lncr.evaluation.baseline import colour_features, fit_and_predict, run_baseline
from lncr.study.validate import Study


class DescribeColourFeatures:
    def it_gives_optical_density_statistics_and_a_histogram_that_sums_to_one(self):
        white = colour_features(np.full((1, 8, 8, 3), 255, np.uint8))
        dark = colour_features(np.full((1, 8, 8, 3), 40, np.uint8))
        assert np.allclose(white[:3], 0) and (dark[:3] > 0.7).all()
        assert white[6:].sum() == 1.0 and white[6:].argmax() != dark[6:].argmax()


class DescribeFit:
    def it_learns_from_training_patients_only_and_scores_everyone(self):
        rng = np.random.default_rng(0)
        ids = [f"P{i}" for i in range(30)]
        label = np.arange(30) % 2
        split = ["train"] * 20 + ["val"] * 6 + ["external"] * 4
        sides = pd.DataFrame({"patient_id": ids, "label": label, "split": split})
        f = rng.normal(0, 1, (30, 70)) + label[:, None] * 1.5  # a learnable signal
        features = pd.DataFrame(f, columns=[f"f{i}" for i in range(70)]).assign(
            patient_id=ids, stain="HE", magnification="10x")
        out = fit_and_predict(features, sides)
        assert list(out.patient_id) == ids and out.probability.between(0, 1).all()
        held_out = out.patient_id.map(dict(zip(ids, split))) != "train"
        auc_like = out[held_out & (label == 1)].probability.mean() > out[
            held_out & (label == 0)].probability.mean()
        assert auc_like
        # A change to a validation patient's label does not change the fit.
        moved = sides.assign(label=np.where(sides.patient_id == "P20", 1 - label, label))
        again = fit_and_predict(features, moved)
        assert np.allclose(again.probability, out.probability)


def it_writes_the_control_in_evaluate_s_format(tiled, tmp_path):
    study_yaml = validated_copy(tiled, tmp_path / "s")
    folder = run_baseline(Study.load(study_yaml, FAST))
    metrics = pd.read_csv(folder / "metrics.csv")
    assert {"multi-stain", "HE", "HE 10x"} <= set(metrics.model)
    assert set(metrics.cohort) >= {"validation", "external"}
    multi = pd.read_csv(folder / "predictions" / "multi_stain.csv", dtype={"patient_id": str})
    assert multi.probability.notna().all() and len(multi) == multi.patient_id.nunique()


class DescribeShowingIt:
    metrics = pd.DataFrame({"cohort": ["external", "external"], "model": ["multi-stain", "HE"],
                            "kind": ["multi-stain ensemble", "stain ensemble"],
                            "auc": [0.92, 0.91]})
    control = pd.DataFrame({"cohort": ["external", "external"],
                            "model": ["multi-stain", "HE"], "auc": [0.77, 0.97]})

    def it_puts_the_baseline_beside_each_ensemble_in_the_console(self):
        from lncr.cli.evaluation import baseline_rows

        assert baseline_rows(self.metrics, self.control) == [
            ("external", "multi-stain", "0.920", "0.770"), ("external", "HE", "0.910", "0.970")]

    def it_shows_the_comparison_in_the_report_or_says_how_to_get_it(self, tmp_path):
        from lncr.report.sections import baseline_table

        assert "--baseline" in baseline_table(tmp_path, self.metrics)
        (tmp_path / "evaluation" / "baseline").mkdir(parents=True)
        self.control.to_csv(tmp_path / "evaluation" / "baseline" / "metrics.csv", index=False)
        html = baseline_table(tmp_path, self.metrics)
        assert "0.77" in html and "0.92" in html and "trivial model" in html
