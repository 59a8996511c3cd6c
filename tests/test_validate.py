"""Describe lncr validate: every problem of the tables and slide files, each naming its row."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from conftest import PATIENTS_OK
from lncr.study.validate import load_study


def problems_with(study, code):
    return [p for p in study.problems.items if p.code == code]


def only_error(study, code):
    """The study has exactly one error, of ``code``; return it."""
    errors = study.problems.errors
    assert [p.code for p in errors] == [code], [str(p) for p in errors]
    return errors[0]


class DescribeValidStudy:
    def it_has_no_problems_and_a_summary(self, make_study):
        study = load_study(make_study())
        assert study.ok, [str(p) for p in study.problems.items]
        summary = study.summary()
        assert summary["patients"]["development"] == {"1": 2, "0": 2, "unlabelled": 0}
        assert summary["patients"]["external"] == {"1": 1, "0": 1, "unlabelled": 0}
        assert summary["slides"]["HE"] == {"development": 4, "external": 2, "prospective": 0}
        assert summary["missing_stains"] == {}


class DescribeProspectivePatients:
    def it_accepts_patients_to_score_with_an_empty_label(self, make_study):
        study = load_study(make_study(PATIENTS_OK + [("N1", "prospective", "")]))
        assert study.ok, [str(p) for p in study.problems.items]
        assert study.summary()["patients"]["prospective"] == {"1": 0, "0": 0, "unlabelled": 1}
        row = study.patients[study.patients.patient_id == "N1"].iloc[0]
        assert row.label is pd.NA and "N1" not in set(study.split.patient_id)

    def it_refuses_an_empty_label_where_training_or_evaluation_needs_one(self, make_study):
        rows = PATIENTS_OK[:4] + [("E1", "external", "")] + PATIENTS_OK[5:]
        err = only_error(load_study(make_study(rows)), "bad-label")
        assert err.line == 6 and "no label" in err.message and "prospective" in err.fix

    def it_refuses_a_label_on_a_prospective_patient(self, make_study):
        err = only_error(load_study(make_study(PATIENTS_OK + [("N1", "prospective", "1")])),
                         "label-on-prospective")
        assert err.line == 8 and "'external'" in err.fix

    def it_warns_that_a_study_of_prospective_patients_only_can_only_score(self, make_study):
        study = load_study(make_study([("N1", "prospective", ""), ("N2", "prospective", "")]))
        assert study.ok and problems_with(study, "no-development")[0].severity == "warning"


class DescribePatientRows:
    def it_reports_a_duplicate_patient_with_both_lines(self, make_study):
        rows = PATIENTS_OK + [("P2", "development", "1")]
        err = only_error(load_study(make_study(rows, slides=None)), "duplicate-patient")
        assert err.line == 8 and "first on line 3" in err.message and err.file == "patients.csv"

    def it_reports_a_label_other_than_0_or_1(self, make_study):
        rows = PATIENTS_OK[:3] + [("P4", "development", "2")] + PATIENTS_OK[4:]
        err = only_error(load_study(make_study(rows)), "bad-label")
        assert err.line == 5 and "'2'" in err.message and "P4" in err.message

    def it_reports_a_cohort_that_is_not_allowed_and_suggests_one(self, make_study):
        rows = [("P1", "developement", "1")] + PATIENTS_OK[1:]
        err = only_error(load_study(make_study(rows)), "bad-cohort")
        assert err.line == 2 and "'development'" in err.fix

    def it_reports_a_split_value_that_is_not_allowed(self, make_study):
        rows = [r + (s,) for r, s in zip(PATIENTS_OK, ["train", "validation", "train", "val", "", ""])]
        study = load_study(make_study(rows, patient_header="patient_id,cohort,label,split"))
        err = only_error(study, "bad-split")
        assert err.line == 3 and "'validation'" in err.message

    def it_reports_a_split_on_an_external_patient(self, make_study):
        rows = [r + (s,) for r, s in zip(PATIENTS_OK, ["train", "val", "train", "val", "val", ""])]
        study = load_study(make_study(rows, patient_header="patient_id,cohort,label,split"))
        err = only_error(study, "split-on-external")
        assert err.line == 6 and "E1" in err.message

    def it_reports_development_patients_missing_from_a_given_split(self, make_study):
        rows = [r + (s,) for r, s in zip(PATIENTS_OK, ["train", "val", "", "val", "", ""])]
        study = load_study(make_study(rows, patient_header="patient_id,cohort,label,split"))
        err = only_error(study, "partial-split")
        assert err.line == 4 and "P3" in err.message

    def it_reports_a_missing_required_column(self, make_study):
        study = load_study(make_study([("P1", "development")], slides=[],
                                      patient_header="patient_id,cohort"))
        err = problems_with(study, "missing-column")[0]
        assert "label" in err.message and err.file == "patients.csv"

    def it_reports_a_patient_without_slides(self, make_study, tiny_slide_factory):
        slides = [(pid, st, str(tiny_slide_factory(f"{pid}_{st}.tiff")))
                  for pid, _, _ in PATIENTS_OK if pid != "P3" for st in ("HE", "PAS")]
        err = only_error(load_study(make_study(slides=slides)), "patient-without-slides")
        assert err.line == 4 and "P3" in err.message


class DescribeSlideRows:
    def slides(self, tiny_slide_factory):
        return [(pid, st, str(tiny_slide_factory(f"{pid}_{st}.tiff")))
                for pid, _, _ in PATIENTS_OK for st in ("HE", "PAS")]

    def it_reports_a_slide_of_an_unknown_patient(self, make_study, tiny_slide_factory):
        slides = self.slides(tiny_slide_factory) + [("P9", "HE", str(tiny_slide_factory("x.tiff")))]
        err = only_error(load_study(make_study(slides=slides)), "unknown-patient")
        assert err.line == 14 and err.file == "slides.csv" and "P9" in err.message

    def it_reports_an_unknown_stain_and_suggests_one(self, make_study, tiny_slide_factory):
        slides = self.slides(tiny_slide_factory)
        slides[3] = (slides[3][0], "pas", slides[3][2])
        err = only_error(load_study(make_study(slides=slides)), "unknown-stain")
        assert err.line == 5 and "'PAS'" in err.fix

    def it_reports_a_duplicate_patient_and_stain(self, make_study, tiny_slide_factory):
        slides = self.slides(tiny_slide_factory) + [("P1", "HE", str(tiny_slide_factory("dup.tiff")))]
        err = only_error(load_study(make_study(slides=slides)), "duplicate-slide")
        assert err.line == 14 and "first on line 2" in err.message

    def it_reports_the_same_file_listed_twice(self, make_study, tiny_slide_factory):
        slides = self.slides(tiny_slide_factory)
        slides[1] = (slides[1][0], slides[1][1], slides[0][2])
        err = only_error(load_study(make_study(slides=slides)), "duplicate-path")
        assert err.line == 3 and "line 2" in err.message

    def it_reports_a_missing_slide_file(self, make_study, tiny_slide_factory, tmp_path):
        slides = self.slides(tiny_slide_factory)
        slides[4] = (slides[4][0], slides[4][1], "scans/absent.svs")
        err = only_error(load_study(make_study(slides=slides)), "missing-file")
        assert err.line == 6 and "absent.svs" in err.message and "does not exist" in err.message

    def it_reports_an_unreadable_slide_file(self, make_study, tiny_slide_factory, tmp_path):
        bad = tmp_path / "broken.tiff"
        bad.write_bytes(b"II*\x00" + b"\x00" * 64)
        slides = self.slides(tiny_slide_factory)
        slides[2] = (slides[2][0], slides[2][1], str(bad))
        err = only_error(load_study(make_study(slides=slides)), "unreadable-file")
        assert err.line == 4 and "broken.tiff" in err.message

    def it_reports_a_truncated_slide_file(self, make_study, tiny_slide_factory, tmp_path):
        good = tiny_slide_factory("P1_HE.tiff").read_bytes()
        bad = tmp_path / "truncated.tiff"
        bad.write_bytes(good[: len(good) // 3])
        slides = self.slides(tiny_slide_factory)
        slides[0] = (slides[0][0], slides[0][1], str(bad))
        err = only_error(load_study(make_study(slides=slides)), "unreadable-file")
        assert err.line == 2

    @pytest.mark.parametrize("value, words", [("-0.25", "not positive"), ("0", "not positive"),
                                              ("5", "implausible"), ("0.01", "implausible"),
                                              ("abc", "not a number")])
    def it_reports_a_bad_mpp(self, make_study, tiny_slide_factory, value, words):
        slides = [s + ("",) for s in self.slides(tiny_slide_factory)]
        slides[5] = slides[5][:3] + (value,)
        study = load_study(make_study(slides=slides, slide_header="patient_id,stain,path,mpp"))
        err = only_error(study, "bad-mpp")
        assert err.line == 7 and words in err.message

    def it_reports_every_problem_at_once(self, make_study, tiny_slide_factory):
        rows = PATIENTS_OK[:2] + [("P3", "development", "yes")] + PATIENTS_OK[3:] + [("P1", "external", "0")]
        slides = self.slides(tiny_slide_factory)
        slides[0] = ("P1", "IHC", slides[0][2])
        slides[1] = ("Q7", "PAS", slides[1][2])
        study = load_study(make_study(rows, slides=slides))
        codes = sorted(p.code for p in study.problems.errors)
        assert codes == ["bad-label", "duplicate-patient", "unknown-patient", "unknown-stain"]


class DescribeWarnings:
    def it_warns_but_passes_when_a_patient_lacks_a_stain(self, make_study, tiny_slide_factory):
        slides = [(pid, st, str(tiny_slide_factory(f"{pid}_{st}.tiff")))
                  for pid, _, _ in PATIENTS_OK for st in ("HE", "PAS") if (pid, st) != ("P2", "PAS")]
        study = load_study(make_study(slides=slides))
        assert study.ok
        (warn,) = problems_with(study, "missing-stain")
        assert warn.line == 3 and "PAS" in warn.message
        assert study.summary()["missing_stains"] == {"P2": ["PAS"]}

    def it_warns_about_an_unknown_column_and_suggests_the_name(self, make_study):
        rows = [r + ("x",) for r in PATIENTS_OK]
        study = load_study(make_study(rows, patient_header="patient_id,cohort,label,splitt"))
        assert study.ok
        (warn,) = problems_with(study, "unknown-column")
        assert "'split'" in warn.fix


class DescribeRealSlides:
    """The third-party slides in tests/data/slides, through every backend."""

    def study_of(self, make_study, real_data, names, mpp=None):
        rows = [(f"P{i}", "development", str(i % 2)) for i in range(len(names))]
        header = "patient_id,stain,path" + (",mpp" if mpp is not None else "")
        slides = [(f"P{i}", "HE", str(real_data / n)) + ((mpp[i],) if mpp is not None else ())
                  for i, n in enumerate(names)]
        return load_study(make_study(rows, slides=slides, slide_header=header, stains=("HE",)))

    def it_accepts_svs_and_ome_tiff_with_their_mpp(self, make_study, real_data):
        study = self.study_of(make_study, real_data, ["CMU-1-Small-Region.svs", "OS-1-detail.ome.tif"])
        assert study.ok, [str(p) for p in study.problems.items]

    def it_requires_an_mpp_column_when_the_file_has_none(self, make_study, real_data):
        study = self.study_of(make_study, real_data,
                              ["tcga-cr-7395-01a-01-ts1.svs", "almost-empty-strip.tif"])
        errs = problems_with(study, "missing-mpp")
        assert [e.line for e in errs] == [2, 3] and all("'mpp' column" in e.fix for e in errs)

    def it_accepts_the_mpp_column_as_the_fix(self, make_study, real_data):
        study = self.study_of(make_study, real_data,
                              ["tcga-cr-7395-01a-01-ts1.svs", "almost-empty-strip.tif"], mpp=["0.25", "0.5"])
        assert study.ok, [str(p) for p in study.problems.items]

    def it_warns_when_the_mpp_column_contradicts_the_file(self, make_study, real_data):
        study = self.study_of(make_study, real_data, ["CMU-1-Small-Region.svs"], mpp=["0.25"])
        assert study.ok
        assert problems_with(study, "mpp-override")


class DescribeThePhantom:
    def it_validates_the_phantom_study(self, phantom, tmp_path):
        copy = tmp_path / "phantom"
        shutil.copytree(phantom, copy)
        study = load_study(copy / "study.yaml")
        assert study.ok and not study.problems.items
        assert study.summary()["slides"]["MASSON"] == {"development": 6, "external": 2,
                                                       "prospective": 0}
