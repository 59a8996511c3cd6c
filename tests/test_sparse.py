"""Describe a study on sparse data, as real needle biopsies give: a stain whose validation
patients with tiles hold one outcome, a patient without a stain, a stain with too few
patients to train — the study completes on what it can use and says what it left out; and the
k-fold selection protocol, which scores what one split cannot."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from conftest import FAST
from lncr.cli import app
from lncr.layout import read_table
from lncr.study.config import StudyConfig
from lncr.study.folds import stratified_folds
from lncr.sweep.grid import build_grid

#: One architecture (resnet18 from scratch), two bag sizes, two repeats, tiny inputs.
SPARSE = FAST + ["tiling.encoding=jpeg", "training.pretrained=false", "training.epochs=2",
                 "training.warmup_epochs=1", "training.input_size=32", "training.crop_size=96",
                 "training.embedding_dim=16", "training.transformer_heads=2",
                 "training.feedforward_dim=16", "training.eval_tiles=8",
                 "training.loader_workers=0", "sweep.architectures=[resnet18]",
                 "sweep.bag_sizes=[2, 4]", "sweep.repeats=2", "sweep.stains=[HE, PAS]",
                 "evaluation.bootstrap_resamples=200"]
#: Three folds at 10x; PAS has two CR patients with tiles, so each fold trains on one.
KFOLD = SPARSE + ["sweep.validation=kfold", "sweep.folds=3", "sweep.repeats=1",
                  "sweep.magnifications=[10x]", "training.min_patients_per_outcome=1"]
#: The split: one patient of each outcome validates.
SPLIT = {"DEV-001": "val", "DEV-002": "val", "DEV-003": "train", "DEV-004": "train",
         "DEV-005": "train", "DEV-006": "train"}
#: Slides missing: PAS of the one CR validation patient (PAS cannot be validated on the split),
#: H&E of one external patient, Masson of both CR patients who train (Masson cannot be trained).
DROPPED = [("DEV-002", "PAS"), ("EXT-001", "HE"), ("DEV-003", "MASSON"), ("DEV-005", "MASSON")]


def args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def sparse(tiled, tmp_path_factory):
    """The tiled phantom with :data:`SPLIT` recorded and the :data:`DROPPED` slides gone
    (tiled again, so the tile index holds what the slides table does)."""
    study = tmp_path_factory.mktemp("sparse") / "study"
    import shutil

    shutil.copytree(tiled, study)
    patients = pd.read_csv(study / "patients.csv", dtype=str, keep_default_na=False)
    patients["split"] = patients.patient_id.map(SPLIT).fillna("")
    patients.to_csv(study / "patients.csv", index=False)
    slides = pd.read_csv(study / "slides.csv", dtype=str, keep_default_na=False)
    drop = slides.apply(lambda r: (r.patient_id, r.stain) in DROPPED, axis=1)
    slides[~drop].to_csv(study / "slides.csv", index=False)
    for command in (["validate", str(study / "study.yaml")], ["tile", str(study / "study.yaml")]):
        result = CliRunner().invoke(app, command + args(FAST))
        assert result.exit_code == 0, result.output
    return study / "study.yaml"


def run_stages(sparse, folder, sets: list[str], evaluate: list[str], report: bool):
    """A copy of the sparse study in ``folder`` swept, predicted, evaluated (with
    ``evaluate``'s options) and, with ``report``, reported: (study file, command outputs)."""
    import shutil

    shutil.copytree(sparse.parent, folder)
    study = folder / "study.yaml"
    stages = [("sweep", ["sweep", str(study), "--workers", "2", "--device", "cpu"]),
              ("predict", ["predict", str(study), "--device", "cpu"]),
              ("evaluate", ["evaluate", str(study), *evaluate])]
    stages += [("report", ["report", str(study)])] if report else []
    return study, {name: CliRunner().invoke(app, command + args(sets))
                   for name, command in stages}


@pytest.fixture(scope="module")
def swept(sparse, tmp_path_factory):
    """The sparse study swept on its split, then predicted, evaluated and reported."""
    return run_stages(sparse, tmp_path_factory.mktemp("sparse-split") / "study", SPARSE,
                      ["--no-figures"], report=True)


@pytest.mark.slow  # trains sweep units
class DescribeASparseStudyOnItsSplit:
    def it_completes_every_stage_with_exit_0(self, swept):
        _, out = swept
        for name, result in out.items():
            assert result.exit_code == 0, (name, result.output)

    def it_leaves_out_the_stain_it_cannot_validate_and_says_why(self, swept):
        study, out = swept
        sweep = study.parent / "lncr-output" / "sweep"
        selection = json.loads((sweep / "selection.json").read_text())
        assert selection["status"] == "partial"
        assert set(selection["left_out"]) == {"PAS 10x", "PAS 20x"}
        why = selection["left_out"]["PAS 10x"]["reason"]
        assert why == "the 1 validation patient(s) with tiles are all non-CR"
        assert "WARNING PAS 10x was left out of the selection: " + why in out["sweep"].output
        units = read_table(sweep / "units.csv")
        assert set(units[units.stain == "PAS"].status) == {"skipped"}
        assert (units[units.stain == "HE"].status == "done").all()
        # PAS keeps the grid's only architecture (nothing to choose), with the reason
        assert "the grid's only architecture" in selection["decided_by"]["architecture"]["PAS"]

    def it_trains_a_final_model_wherever_both_outcomes_can_train(self, swept):
        study, _ = swept
        models = read_table(study.parent / "lncr-output" / "final" / "models.csv")
        assert len(models) == 4 and (models.status == "done").all()

    def it_builds_the_ensembles_from_what_exists_and_names_the_rest(self, swept):
        study, _ = swept
        predictions = study.parent / "lncr-output" / "predictions"
        multi = read_table(predictions / "multi_stain.csv").set_index("patient_id")
        assert multi.loc["EXT-001", "stains_used"] == "PAS"  # no H&E slide
        assert multi.loc["DEV-002", "stains_used"] == "HE"  # no PAS slide
        assert multi.probability.notna().all()
        record = json.loads((predictions / "predictions.json").read_text())
        assert record["missing_models"] == []

    def it_reports_the_left_out_magnifications(self, swept):
        study, _ = swept
        page = (study.parent / "lncr-output" / "report" / "report.html").read_text()
        selection = page[page.index('id="sweep"'):page.index('id="final"')]
        assert "Left out of the selection" in selection and "PAS 10x" in selection
        assert "all non-CR" in selection

    def it_exits_non_zero_naming_a_stain_without_any_model(self, swept):
        study, _ = swept
        result = CliRunner().invoke(app, ["sweep", str(study), "--workers", "2", "--device",
                                          "cpu"] + args(SPARSE + [
                                              "sweep.stains=[HE, PAS, MASSON]"]))
        assert result.exit_code == 1, result.output
        assert "ERROR MASSON has no usable model" in result.output
        assert "too few training patients with tiles: 0 CR" in result.output
        assert "ERROR HE" not in result.output and "ERROR PAS" not in result.output
        models = read_table(study.parent / "lncr-output" / "final" / "models.csv")
        masson = models[models.stain == "MASSON"]
        assert len(masson) == 2 and set(masson.status) == {"skipped"}
        sets = args(SPARSE + ["sweep.stains=[HE, PAS, MASSON]"])
        predicted = CliRunner().invoke(app, ["predict", str(study), "--device", "cpu"] + sets)
        assert predicted.exit_code == 0, predicted.output
        assert "WARNING no final model for MASSON 10x (too few training patients" in " ".join(
            predicted.output.split())
        record = json.loads((study.parent / "lncr-output" / "predictions" /
                             "predictions.json").read_text())
        assert [m["stain"] for m in record["missing_models"]] == ["MASSON", "MASSON"]
        for command in (["evaluate", str(study), "--no-figures"], ["report", str(study)]):
            assert CliRunner().invoke(app, command + sets).exit_code == 0
        page = (study.parent / "lncr-output" / "report" / "report.html").read_text()
        assert "Final models that do not exist" in page and "MASSON 10x" in page


class DescribeFolds:
    PATIENTS = pd.DataFrame({
        "patient_id": [f"P{i:02d}" for i in range(23)] + ["E1", "E2"],
        "cohort": ["development"] * 23 + ["external"] * 2,
        "label": [1] * 9 + [0] * 14 + [1, 0],
        "site": ["A"] * 8 + ["B"] * 6 + ["C"] * 5 + ["D"] * 4 + ["X", "X"]})

    def it_partitions_the_development_patients_stratified_by_outcome(self):
        folds = stratified_folds(self.PATIENTS, 5, seed=3)
        assert set(folds.patient_id) == {f"P{i:02d}" for i in range(23)}  # no E1, E2
        assert folds.patient_id.is_unique and set(folds.fold) == set(range(5))
        sizes = folds.fold.value_counts()
        assert sizes.max() - sizes.min() <= 1
        per_label = folds.groupby(["label", "fold"]).size().unstack(fill_value=0)
        assert (per_label.max(axis=1) - per_label.min(axis=1) <= 1).all()
        assert not stratified_folds(self.PATIENTS, 5, seed=4).fold.equals(folds.fold)

    def it_keeps_each_site_in_one_fold_when_asked(self):
        folds = stratified_folds(self.PATIENTS, 3, seed=0, by_site=True)
        assert (folds.groupby("site").fold.nunique() == 1).all()
        assert sorted(folds.fold.value_counts()) == [6, 8, 9]
        with pytest.raises(ValueError, match="4 site.* cannot fill sweep.folds=5"):
            stratified_folds(self.PATIENTS, 5, seed=0, by_site=True)

    def it_trains_each_configuration_once_per_fold(self):
        cfg = StudyConfig(patients="p.csv", slides="s.csv",
                          sweep={"validation": "kfold", "folds": 4, "repeats": 2,
                                 "architectures": ["a"], "bag_sizes": [8],
                                 "stains": ["HE"], "magnifications": ["10x"]})
        units = build_grid(cfg)
        assert [(u.repeat, u.fold) for u in units] == [(r, f) for r in (0, 1)
                                                       for f in range(4)]
        assert {u.seed for u in units if u.repeat == 1} == {1}

    def it_refuses_resplit_with_kfold(self):
        with pytest.raises(ValueError, match="drop sweep.resplit"):
            StudyConfig(patients="p.csv", slides="s.csv",
                        sweep={"validation": "kfold", "resplit": True})


@pytest.fixture(scope="module")
def kfold(sparse, tmp_path_factory):
    """The sparse study swept with 3-fold cross-validation at 10x, then predicted and
    evaluated (with the control)."""
    study, out = run_stages(sparse, tmp_path_factory.mktemp("sparse-kfold") / "study", KFOLD,
                            ["--no-figures", "--baseline"], report=False)
    for name, result in out.items():
        assert result.exit_code == 0, (name, result.output)
    return study, out


@pytest.mark.slow  # trains sweep units
class DescribeKFoldSelection:
    def it_validates_every_development_patient_with_tiles_once_and_no_external(self, kfold):
        study, _ = kfold
        out = study.parent / "lncr-output"
        units = read_table(out / "sweep" / "units.csv")
        assert len(units) == 2 * 2 * 3 and set(units.split) == {"fold0", "fold1", "fold2"}
        for (stain, bag), part in units.groupby(["stain", "bag_size"]):
            held_out = []
            for folder in part.folder:
                sides = read_table(out / folder / "split.csv")
                assert not sides.patient_id.str.startswith("EXT").any()
                held_out += list(sides[sides.split == "val"].patient_id)
            with_tiles = set(sides.patient_id)
            assert sorted(held_out) == sorted(with_tiles)  # each exactly once
        folds = read_table(out / "sweep" / "splits" / "folds0.csv")
        assert set(folds.patient_id) == set(SPLIT)

    def it_scores_a_configuration_by_the_auc_of_its_pooled_out_of_fold_predictions(self, kfold):
        study, _ = kfold
        sweep = study.parent / "lncr-output" / "sweep"
        criterion = read_table(sweep / "criterion.csv")
        oof = read_table(sweep / "oof_predictions.csv")
        assert (criterion.status == "done").all() and len(criterion) == 4
        for row in criterion.itertuples():
            mine = oof[(oof.stain == row.stain) & (oof.bag_size == row.bag_size)]
            patients = mine.groupby("patient_id").agg(label=("label", "first"),
                                                      p=("probability", "mean"))
            assert row.patients == len(patients)
            assert row.val_auc == pytest.approx(roc_auc_score(patients.label, patients.p),
                                                abs=1e-12)

    def it_scores_the_stain_the_split_could_not(self, kfold):
        study, _ = kfold
        selection = json.loads((study.parent / "lncr-output" / "sweep" /
                                "selection.json").read_text())
        assert selection["status"] == "complete" and selection["left_out"] == {}
        assert selection["validation"] == {"method": "kfold", "repeats": 1, "folds": 3,
                                           "by_site": False}
        assert "PAS" in selection["evidence"]["architecture"]
        stability = {(r["stain"], r["bag_size"]): r for r in selection["stability"]}
        assert set(stability) == {("HE", 2), ("HE", 4), ("PAS", 2), ("PAS", 4)}
        assert sum(r["wins"] for r in stability.values()) == 2  # one winner per stain

    def it_trains_final_models_on_every_development_patient_and_predicts_them_out_of_fold(
            self, kfold):
        study, _ = kfold
        out = study.parent / "lncr-output"
        models = read_table(out / "final" / "models.csv")
        folds = read_table(out / "final" / "folds.csv")
        assert (models.status == "done").all() and len(folds) == 3 * len(models)
        for folder in models.folder:
            sides = read_table(out / folder / "split.csv")
            assert set(sides.split) == {"train"}  # every development patient with tiles
        single = read_table(out / "predictions" / "single_models.csv")
        dev = single[single.cohort == "development"]
        assert set(dev.split) == {"val"}
        for row in dev.itertuples():  # predicted by the fold model that held it out
            sides = read_table(out / row.run / "split.csv").set_index("patient_id")
            assert sides.loc[row.patient_id, "split"] == "val"
        metrics = read_table(out / "evaluation" / "metrics.csv")
        val = metrics[(metrics.cohort == "validation") & (metrics.model == "multi-stain")]
        assert int(val.patients.iloc[0]) == 6  # every development patient, out of fold
        assert (out / "evaluation" / "baseline" / "metrics.csv").exists()

    def it_resumes_a_killed_kfold_sweep_to_the_same_selection(self, kfold, sparse, tmp_path):
        import shutil

        done_study, _ = kfold
        study = tmp_path / "study"
        shutil.copytree(sparse.parent, study)
        command = [sys.executable, "-m", "lncr", "sweep", str(study / "study.yaml"),
                   "--workers", "1", "--no-final", "--device", "cpu"] + args(KFOLD)
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        seen = []
        for line in proc.stdout:  # the first finished fold, then kill everything
            seen.append(line)
            if re.match(r"\d\d:\d\d:\d\d \[\d+/\d+\] done ", line.strip()):
                break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        runs = study / "lncr-output" / "sweep" / "runs"
        finished = sorted(runs.rglob("done.json"))
        assert 1 <= len(finished) < 12, "".join(seen)
        stamps = {p: p.stat().st_mtime_ns for p in finished}
        result = CliRunner().invoke(app, command[3:])
        assert result.exit_code == 0, result.output
        assert {p: p.stat().st_mtime_ns for p in finished} == stamps  # not retrained
        first = json.loads((done_study.parent / "lncr-output" / "sweep" /
                            "selection.json").read_text())
        again = json.loads((study / "lncr-output" / "sweep" / "selection.json").read_text())
        for key in ("architectures", "bag_size", "evidence", "stability", "left_out"):
            assert again[key] == first[key], key

    def it_can_average_the_fold_models_as_the_final_model(self, kfold, tmp_path):
        import shutil

        from lncr.study.validate import Study
        from lncr.training.predict import predict_run

        done_study, _ = kfold
        shutil.copytree(done_study.parent, tmp_path / "study")
        study = tmp_path / "study" / "study.yaml"
        sets = KFOLD + ["sweep.final_ensemble=folds"]
        for command in (["sweep", str(study), "--workers", "2", "--device", "cpu"],
                        ["predict", str(study), "--device", "cpu"]):
            result = CliRunner().invoke(app, command + args(sets))
            assert result.exit_code == 0, result.output
        out = study.parent / "lncr-output"
        models = read_table(out / "final" / "models.csv")
        assert (models.status == "done").all() and (models.folder == "").all()
        assert set(models.ensemble) == {"mean of 3 fold models"}
        single = read_table(out / "predictions" / "single_models.csv")
        folds = read_table(out / "final" / "folds.csv")
        loaded = Study.load(study, sets)
        for m in models.itertuples():
            members = [predict_run(out / f, "external", study=loaded)
                       for f in folds[(folds.stain == m.stain)
                                      & (folds.magnification == m.magnification)].folder]
            mean = sum(t.probability for t in members) / len(members)
            mine = single[(single.stain == m.stain) & (single.magnification == m.magnification)
                          & (single.cohort == "external")].sort_values("patient_id")
            assert list(mine.patient_id) == list(members[0].patient_id)
            assert mine.probability.to_numpy() == pytest.approx(mean.to_numpy(), abs=1e-12)
        refused = CliRunner().invoke(app, ["export", str(study), str(tmp_path / "x.lncr")]
                                     + args(sets))
        assert refused.exit_code == 2 and "sweep.final_ensemble=refit" in refused.output


class DescribeDamagedValidationPredictions:
    def it_names_the_file_and_the_fix(self, tmp_path):
        from lncr.errors import WorkFailed
        from lncr.sweep.criterion import val_predictions

        run = tmp_path / "HE" / "10x" / "resnet18-b2-s0-fold1"
        run.mkdir(parents=True)
        (run / "val_predictions.csv").write_text('epoch,patient_id,label,probability\n0,"P1,1')
        with pytest.raises(WorkFailed, match="val_predictions.csv is damaged .*delete the run "
                                             "folder .*resnet18-b2-s0-fold1"):
            val_predictions(run)
        (run / "val_predictions.csv").write_text("")
        with pytest.raises(WorkFailed, match="is damaged"):
            val_predictions(run)
