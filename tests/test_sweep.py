"""Describe `lncr sweep`: the grid with repeats and re-drawn splits, failures recorded without
stopping the sweep, the selection rule, the final models, the same results on the local pool
and on Ray, resuming after the sweep is killed, and successive halving."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import FAST, validated_copy
from lncr.cli import app
from lncr.study.config import StudyConfig
from lncr.study.config_file import load_config
from lncr.study.validate import Study
from lncr.sweep.grid import build_grid, repeat_split
from lncr.sweep.run import halving_rungs, promote, run_sweep
from lncr.sweep.selection import select

#: Tiny units (32-px inputs, 2 epochs); every AlexNet unit fails (its weights file is missing),
#: as a configuration broken at run time would.
TINY = FAST + ["tiling.encoding=jpeg", "training.pretrained=false", "training.epochs=2",
               "training.warmup_epochs=1", "training.input_size=32", "training.crop_size=96",
               "training.embedding_dim=16", "training.transformer_heads=2",
               "training.feedforward_dim=16", "training.eval_tiles=8",
               "training.loader_workers=0", "sweep.architectures=[resnet18, alexnet]",
               "sweep.weights={alexnet: missing-alexnet.pt}",
               "sweep.bag_sizes=[2, 4]", "sweep.repeats=2", "sweep.stains=[HE]",
               "sweep.magnifications=[10x]"]
NUMBERS = ["epochs_trained", "val_auc", "val_loss", "train_auc", "train_loss"]


@pytest.fixture(scope="module")
def local_sweep(tiled, tmp_path_factory):
    study = validated_copy(tiled, tmp_path_factory.mktemp("sweep-local") / "study")
    return study, run_sweep(Study.load(study, TINY), executor="local", workers=2, device="cpu")


class DescribeGrid:
    def it_crosses_every_axis_with_one_seed_per_repeat(self):
        cfg = StudyConfig(patients="p.csv", slides="s.csv", stains=("HE", "PAS"),
                          sweep={"architectures": ["a", "b"], "bag_sizes": [8, 16],
                                 "repeats": 3, "magnifications": ["10x", "40x"]},
                          training={"seed": 5})
        units = build_grid(cfg)
        assert len(units) == 2 * 2 * 2 * 2 * 3
        assert {u.seed for u in units} == {5, 6, 7} and {u.split for u in units} == {""}
        assert {u.magnification for u in units} == {"10x", "40x"}

    def it_draws_a_stratified_patient_split_per_repeat_when_asked(self):
        cfg = StudyConfig(patients="p.csv", slides="s.csv", sweep={"resplit": True,
                                                                   "repeats": 3})
        assert {u.split for u in build_grid(cfg) if u.repeat == 2} == {"split2"}
        assert {u.split for u in build_grid(cfg) if u.repeat == 0} == {""}
        patients = pd.DataFrame({"patient_id": [f"P{i:02d}" for i in range(20)] + ["E1"],
                                 "cohort": ["development"] * 20 + ["external"],
                                 "label": [i % 2 for i in range(20)] + [1]})
        one, two = repeat_split(patients, cfg, 1), repeat_split(patients, cfg, 2)
        assert "E1" not in set(one.patient_id)
        assert set(one[one.split == "val"].patient_id) != set(two[two.split == "val"].patient_id)
        for split in (one, two):
            val = split[split.split == "val"]
            assert len(val) == 4 and val.label.sum() == 2  # 20 % of each label

    def it_refuses_a_magnification_the_study_does_not_have(self):
        with pytest.raises(ValueError, match="sweep.magnifications names"):
            StudyConfig(patients="p.csv", slides="s.csv", sweep={"magnifications": ["15x"]})


def units(rows):
    cols = ["stain", "architecture", "bag_size", "magnification", "repeat", "val_auc",
            "val_loss", "status"]
    return pd.DataFrame(rows, columns=cols)


@pytest.mark.slow  # trains sweep units
class DescribeRepeatSplits:
    def it_trains_a_resplit_repeat_on_its_own_recorded_split(self, tiled, tmp_path):
        from lncr.study.validate import load_study
        from lncr.sweep.grid import Unit
        from lncr.sweep.unit import UnitTask, run_unit

        study = validated_copy(tiled, tmp_path / "study")
        sets = TINY + ["sweep.resplit=true"]
        unit = Unit.of("HE", "10x", "resnet18", 2, 1, 1, "split1")
        row = run_unit(UnitTask(unit, Study.load(study, sets), str(tmp_path / "runs"), 1, 1,
                                device="cpu"))
        assert row["status"] == "done", row["error"]
        used = pd.read_csv(tmp_path / "runs" / "HE" / "10x" / "resnet18-b2-s1-split1" /
                           "split.csv", dtype={"patient_id": str})
        loaded = load_study(study, sets, check_files=False)
        expected = repeat_split(loaded.patients, loaded.config, 1).set_index("patient_id")
        assert (used.set_index("patient_id").split == expected.split.loc[used.patient_id]).all()
        study_split = pd.read_csv(study.parent / "lncr-output" / "study" / "split.csv",
                                  dtype={"patient_id": str}).set_index("patient_id")
        assert (study_split.split.loc[used.patient_id].values != used.split.values).any()


class DescribeSelectionRule:
    settings = StudyConfig(patients="p", slides="s").training

    def it_picks_the_best_mean_architecture_per_stain_and_one_bag_size(self):
        t = units([("HE", "resnet18", 8, "10x", 0, 0.9, 0.4, "done"),
                   ("HE", "resnet18", 16, "10x", 0, 0.7, 0.5, "done"),
                   ("HE", "alexnet", 8, "10x", 0, 0.75, 0.5, "done"),
                   ("HE", "alexnet", 16, "10x", 0, 0.75, 0.5, "done"),
                   ("PAS", "alexnet", 8, "10x", 0, 0.6, 0.5, "done"),
                   ("PAS", "alexnet", 16, "10x", 0, 0.8, 0.5, "done"),
                   ("PAS", "resnet18", 8, "10x", 0, 1.0, 0.1, "failed"),
                   ("PAS", "resnet18", 16, "10x", 0, 0.2, 0.9, "done")])
        s = select(t, self.settings)
        assert s["architectures"] == {"HE": "resnet18", "PAS": "alexnet"}  # failed units ignored
        # bag 8: mean(0.9, 0.6) = 0.75; bag 16: mean(0.7, 0.8) = 0.75 -> tie -> smaller bag
        assert s["bag_size"] == 8
        assert [b["mean_val_auc"] for b in s["evidence"]["bag_size"]] == [0.75, 0.75]
        assert s["decided_by"] == {
            "architecture": {"HE": "mean validation AUC", "PAS": "mean validation AUC"},
            "bag_size": "mean validation AUC tied at 0.750 with bag 16: the smaller bag"}

    def it_breaks_ties_by_loss_then_by_model_size(self):
        t = units([("HE", "resnet50", 8, "10x", 0, 0.8, 0.5, "done"),
                   ("HE", "resnet18", 8, "10x", 0, 0.8, 0.5, "done"),
                   ("HE", "vgg11", 8, "10x", 0, 0.8, 0.6, "done")])
        s = select(t, self.settings)
        assert s["architectures"]["HE"] == "resnet18"  # same AUC and loss: fewer parameters
        ranked = s["evidence"]["architecture"]["HE"]
        assert [r["architecture"] for r in ranked] == ["resnet18", "resnet50", "vgg11"]
        assert s["decided_by"]["architecture"]["HE"] == (
            "mean validation AUC tied at 0.800 and loss with resnet50: the smaller model")
        by_loss = select(t[t.architecture != "resnet18"], self.settings)
        assert by_loss["decided_by"]["architecture"]["HE"] == (
            "mean validation AUC tied at 0.800 with vgg11: the lower mean validation loss")
        undefined = t.assign(val_auc=np.nan)
        assert select(undefined, self.settings)["decided_by"]["architecture"]["HE"].startswith(
            "no validation AUC (one outcome in the validation slides) and loss")

    def it_explains_when_nothing_finished(self):
        with pytest.raises(ValueError, match="no sweep unit finished"):
            select(units([("HE", "x", 8, "10x", 0, np.nan, np.nan, "failed")]), self.settings)


class DescribeCompleteFailures:
    def it_names_architectures_and_groups_all_of_whose_units_failed(self):
        from lncr.sweep.selection import complete_failures, failure_lines

        table = units([("HE", "a", 8, "10x", 0, 0.7, 0.6, "done"),
                       ("HE", "a", 8, "20x", 0, 0.7, 0.6, "done"),
                       ("HE", "b", 8, "10x", 0, np.nan, np.nan, "failed"),
                       ("HE", "b", 8, "20x", 0, np.nan, np.nan, "failed"),
                       ("PAS", "a", 8, "20x", 0, np.nan, np.nan, "failed"),
                       ("PAS", "b", 8, "20x", 0, np.nan, np.nan, "failed"),
                       ("PAS", "a", 8, "10x", 0, 0.6, 0.6, "done")])
        failures = complete_failures(table)
        assert failures["architectures"] == ["b"]
        assert failures["stain_magnifications"] == [["PAS", "20x"]]
        lines = failure_lines(failures)
        assert lines[0].startswith("every unit of architecture b failed")
        assert "every unit of PAS 20x failed" in lines[1] and len(lines) == 2

    def it_finds_nothing_when_every_group_has_a_finished_unit(self):
        from lncr.sweep.selection import complete_failures

        table = units([("HE", "a", 8, "10x", 0, 0.7, 0.6, "done"),
                       ("HE", "a", 8, "10x", 1, np.nan, np.nan, "failed")])
        assert all(v == [] for v in complete_failures(table).values())


@pytest.mark.slow  # trains sweep units
class DescribeLocalSweep:
    def it_records_every_unit_and_keeps_going_after_failures(self, local_sweep):
        study, report = local_sweep
        table = pd.read_csv(report.folder / "units.csv")
        assert len(table) == 8
        ok, bad = table[table.architecture == "resnet18"], table[table.architecture == "alexnet"]
        assert (ok.status == "done").all() and (ok.epochs_trained == 2).all()
        assert (bad.status == "failed").all() and bad.error.str.contains("missing-alexnet").all()
        assert len(list((report.folder / "failures").glob("*.txt"))) == 4
        assert sorted(ok.seed.unique()) == [0, 1]

    def it_summarises_each_configuration_with_every_repeat(self, local_sweep):
        _, report = local_sweep
        summary = pd.read_csv(report.folder / "summary.csv")
        row = summary[(summary.architecture == "resnet18") & (summary.bag_size == 2)].iloc[0]
        assert row.done == 2 and row.mean_val_auc == pytest.approx(
            np.mean([row.val_auc_r0, row.val_auc_r1]))
        assert {"sd_val_auc", "val_loss_r1", "failed"} <= set(summary.columns)

    def it_writes_the_selection_with_its_rule_and_evidence(self, local_sweep):
        _, report = local_sweep
        sel = json.loads((report.folder / "selection.json").read_text())
        assert sel["architectures"] == {"HE": "resnet18"} and sel["bag_size"] in (2, 4)
        assert "last epoch" in sel["rule"] and sel["units"]["failed"] == 4
        assert sel["evidence"]["architecture"]["HE"][0]["units"] == 4

    def it_says_loudly_that_a_whole_architecture_failed(self, local_sweep):
        _, report = local_sweep
        sel = json.loads((report.folder / "selection.json").read_text())
        assert sel["status"] == "incomplete"
        assert sel["failures"]["architectures"] == ["alexnet"]
        assert sel["failures"]["stain_magnifications"] == []
        assert report.failures == ["every unit of architecture alexnet failed: the selection "
                                   "ranked the others only"]

    def it_trains_a_final_model_per_magnification_reusing_the_sweep_run(self, local_sweep):
        study, report = local_sweep
        models = pd.read_csv(study.parent / "lncr-output" / "final" / "models.csv")
        assert list(models.magnification) == ["10x", "20x"] and (models.status == "done").all()
        bag = report.selection["bag_size"]
        # 10x was swept (repeat 0 = seed 0, the study's split): reused, not retrained
        assert models.folder[0].endswith(f"sweep/runs/HE/10x/resnet18-b{bag}-s0")
        assert (study.parent / "lncr-output" / "final" / "final.json").exists()

    def it_reads_a_finished_sweep_again_without_training(self, local_sweep, monkeypatch):
        study, report = local_sweep
        import lncr.sweep.executors as executors

        started = []
        monkeypatch.setattr(executors.LocalExecutor, "map",
                            lambda self, tasks: started.append(tasks) or iter(()))
        again = run_sweep(Study.load(study, TINY + ["sweep.architectures=[resnet18]"]), executor="local",
                          workers=2, device="cpu")
        assert started == [] and (again.units.status == "done").all()
        assert again.selection["bag_size"] == report.selection["bag_size"]


@pytest.mark.slow  # trains sweep units
class DescribeFinalPredictions:
    def it_reuses_each_models_predictions_until_its_inputs_change(self, local_sweep,
                                                                   monkeypatch):
        from lncr.evaluation import final_predictions
        from lncr.training import predict

        study, _ = local_sweep
        first = final_predictions.predict_final(Study.load(study, TINY), device="cpu")

        def no_prediction(*args, **kwargs):
            raise AssertionError("predicted again")

        monkeypatch.setattr(predict, "evaluate", no_prediction)  # the model's forward passes
        again = final_predictions.predict_final(Study.load(study, TINY), device="cpu")
        pd.testing.assert_frame_equal(first.multi, again.multi)
        # Changed inputs (see the fingerprint test below): predict again.
        monkeypatch.setattr(predict, "inputs_fingerprint", lambda entries: "other slides")
        with pytest.raises(AssertionError, match="predicted again"):
            final_predictions.predict_final(Study.load(study, TINY), device="cpu")

    def it_fingerprints_the_slides_labels_sides_and_tile_stores(self, tmp_path):
        import time

        from lncr.data.bags import SlideEntry
        from lncr.training.predict import inputs_fingerprint

        store = tmp_path / "P1.tiles.zip"
        store.write_bytes(b"tiles")
        entry = SlideEntry("P1", "HE", "20x", str(store), 1, "val", 12)
        first = inputs_fingerprint([entry])
        assert inputs_fingerprint([entry]) == first
        assert inputs_fingerprint([SlideEntry("P1", "HE", "20x", str(store), 0, "val", 12)]) \
            != first  # another label
        later = time.time() + 60
        os.utime(store, (later, later))  # the slide was tiled again
        assert inputs_fingerprint([entry]) != first


@pytest.mark.slow  # trains sweep units
class DescribeACopiedStudy:
    def it_predicts_evaluates_explains_and_reports_in_the_copy_alone(self, local_sweep,
                                                                     tmp_path):
        import shutil

        from lncr.evaluation.evaluate import evaluate_study
        from lncr.evaluation.final_predictions import final_models, predict_final
        from lncr.explain.heatmap_run import explain_heatmaps
        from lncr.report.build import build_report

        study, _ = local_sweep
        original = study.parent
        copy = tmp_path / "moved"
        shutil.copytree(original, copy)
        before = {p: p.stat().st_mtime_ns for p in original.rglob("*") if p.is_file()}
        moved = copy / "study.yaml"
        models = final_models(copy / "lncr-output")
        assert all(str(f).startswith(str(copy)) for f in models.folder)
        result = predict_final(Study.load(moved, TINY), device="cpu")
        assert str(result.folder).startswith(str(copy))
        assert list(copy.glob("lncr-output/sweep/runs/HE/*/*/predictions/*.csv"))
        assert evaluate_study(Study.load(moved, TINY)).folder == copy / "lncr-output" / "evaluation"
        patient = result.multi[result.multi.cohort == "external"].patient_id.iloc[0]
        explain_heatmaps(Study.load(moved, TINY), "external", [patient], device="cpu")
        assert build_report(Study.load(moved, TINY)).is_relative_to(copy)
        after = {p: p.stat().st_mtime_ns for p in original.rglob("*") if p.is_file()}
        assert after == before  # the original was neither read into nor written to

    def it_stores_paths_relative_to_the_output_folder(self, local_sweep):
        study, _ = local_sweep
        out = study.parent / "lncr-output"
        index = pd.read_csv(out / "tiles" / "index.csv")
        assert not index.store.str.startswith("/").any()
        assert index.slide.str.startswith("../").all()  # the phantom's slides sit beside it
        assert not pd.read_csv(out / "final" / "models.csv").folder.str.startswith("/").any()
        config = json.loads(next((out / "sweep" / "runs").rglob("config.json")).read_text())
        assert not config["source"]["study"].startswith("/")


@pytest.mark.slow  # trains sweep units
class DescribeRayExecutor:
    def it_gives_the_same_results_as_the_local_pool(self, local_sweep, tiled, tmp_path):
        _, local = local_sweep
        study = validated_copy(tiled, tmp_path / "study")
        ray = run_sweep(Study.load(study, TINY), executor="ray", workers=2, device="cpu")
        a = local.units.sort_values(["bag_size", "repeat", "architecture"]).reset_index()
        b = ray.units.sort_values(["bag_size", "repeat", "architecture"]).reset_index()
        assert list(a.status) == list(b.status)
        pd.testing.assert_frame_equal(a[NUMBERS], b[NUMBERS])
        assert ray.selection["architectures"] == local.selection["architectures"]
        assert ray.selection["bag_size"] == local.selection["bag_size"]
        assert json.loads((study.parent / "lncr-output" / "sweep" / "sweep.json")
                          .read_text())["executor"] == "ray"


    def it_runs_a_unit_again_when_its_worker_is_killed(self, local_sweep, tiled, tmp_path):
        """A real Ray instance; the first worker seen running a unit is killed (SIGKILL, as
        a pre-emption or the OOM killer would). With ``sweep.retries`` Ray runs the unit
        again and the sweep ends with the uninterrupted results."""
        _, local = local_sweep
        study = validated_copy(tiled, tmp_path / "study")
        killed: list[int] = []
        stop = threading.Event()

        def kill_first_unit() -> None:
            while not stop.is_set() and not killed:
                pid = running_ray_unit()
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                stop.wait(0.02)  # polling the process table, not waiting for time to pass

        killer = threading.Thread(target=kill_first_unit)
        killer.start()
        try:
            ray = run_sweep(Study.load(study, TINY + ["sweep.architectures=[resnet18]",
                                                      "sweep.retries=1"]),
                            executor="ray", workers=2, device="cpu")
        finally:
            stop.set()
            killer.join()
        assert killed, "no Ray worker was seen running a unit"
        assert (ray.units.status == "done").all()
        mine = local.units[local.units.architecture == "resnet18"]
        a = mine.sort_values(["bag_size", "repeat"]).reset_index()
        b = ray.units.sort_values(["bag_size", "repeat"]).reset_index()
        pd.testing.assert_frame_equal(a[NUMBERS], b[NUMBERS])


def running_ray_unit() -> int | None:
    """The process id of a Ray worker running a sweep unit (Ray titles it ``ray::run_task``
    while the task runs), from the Linux process table."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read(13) == b"ray::run_task":
                        return int(entry)
            except OSError:
                continue
    return None


