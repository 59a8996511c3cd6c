"""Describe the lncr command line: help, version, validate's exit codes and messages, synth,
demo."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from lncr import __version__
from lncr.cli import app

runner = CliRunner()


class DescribeHelp:
    def it_lists_every_command_with_one_line(self):
        result = runner.invoke(app, ["--help"])
        assert result.exit_code == 0
        for command in ("validate", "synth", "demo"):
            assert command in result.output

    def it_prints_the_version(self):
        result = runner.invoke(app, ["--version"])
        assert result.exit_code == 0 and result.output.strip() == f"lncr {__version__}"


class DescribeValidateCommand:
    def it_succeeds_and_records_the_split_for_a_good_study(self, phantom, tmp_path):
        copy = tmp_path / "p"
        shutil.copytree(phantom, copy)
        result = runner.invoke(app, ["validate", str(copy / "study.yaml")])
        assert result.exit_code == 0, result.output
        assert "OK" in result.output and "Slides per stain" in result.output
        assert (copy / "lncr-output" / "study" / "split.csv").exists()

    def it_fails_naming_file_and_line_for_a_bad_row(self, make_study):
        from conftest import PATIENTS_OK

        rows = PATIENTS_OK[:2] + [("P3", "development", "maybe")] + PATIENTS_OK[3:]
        result = runner.invoke(app, ["validate", str(make_study(rows))])
        assert result.exit_code == 2  # bad input
        assert "patients.csv:4" in result.output and "'maybe'" in result.output

    def it_fails_on_an_unknown_override(self, make_study):
        result = runner.invoke(app, ["validate", str(make_study()), "--set", "tiling.tilesize=3"])
        assert result.exit_code == 2 and "tiling.tile_size" in result.output

    def it_refuses_to_silently_change_a_recorded_split(self, make_study):
        rows = [(f"P{i:02d}", "development", str(i % 2)) for i in range(12)]
        study = make_study(rows, stains=("HE",))
        assert runner.invoke(app, ["validate", str(study)]).exit_code == 0
        result = runner.invoke(app, ["validate", str(study), "--set", "split.seed=99"])
        assert result.exit_code == 2 and "holds a split made from other" in result.output


class DescribeSynthCommand:
    def it_writes_a_study_that_validates(self, tmp_path):
        out = tmp_path / "ph"
        result = runner.invoke(app, ["synth", str(out), "--patients", "2", "--external", "0",
                                     "--size", "1024x640", "--stains", "HE,PAS", "--workers", "1"])
        assert result.exit_code == 0, result.output
        assert runner.invoke(app, ["validate", str(out / "study.yaml")]).exit_code == 0

    def it_exits_with_a_clear_error_on_a_bad_option(self, tmp_path):
        result = runner.invoke(app, ["synth", str(tmp_path), "--signal", "5"])
        assert result.exit_code == 2 and "--signal" in result.output


@pytest.mark.slow  # the whole demo
class DescribeDemoCommand:
    def it_runs_the_whole_pipeline_ends_with_the_report_and_resumes(self, tmp_path,
                                                                    monkeypatch):
        monkeypatch.chdir(tmp_path)  # a relative OUT, as `make demo` gives
        quick = ["magnification.powers=[10, 20]", "sweep.bag_sizes=[2]", "sweep.repeats=1",
                 "sweep.stains=[HE, PAS]", "sweep.epochs=1", "training.eval_tiles=4",
                 "training.input_size=128", "evaluation.bootstrap_resamples=200",
                 "explain.cluster_epochs=2", "explain.cluster_tile_size=32", "explain.top_k=2",
                 "training.min_patients_per_outcome=1"]  # one patient per outcome trains
        args = (["demo", "demo-out", "--patients", "4", "--external", "2", "--workers", "2",
                 "--epochs", "1"] + [a for s in quick for a in ("--set", s)])
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        out = tmp_path / "demo-out" / "study" / "lncr-output"
        assert (out / "study" / "split.csv").exists() and "Tiles:" in result.output
        units = pd.read_csv(out / "sweep" / "units.csv")
        assert len(units) == 2 and (units.status == "done").all()  # 2 stains, frozen grid
        lite0 = out / "sweep" / "runs-frozen" / "HE" / "10x" / "timm-tf_efficientnet_lite0-b2-s0"
        config = json.loads((lite0 / "config.json").read_text())
        assert config["weights"].endswith("tf_efficientnet_lite0.pth")  # pretrained
        assert config["features"]["id"].startswith("timm-tf_efficientnet_lite0-")  # cached
        assert len(list((out / "features").rglob("*.h5"))) == 2 * 2 * 6  # stains×mags×slides
        assert "tiles (" in result.output and "/s, ETA" in result.output  # embed's progress
        from lncr.evaluation.final_predictions import final_models

        models = final_models(out)  # run folders resolved against the output folder
        assert len(models) == 4 and (models.status == "done").all()
        multi = pd.read_csv(out / "predictions" / "multi_stain.csv")
        assert len(multi) == 6 and set(multi.stains_used) == {"HE+PAS"}
        assert (out / "evaluation" / "roc-external.png").exists()
        control = pd.read_csv(out / "evaluation" / "baseline" / "metrics.csv")
        assert "multi-stain" in set(control.model)  # the colour-statistics control ran
        assert "colour-statistics baseline" in " ".join(result.output.split())
        assert "External cohort, multi-stain ensemble: AUC" in result.output
        top = pd.read_csv(out / "explain" / "influential.csv")
        assert top.patient_id.nunique() == 2 and set(top.stain) == {"HE", "PAS"}
        assert len(list((out / "explain" / "heatmaps").rglob("*.png"))) == 8  # 2 × 2 × 2
        cams = pd.read_csv(out / "explain" / "gradcam" / "gradcam.csv")
        assert set(cams.stain) == {"HE", "PAS"} and (cams.groupby(
            ["stain", "magnification", "patient_id"]).size() == 2).all()
        clusters = out / "explain" / "clusters" / "HE" / "20x"
        assert len(pd.read_csv(clusters / "tiles.csv")) == 4 * 2  # 4 development patients
        assert "Grad-CAM galleries of" in result.output and "DCCS clusters" in result.output
        report = out / "report" / "report.html"
        page = report.read_text()
        assert '<section id="explain">' in page and "Grad-CAM" in page and "t-SNE" in page
        assert "Not available yet" not in page  # every stage ran
        assert result.output.rstrip().endswith(str(report))
        assert "[11/12] report" in result.output and "[12/12] export + apply" in result.output
        # Every stage shows its progress; off a terminal, as plain timestamped lines.
        parts = re.split(r"^\[(\d+)/12\] [^\n]*─$", result.output, flags=re.M)
        stages = dict(zip(parts[1::2], parts[2::2]))
        assert len(stages) == 12
        for k, text in stages.items():
            if k == "2":  # validate: the study's tables
                assert "Slides per stain" in text
            elif k == "5":  # sweep: one line per unit
                assert re.search(r"\d\d:\d\d:\d\d \[1/2\] done .*validation AUC", text), text
            else:
                assert re.search(r"\n\d\d:\d\d:\d\d \S", text), (k, text[:800])
        new = tmp_path / "demo-out" / "new-patient"
        scored = pd.read_csv(new / "scores.csv", dtype={"patient_id": str})
        assert len(scored) == 1 and scored.stains_used.iloc[0] == "HE+PAS"
        assert scored.patient_id.iloc[0] in set(top.patient_id)  # an external patient
        assert len(list((new / "reports").glob("*.html"))) == 1
        assert "as a new patient: P(CR)" in " ".join(result.output.split())
        assert "Selection protocol: frozen features" in page
        # Run again: every stage resumes from disk — no model retrained, no slide re-predicted.
        runs = [Path(f) for f in models.folder]  # final models may be sweep runs reused
        weights = {p: p.stat().st_mtime_ns for r in runs for p in r.glob("*.pt")}
        predicted = {p: p.stat().st_mtime_ns for r in runs for p in r.glob("predictions/*")}
        again = runner.invoke(app, args)
        assert again.exit_code == 0, again.output
        assert weights and {p: p.stat().st_mtime_ns for p in weights} == weights
        assert predicted and {p: p.stat().st_mtime_ns for p in predicted} == predicted
        assert again.output.rstrip().endswith(str(report))


class DescribeTileCommands:
    @pytest.mark.slow  # tiles the whole phantom
    def it_tiles_a_study_and_exports_the_tiles(self, phantom, tmp_path):
        from conftest import FAST

        study = tmp_path / "p"
        shutil.copytree(phantom, study)
        overrides = [arg for s in FAST for arg in ("--set", s)]
        result = runner.invoke(app, ["tile", str(study / "study.yaml"), "--workers", "2", *overrides])
        assert result.exit_code == 0, result.output
        assert "Tiles per stain and magnification" in result.output and "ok 64" in result.output
        out = tmp_path / "export"
        result = runner.invoke(app, ["tiles", "export", str(study / "study.yaml"), str(out), *overrides])
        assert result.exit_code == 0 and list(out.glob("DEV-001/HE/20x/*_*.png"))

    @pytest.mark.slow  # tiles the whole phantom
    def it_exits_non_zero_and_names_each_failed_slide(self, phantom, tmp_path):
        from conftest import FAST

        study = tmp_path / "p"
        shutil.copytree(phantom, study)
        (study / "slides" / "EXT-002_PAS.tiff").write_bytes(b"II*\x00broken")
        overrides = [arg for s in FAST for arg in ("--set", s)]
        result = runner.invoke(app, ["tile", str(study / "study.yaml"), "--workers", "2", *overrides])
        assert result.exit_code == 1
        assert "FAILED EXT-002 PAS 10x" in result.output and "FAILED EXT-002 PAS 20x" in result.output

    def it_refuses_a_study_whose_tables_have_errors(self, make_study):
        from conftest import PATIENTS_OK

        rows = PATIENTS_OK[:1] + [("P2", "development", "7")] + PATIENTS_OK[2:]
        result = runner.invoke(app, ["tile", str(make_study(rows))])
        assert result.exit_code == 2 and "lncr validate" in result.output and "'7'" in result.output

    def it_asks_for_tiling_before_export(self, make_study, tmp_path):
        result = runner.invoke(app, ["tiles", "export", str(make_study()), str(tmp_path / "o")])
        assert result.exit_code == 2 and "lncr tile" in result.output


class DescribeProgressLines:
    def it_prints_counts_rates_and_eta_and_restarts_them_for_a_new_phase(self, monkeypatch,
                                                                         capsys):
        """Off a terminal: one timestamped line per update (``every=0``); a new unit is a new
        phase whose first line has no rate yet (not a division by nearly nothing)."""
        from lncr.cli import common

        clock = iter([0.0, 10.0, 20.0, 20.0, 25.0])
        monkeypatch.setattr("time.perf_counter", lambda: next(clock))
        with common.Meter("tiles", every=0) as meter:
            meter.update("HE 10x", 50, 100)
            meter.update("HE 20x", 100, 100)
            qc = meter.phase("QC thumbnails")
            qc("QC thumbnail P1 HE", 1, 4)
            qc("QC thumbnail P2 HE", 3, 4)
        lines = capsys.readouterr().out.splitlines()
        assert re.fullmatch(r"\d\d:\d\d:\d\d HE 10x: 50/100 tiles \(5\.0/s, ETA 0:10\)",
                            lines[0])
        assert lines[1].endswith("100/100 tiles (5.0/s, ETA 0:00)")
        assert lines[2].endswith("1/4 QC thumbnails (-/s, ETA -)")
        assert lines[3].endswith("3/4 QC thumbnails (0.6/s, ETA 0:01)")  # rate since 20 s
