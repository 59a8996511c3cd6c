"""Property-based tests (Hypothesis) of the parsers users feed — the patients and slides
tables, the study YAML and ``--set``, QuPath GeoJSON: whatever bytes, encodings, headers,
quoting or nesting they hold, lncr answers with problems or one explained error (an
:class:`~lncr.errors.LncrError`), never a library's exception, and writes nothing outside the
output folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lncr.errors import LncrError
from lncr.study.report import Problems

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

HEADERS = st.sampled_from(["patient_id,cohort,label", "Patient_ID , COHORT,label,label",
                           "patient_id,cohort,label,split,site", "", "a,b", "\ufeffpatient_id;x"])
CELLS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


def csv_text(draw) -> str:
    header = draw(HEADERS)
    rows = draw(st.lists(st.lists(CELLS, min_size=0, max_size=6), max_size=6))
    quote = draw(st.sampled_from(['', '"']))
    return header + "\n" + "\n".join(",".join(quote + c + quote for c in r) for r in rows)


@st.composite
def table_bytes(draw) -> bytes:
    """A table as bytes: random bytes, or CSV-like text in a random encoding."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    return csv_text(draw).encode(encoding, errors="replace")


def written(factory, name: str, data: bytes) -> Path:
    """``data`` in a fresh folder under ``name``."""
    path = factory.mktemp("p") / name
    path.write_bytes(data)
    return path


class DescribeTables:
    @PROPERTY
    @given(data=table_bytes())
    def it_reads_any_patients_table_into_problems(self, tmp_path_factory, data):
        from lncr.study.tables import read_patients

        problems = Problems()
        table = read_patients(written(tmp_path_factory, "patients.csv", data), problems)  # must not raise
        assert table is not None or problems.errors

    @PROPERTY
    @given(data=table_bytes())
    def it_reads_any_slides_table_into_problems(self, tmp_path_factory, data):
        from lncr.study.tables import read_slides

        data = data.replace(b"patient_id,cohort,label", b"patient_id,stain,path")
        problems = Problems()
        table = read_slides(written(tmp_path_factory, "slides.csv", data), ("HE", "PAS"), None,
                            problems)
        assert table is not None or problems.errors


YAML_SCALARS = st.one_of(st.integers(), st.floats(allow_nan=True), st.booleans(), st.none(),
                         st.text(max_size=20))
YAML_VALUES = st.recursive(YAML_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)
KEYS = st.sampled_from(["training.epochs", "training", "tiling.tile_size", "stains", "recipe",
                        "explain.top_k", "sweep.architectures", "x.y.z", "training.seed..",
                        "split"])


@st.composite
def yaml_text(draw) -> str:
    """Study YAML: valid tables plus random settings, or random text, anchors and tags."""
    kind = draw(st.sampled_from(["settings", "text", "anchors"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "anchors":
        depth = draw(st.integers(1, 12))
        width = draw(st.integers(1, 12))
        lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
        return "patients: p.csv\nslides: s.csv\nsplit:\n" + "".join(f"  {x}\n" for x in lines)
    body = json.dumps({"patients": "p.csv", "slides": "s.csv",
                       draw(st.sampled_from(["training", "tiling", "explain", "zzz"])):
                       draw(YAML_VALUES)})
    return body + draw(st.sampled_from(["", "\n!!python/object/apply:os.system ['id']",
                                        "\n[[[[[[", "\n" + "[" * 3000]))


class DescribeStudyYaml:
    @PROPERTY
    @given(text=yaml_text())
    def it_loads_any_study_yaml_or_explains_why_not(self, tmp_path_factory, text):
        from lncr.study.config_file import load_config

        path = tmp_path_factory.mktemp("y") / "study.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(path)
        except LncrError as exc:
            assert len(str(exc)) < 5000
        except ValueError as exc:  # StudyConfigError and pydantic's, both explained
            assert str(exc)

    @PROPERTY
    @given(key=KEYS, value=st.one_of(st.text(max_size=60), YAML_VALUES.map(json.dumps)))
    def it_applies_any_set_or_explains_why_not(self, key, value):
        from lncr.study.config_file import apply_overrides

        try:
            apply_overrides({"training": {"seed": 1}}, [f"{key}={value}"])
        except ValueError as exc:  # StudyConfigError: explained, bounded
            assert str(exc) and len(str(exc)) < 5000


GEOMETRY = st.recursive(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**12, 10**12),
              st.text(max_size=5), st.none()),
    lambda inner: st.lists(inner, max_size=5), max_leaves=30)


@st.composite
def geojson_bytes(draw) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    feature = {"type": "Feature",
               "properties": draw(st.one_of(st.none(), st.dictionaries(
                   st.sampled_from(["objectType", "classification", "name"]),
                   st.one_of(st.text(max_size=8), st.dictionaries(st.just("name"),
                                                                  st.text(max_size=8)))))),
               "geometry": {"type": draw(st.sampled_from(["Polygon", "MultiPolygon", "Point",
                                                          "LineString", "x"])),
                            "coordinates": draw(GEOMETRY)}}
    shape = draw(st.sampled_from(["collection", "list", "feature", "other"]))
    data = ({"type": "FeatureCollection", "features": [feature]} if shape == "collection" else
            [feature] if shape == "list" else feature if shape == "feature" else draw(GEOMETRY))
    return json.dumps(data).encode()


class DescribeGeoJSON:
    @PROPERTY
    @given(data=geojson_bytes())
    def it_reads_any_geojson_or_explains_why_not(self, tmp_path_factory, data):
        import warnings

        from lncr.slides.annotations import AnnotationError, read_regions

        path = written(tmp_path_factory, "a.geojson", data)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                regions = read_regions(path)
            except AnnotationError as exc:
                assert str(path) in str(exc)
                return
            regions.mask(0, 0, 16, 16, 4.0)


@pytest.mark.slow  # runs `lncr validate` once per example
class DescribeValidateCommand:
    @settings(max_examples=12, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(patients=table_bytes(), slides=table_bytes())
    def it_answers_any_tables_with_exit_0_or_2_and_writes_only_its_output(
            self, tmp_path_factory, patients, slides):
        root = tmp_path_factory.mktemp("v")
        folder = root / "study"
        folder.mkdir()
        (folder / "patients.csv").write_bytes(patients)
        (folder / "slides.csv").write_bytes(slides)
        (folder / "study.yaml").write_text("patients: patients.csv\nslides: slides.csv\n")
        before = set(os.listdir(folder))
        from lncr.cli import app

        result = CliRunner().invoke(app, ["validate", str(folder / "study.yaml"), "--no-files"])
        assert result.exit_code in (0, 2), result.output
        assert "internal error" not in result.output and "Traceback" not in result.output
        assert set(os.listdir(folder)) - before <= {"lncr-output"}
        assert os.listdir(root) == ["study"]  # nothing beside the study's folder