@pytest.mark.slow  # trains sweep units
class DescribeResumeAfterKill:
    def it_keeps_finished_units_and_ends_with_the_uninterrupted_results(self, local_sweep,
                                                                       tiled, tmp_path):
        _, local = local_sweep
        study = validated_copy(tiled, tmp_path / "study")
        args = [sys.executable, "-m", "lncr", "sweep", str(study), "--workers", "1",
                "--no-final", "--device", "cpu"] + [a for s in TINY for a in ("--set", s)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True,
                                env={**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
        seen = []
        for line in proc.stdout:  # wait for the first finished unit, then kill everything
            seen.append(line)
            if re.match(r"\d\d:\d\d:\d\d \[\d+/\d+\] done .*validation AUC .*ETA \d+:\d\d",
                        line.strip()):
                break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        runs = study.parent / "lncr-output" / "sweep" / "runs" / "HE" / "10x"
        finished = sorted(runs.glob("*/done.json"))
        assert 1 <= len(finished) < 4, "".join(seen)
        stamps = {p: p.stat().st_mtime_ns for p in finished}
        result = CliRunner().invoke(app, ["sweep", str(study), "--workers", "1", "--no-final",
                                          "--device", "cpu"] + args[10:])
        # every AlexNet unit failed: the sweep finishes the rest and exits 1, saying so
        assert result.exit_code == 1, result.output
        assert "every unit of architecture alexnet failed" in result.output
        assert {p: p.stat().st_mtime_ns for p in finished} == stamps  # not retrained
        after = pd.read_csv(study.parent / "lncr-output" / "sweep" / "units.csv")
        a = local.units.sort_values(["bag_size", "repeat", "architecture"]).reset_index()
        b = after.sort_values(["bag_size", "repeat", "architecture"]).reset_index()
        pd.testing.assert_frame_equal(a[NUMBERS], b[NUMBERS])
        assert not list(runs.rglob(".*.partial"))


class DescribeSuccessiveHalving:
    def it_places_rungs_geometrically_up_to_the_full_budget(self):
        assert halving_rungs(100, 10, 3) == [10, 30, 90, 100]
        assert halving_rungs(3, 1, 2) == [1, 2, 3]
        assert halving_rungs(5, 10, 3) == [5]

    def it_keeps_the_best_third_of_configurations_per_stain(self, tmp_path):
        from lncr.sweep.grid import Unit

        results, alive = {}, []
        for i, auc in enumerate([0.9, 0.5, 0.7, 0.6, 0.8, 0.55]):
            u = Unit.of("HE", "10x", "resnet18", i + 1, 0, 0)
            folder = tmp_path / str(i)
            folder.mkdir()
            pd.DataFrame({"epoch": [0, 1], "val_auc": [0.5, auc], "val_loss": [0.7, 0.6]}
                         ).to_csv(folder / "metrics.csv", index=False)
            results[u.name] = {"status": "paused", "folder": str(folder)}
            alive.append(u)
        kept, stopped = promote(alive, results, 2, 3, lambda arch: 1)
        assert sorted(u.bag_size for u in kept) == [1, 5] and len(stopped) == 4

    @pytest.mark.slow  # trains sweep units
    def it_reports_the_compute_it_saved(self, tiled, tmp_path):
        study = validated_copy(tiled, tmp_path / "study")
        sets = [s for s in TINY if not s.startswith("sweep.")] + [
            "training.epochs=3", "sweep.architectures=[resnet18]", "sweep.bag_sizes=[2, 3, 4]",
            "sweep.repeats=1", "sweep.stains=[HE]", "sweep.magnifications=[10x]",
            "sweep.early_stopping=halving", "sweep.min_epochs=1", "sweep.halving_rate=2"]
        report = run_sweep(Study.load(study, sets), executor="local", workers=2, device="cpu",
                           final=False)
        t = report.units
        assert sorted(t.status) == ["done", "stopped", "stopped"]
        assert sorted(t.epochs_trained) == [1, 2, 3]
        es = report.selection["early_stopping"]
        assert es["rungs"] == [1, 2, 3] and es["epochs_trained"] == 6
        assert es["epochs_full_grid"] == 9 and es["compute_saved"] == pytest.approx(1 / 3)
        winner = t[t.status == "done"].bag_size.iloc[0]
        assert report.selection["bag_size"] == winner


def test_config_loads_sweep_overrides(tiled):
    cfg = load_config(tiled / "study.yaml", ["sweep.executor=ray", "sweep.workers=3"])
    assert cfg.sweep.executor == "ray" and cfg.sweep.workers == 3


class DescribeMissingValidationAUC:
    def it_says_why_a_unit_has_no_validation_auc(self, tmp_path):
        from lncr.cli.common import fmt
        from lncr.sweep.unit import unit_metrics

        pd.DataFrame({"epoch": [0], "val_auc": [np.nan], "val_loss": [0.7], "train_auc": [0.6],
                      "train_loss": [0.6]}).to_csv(tmp_path / "metrics.csv", index=False)
        pd.DataFrame({"patient_id": ["A", "B", "C"], "split": ["train", "val", "val"],
                      "label": [0, 1, 1]}).to_csv(tmp_path / "split.csv", index=False)
        row = unit_metrics(tmp_path)
        assert row["val_auc_note"] == ("the 2 validation slides with tiles at this "
                                       "magnification are all CR")
        assert fmt(row["val_auc"], 2, row["val_auc_note"]).startswith("— (the 2 validation")


class DescribeRaySettings:
    def it_passes_retries_and_the_cpu_device_to_ray_tasks(self, monkeypatch):
        """The wiring, with a stand-in for Ray (the real cluster runs in DescribeRayExecutor)."""
        import types

        from lncr.sweep.executors import RayExecutor, ray_task_device

        asked = {}
        fake = types.SimpleNamespace(
            is_initialized=lambda: True, cluster_resources=lambda: {"GPU": 1},
            remote=lambda **options: asked.update(options) or (lambda f: f))
        monkeypatch.setitem(sys.modules, "ray", fake)
        executor = RayExecutor(workers=1, unit_gpus=0.5, device="cpu", retries=3)
        assert asked == {"num_cpus": 1, "num_gpus": 0, "max_retries": 3}  # no GPU asked for
        assert executor.device == "cpu"
        assert RayExecutor(workers=1, unit_gpus=0.5, device="cuda:1").device == "auto"
        assert asked == {"num_cpus": 1, "num_gpus": 0.5, "max_retries": 2}
        assert ray_task_device("cuda:3") == ray_task_device("auto") == "auto"
