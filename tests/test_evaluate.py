"""Describe `lncr evaluate`: the threshold fixed on validation patients and carried unchanged
to the external cohort, AUCs with DeLong and bootstrap intervals, paired tests of the
multi-stain ensemble, the files and figures it writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import rankdata
from typer.testing import CliRunner

from lncr.cli import app
from lncr.evaluation.cohort_metrics import evaluate_predictions
from lncr.evaluation.plots import roc_points
from lncr.evaluation.stats import bootstrap_auc_ci, delong_auc
from lncr.study.config import EvaluationSettings
from lncr.training.metrics import youden_threshold

RNG = np.random.default_rng(4)


def cohort_rows(model: str, kind: str, stain: str, split: str, n: int, shift: float,
                offset: int = 0) -> pd.DataFrame:
    labels = np.arange(n) % 2
    probs = np.clip(0.5 + shift * (labels - 0.5) + RNG.normal(0, 0.2, n), 0, 1)
    return pd.DataFrame({"model": model, "kind": kind, "stain": stain,
                         "patient_id": [f"{split[:1]}{i + offset:03d}" for i in range(n)],
                         "cohort": "external" if split == "external" else "development",
                         "split": split, "label": labels, "probability": probs})


@pytest.fixture
def rows() -> pd.DataFrame:
    parts = []
    for model, kind, stain, shift in (("HE", "stain ensemble", "HE", 0.4),
                                      ("PAS", "stain ensemble", "PAS", 0.2),
                                      ("multi-stain", "multi-stain ensemble", "", 0.5)):
        parts += [cohort_rows(model, kind, stain, "val", 20, shift),
                  cohort_rows(model, kind, stain, "train", 10, shift),
                  cohort_rows(model, kind, stain, "external", 30, shift - 0.1)]
    return pd.concat(parts, ignore_index=True)


SETTINGS = EvaluationSettings(bootstrap_resamples=300)


class DescribeUndefinedMetrics:
    def it_says_why_an_auc_or_a_proportion_is_undefined(self, rows):
        from lncr.display import fmt  # the console's and the report's format

        only_cr = rows[(rows.split != "external") | (rows.label == 1)]
        metrics, thresholds, _, _ = evaluate_predictions(only_cr, SETTINGS)
        ext = metrics[(metrics.cohort == "external") & (metrics.model == "HE")].iloc[0]
        assert np.isnan(ext.auc) and ext.auc_note.startswith("only CR patients (15)")
        val = metrics[(metrics.cohort == "validation") & (metrics.model == "HE")].iloc[0]
        assert val.auc == val.auc and val.auc_note == ""
        spec = thresholds[(thresholds.cohort == "external") & (thresholds.model == "HE")
                          & (thresholds.metric == "specificity")].iloc[0]
        assert np.isnan(spec.value) and spec.note == "no non-CR patients"
        assert fmt(ext.auc, 2, ext.auc_note) == f"— ({ext.auc_note})"
        assert fmt(0.8, 2, "") == "0.80"


class DescribeThresholdTransfer:
    def it_fixes_the_threshold_on_validation_patients_and_applies_it_to_external(self, rows):
        metrics, thresholds, _, _ = evaluate_predictions(rows, SETTINGS)
        he = rows[rows.model == "HE"]
        val = he[he.split == "val"]
        expected = youden_threshold(val.label.to_numpy(), val.probability.to_numpy())
        m = metrics[metrics.model == "HE"].set_index("cohort")
        assert m.loc["validation", "threshold"] == m.loc["external", "threshold"] == expected
        t = thresholds[(thresholds.model == "HE") & (thresholds.cohort == "external")]
        assert (t.threshold == expected).all()

    def it_does_not_move_the_threshold_when_external_data_change(self, rows):
        before = evaluate_predictions(rows, SETTINGS)[0]
        changed = rows.copy()
        ext = changed.split == "external"
        changed.loc[ext, "probability"] = 1 - changed.loc[ext, "probability"]
        after = evaluate_predictions(changed, SETTINGS)[0]
        assert list(before.threshold) == list(after.threshold)
        assert not np.allclose(before.auc, after.auc)

    def it_counts_external_metrics_at_that_threshold(self, rows):
        metrics, thresholds, _, _ = evaluate_predictions(rows, SETTINGS)
        ext = rows[(rows.model == "PAS") & (rows.split == "external")]
        threshold = metrics[(metrics.model == "PAS")].threshold.iloc[0]
        pred = ext.probability >= threshold
        sens = thresholds[(thresholds.model == "PAS") & (thresholds.cohort == "external")
                          & (thresholds.metric == "sensitivity")].iloc[0]
        assert sens.successes == int((pred & (ext.label == 1)).sum())
        assert sens.total == int((ext.label == 1).sum())


class DescribeSelectionBias:
    def it_marks_validation_results_optimistic_and_external_ones_unbiased(self, rows):
        metrics, thresholds, _, _ = evaluate_predictions(rows, SETTINGS)
        estimate = metrics.groupby("cohort").estimate.unique()
        assert list(estimate["validation"]) == ["optimistic"]
        assert list(estimate["external"]) == ["unbiased"]
        assert metrics[metrics.cohort == "validation"].estimate_note.str.contains(
            "selected the architecture").all()
        assert set(thresholds[thresholds.cohort == "external"].estimate) == {"unbiased"}

    def it_sets_each_cohorts_own_threshold_as_the_authors_and_says_so(self, rows):
        settings = EvaluationSettings(bootstrap_resamples=300, threshold="cohort_youden")
        metrics, _, _, _ = evaluate_predictions(rows, settings)
        ext = rows[(rows.model == "HE") & (rows.split == "external")]
        m = metrics[metrics.model == "HE"].set_index("cohort")
        assert m.loc["external", "threshold"] == youden_threshold(ext.label.to_numpy(),
                                                                  ext.probability.to_numpy())
        assert m.loc["external", "threshold"] != m.loc["validation", "threshold"]
        assert (m.estimate == "optimistic").all()
        assert "own predictions (optimistic)" in m.loc["external", "threshold_source"]


class DescribeAucStatistics:
    def it_reports_delong_and_bootstrap_intervals_per_cohort(self, rows):
        metrics = evaluate_predictions(rows, SETTINGS)[0].set_index(["cohort", "model"])
        ext = rows[(rows.model == "multi-stain") & (rows.split == "external")]
        d = delong_auc(ext.label, ext.probability)
        m = metrics.loc[("external", "multi-stain")]
        assert m.auc == pytest.approx(d.auc) and m.delong_ci_low == pytest.approx(d.ci_low)
        assert m.bootstrap_ci_low <= m.auc <= m.bootstrap_ci_high
        assert m.patients == 30 and m.cr_patients == 15
        assert metrics.loc[("validation", "HE")].patients == 20  # val only, not train

    def it_counts_patients_without_a_prediction_instead_of_dropping_them(self, rows):
        rows.loc[(rows.model == "multi-stain") & (rows.patient_id == "e000"), "probability"] = \
            np.nan
        m = evaluate_predictions(rows, SETTINGS)[0].set_index(["cohort", "model"])
        assert m.loc[("external", "multi-stain")].without_prediction == 1
        assert m.loc[("external", "multi-stain")].patients == 30

    def it_compares_the_multi_stain_ensemble_with_each_stain_on_shared_patients(self, rows):
        rows = rows[~((rows.model == "PAS") & (rows.patient_id == "e001"))]
        comparisons = evaluate_predictions(rows, SETTINGS)[3].set_index(["cohort", "model_b"])
        assert set(comparisons.index) == {(c, m) for c in ("validation", "external")
                                          for m in ("HE", "PAS")}
        assert comparisons.loc[("external", "PAS")].patients == 29
        assert comparisons.loc[("external", "HE")].patients == 30
        assert 0 <= comparisons.loc[("external", "HE")].p <= 1

    def it_bootstraps_exactly_what_a_loop_over_resamples_gives(self):
        y = np.r_[np.ones(9), np.zeros(11)].astype(int)
        s = np.round(RNG.random(20) + 0.3 * y, 1)  # ties included
        x, z = s[y == 1], s[y == 0]
        rng = np.random.default_rng(3)
        xi, zi = rng.integers(0, 9, (200, 9)), rng.integers(0, 11, (200, 11))
        loop = []
        for a, b in zip(xi, zi):
            r = rankdata(np.r_[x[a], z[b]])
            loop.append((r[:9].sum() - 45) / 99)
        assert bootstrap_auc_ci(y, s, 200, seed=3) == pytest.approx(
            tuple(np.percentile(loop, [2.5, 97.5])))


class DescribeRocPoints:
    def it_steps_through_distinct_thresholds_with_ties_moving_diagonally(self):
        fpr, tpr = roc_points([1, 0, 1, 0], [0.9, 0.5, 0.5, 0.1])
        assert list(fpr) == [0, 0, 0.5, 1] and list(tpr) == [0, 0.5, 1, 1]


def write_study(folder, rows: pd.DataFrame, stains: str = "[HE, PAS]",
                sites: dict[str, str] | None = None) -> None:
    """A study whose tables hold the predicted patients (slide files are never opened)."""
    (folder / "study.yaml").write_text(f"patients: p.csv\nslides: s.csv\nstains: {stains}\n")
    patients = rows[["patient_id", "cohort", "label"]].drop_duplicates("patient_id")
    if sites:
        patients = patients.assign(site=patients.patient_id.map(sites).fillna(""))
    patients.to_csv(folder / "p.csv", index=False)
    pd.DataFrame([(p, st, f"{p}_{st}.svs") for p in patients.patient_id for st in ("HE", "PAS")],
                 columns=["patient_id", "stain", "path"]).to_csv(folder / "s.csv", index=False)


def write_predictions(folder, rows: pd.DataFrame) -> None:
    """The three prediction tables of ``rows`` under ``folder``."""
    folder.mkdir(parents=True)
    cols = ["patient_id", "cohort", "split", "label", "probability"]
    single = pd.concat([rows[rows.model == st][cols].assign(stain=st, magnification=m)
                        for st in ("HE", "PAS") for m in ("10x", "20x")])
    single.to_csv(folder / "single_models.csv", index=False)
    rows[rows.kind == "stain ensemble"][cols + ["stain"]].to_csv(
        folder / "stain_ensembles.csv", index=False)
    rows[rows.model == "multi-stain"][cols].to_csv(folder / "multi_stain.csv", index=False)


def two_sites(rows: pd.DataFrame) -> dict[str, str]:
    """The first half of the external patients at site A, the rest at site B (both outcomes
    at each)."""
    ext = sorted(rows[rows.cohort == "external"].patient_id.unique())
    return {p: "A" if i < len(ext) // 2 else "B" for i, p in enumerate(ext)}


class DescribeSites:
    def it_evaluates_each_external_site_at_the_validation_threshold(self, rows):
        from sklearn.metrics import roc_auc_score

        from lncr.evaluation.cohort_metrics import site_tables

        sites = two_sites(rows)
        pooled = evaluate_predictions(rows, SETTINGS)[0]
        tables = site_tables(rows, sites, SETTINGS)
        m = tables["metrics"]
        assert set(m.site) == {"A", "B"} and (m.cohort == "external").all()
        for model in ("HE", "multi-stain"):
            mine = m[m.model == model].set_index("site")
            assert mine.patients.sum() == pooled[(pooled.cohort == "external")
                                                 & (pooled.model == model)].patients.iloc[0]
            threshold = pooled[(pooled.cohort == "validation") & (pooled.model == model)]
            assert (mine.threshold == threshold.threshold.iloc[0]).all()
            ext = rows[(rows.model == model) & rows.patient_id.map(sites).eq("A")]
            assert mine.loc["A", "auc"] == pytest.approx(roc_auc_score(ext.label, ext.probability))
        tests = tables["comparisons"]
        assert set(tests.site) == {"A", "B"} and set(tests.model_b) == {"HE", "PAS"}
        assert site_tables(rows, {}, SETTINGS) is None  # no site column: pooled only


class DescribeEvaluateCommand:
    def it_writes_per_site_tables_and_prints_and_reports_them(self, tmp_path, rows):
        from lncr.report.build import build_report
        from lncr.study.validate import Study

        write_study(tmp_path, rows, sites=two_sites(rows))
        write_predictions(tmp_path / "lncr-output" / "predictions", rows)
        result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "study.yaml"), "--set",
                                          "evaluation.bootstrap_resamples=200", "--no-figures"])
        assert result.exit_code == 0, result.output
        assert "External cohort per site" in result.output
        sites = pd.read_csv(tmp_path / "lncr-output" / "evaluation" / "sites" / "metrics.csv")
        assert set(sites.site) == {"A", "B"}
        record = json.loads((tmp_path / "lncr-output" / "evaluation" / "evaluation.json")
                            .read_text())
        assert {r["site"] for r in record["sites"]["metrics"]} == {"A", "B"}
        page = build_report(Study.load(tmp_path / "study.yaml")).read_text()
        assert "External cohort by site" in page and "Paired DeLong tests per external site" in page

    def it_writes_tables_json_and_figures(self, tmp_path, rows):
        write_study(tmp_path, rows)
        write_predictions(tmp_path / "lncr-output" / "predictions", rows)
        result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "study.yaml"), "--set",
                                          "evaluation.bootstrap_resamples=200"])
        assert result.exit_code == 0, result.output
        out = tmp_path / "lncr-output" / "evaluation"
        metrics = pd.read_csv(out / "metrics.csv")
        assert set(metrics.model) == {"HE 10x", "HE 20x", "PAS 10x", "PAS 20x", "HE", "PAS",
                                      "multi-stain"}
        record = json.loads((out / "evaluation.json").read_text())
        assert record["settings"]["bootstrap_resamples"] == 200 and "versions" in record
        for name in ("roc-external", "roc-validation", "calibration-external"):
            with Image.open(out / f"{name}.png") as im:
                assert im.size[0] > 300 and im.size[1] > 300
            assert "<svg" in (out / f"{name}.svg").read_text()[:500]
        assert "AUC" in (out / "roc-external.svg").read_text()
        assert "Multi-stain ensemble, external cohort (30 patients): AUC" in result.output

    def it_explains_what_to_run_when_predictions_are_missing(self, tmp_path, rows):
        write_study(tmp_path, rows)
        result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "study.yaml")])
        assert result.exit_code == 2 and "lncr predict" in result.output
