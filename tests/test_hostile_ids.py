"""Identifiers from the user's tables are untrusted: whatever a patient ID or stain name says,
lncr writes only inside its output folder, keeps one file per identifier and reads the
identifier back exactly as written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from lncr.cli import app
from lncr.identifiers import file_name, identifier
from lncr.layout import Layout, read_table
from lncr.study.validate import Study, load_study

NASTY = ["../../escape", "/tmp/x", "LN/2019/001", "..", ".", ".hidden", "a\\b", "C:\\x",
         "50%", "50%25", "P 1", "Pé", "=1+2", "NA", "null", "001", "a{b}", "~home"]


class DescribeFileName:
    @pytest.mark.parametrize("value", NASTY)
    def it_is_one_harmless_path_component_that_reads_back(self, value):
        name = file_name(value)
        assert "/" not in name and "\\" not in name and not name.startswith(".")
        assert Path(name).name == name and name not in ("", ".", "..")
        assert identifier(name) == value

    def it_keeps_different_identifiers_apart(self):
        assert len({file_name(v) for v in NASTY}) == len(NASTY)

    def it_leaves_ordinary_identifiers_as_they_are(self):
        assert [file_name(v) for v in ("DEV-001", "HE", "P_1.2")] == ["DEV-001", "HE", "P_1.2"]


def _study(phantom: Path, folder: Path, ids: dict[str, str], stain: str = "HE") -> Path:
    """A one-stain copy of the phantom whose patients (and stain) are renamed."""
    shutil.copytree(phantom, folder)
    patients = pd.read_csv(folder / "patients.csv", dtype=str, keep_default_na=False)
    slides = pd.read_csv(folder / "slides.csv", dtype=str, keep_default_na=False)
    slides = slides[slides.stain == "HE"].assign(stain=stain)
    patients["patient_id"] = patients.patient_id.replace(ids)
    slides["patient_id"] = slides.patient_id.replace(ids)
    patients.to_csv(folder / "patients.csv", index=False)
    slides.to_csv(folder / "slides.csv", index=False)
    (folder / "study.yaml").write_text(
        f"patients: patients.csv\nslides: slides.csv\nstains: ['{stain}']\n"
        "tiling:\n  tile_size: 128\nmagnification:\n  powers: [10, 20]\n")
    return folder / "study.yaml"


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


class DescribeHostileIdentifiers:
    @pytest.mark.slow  # tiles a phantom
    def it_writes_nothing_outside_the_output_folder_whatever_the_tables_say(self, phantom,
                                                                            tmp_path):
        outside = tmp_path / "outside" / "victim.json"
        ids = {"DEV-001": "../../escape", "DEV-002": str(outside), "DEV-003": "LN/2019/001",
               "DEV-004": "=1+2", "EXT-001": "NA", "EXT-002": "001"}
        study_yaml = _study(phantom, tmp_path / "study", ids, stain="../H&E")
        before = _files(tmp_path)
        result = CliRunner().invoke(app, ["validate", str(study_yaml), "--no-files"])
        assert result.exit_code == 0, result.output
        assert "formula" in result.output  # the =1+2 patient is warned about
        from lncr.tiling.run import tile_study

        report = tile_study(Study.load(study_yaml), workers=1)
        assert not report.failed
        out = tmp_path / "study" / "lncr-output"
        new = _files(tmp_path) - before
        assert new and all(out in p.parents for p in new), sorted(
            str(p) for p in new if out not in p.parents)
        assert not (tmp_path / "outside").exists() and not (tmp_path / "escape").exists()
        index = Layout(out).read_tiles_index()
        assert set(ids.values()) <= set(index.patient_id)  # read back exactly, as text
        ok = index[index.status == "ok"]
        assert ok.store.nunique() == len(ok)  # one store per patient × magnification
        for row in ok.itertuples():
            assert Path(row.store).is_relative_to(out / "tiles")

    def it_reads_identifiers_back_as_text_from_every_table(self, tmp_path):
        path = tmp_path / "t.csv"
        pd.DataFrame({"patient_id": ["NA", "001", "null", ""], "probability": ["0.5", "NA",
                                                                               "", "1"]}
                     ).to_csv(path, index=False)
        table = read_table(path)
        assert list(table.patient_id) == ["NA", "001", "null", ""]
        assert table.probability.isna().tolist() == [False, True, True, False]


class DescribeIdentifierValidation:
    def _problems(self, make_study, rows, stains=("HE",)):
        study = load_study(make_study(rows, stains=stains), check_files=False)
        return {p.code for p in study.problems.errors}, {p.code for p in study.problems.warnings}

    def it_refuses_control_characters_and_says_what_is_allowed(self, make_study):
        study = load_study(make_study([("P\x07", "development", "1"),
                                       ("Q", "development", "0")]), check_files=False)
        err = [p for p in study.problems.errors if p.code == "bad-identifier"]
        assert err and "printable" in str(err[0]) and err[0].line == 2

    def it_refuses_two_patients_that_differ_only_in_case(self, make_study):
        errors, _ = self._problems(make_study, [("p1", "development", "1"),
                                                ("P1", "development", "0")])
        assert "case-collision" in errors

    def it_warns_of_ids_a_spreadsheet_would_run_as_formulas(self, make_study):
        _, warnings = self._problems(make_study, [("=HYPERLINK(1)", "development", "1"),
                                                  ("P2", "development", "0")])
        assert "formula-identifier" in warnings

    def it_refuses_a_stain_name_with_control_characters(self, make_study):
        yaml = make_study([("P1", "development", "1"), ("P2", "development", "0")])
        study = load_study(yaml, ['stains=["H\\tE"]'], check_files=False)
        assert any("control character" in str(p) for p in study.problems.errors)
