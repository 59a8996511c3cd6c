"""Describe QuPath annotations as tiling regions: reading GeoJSON exports, the include/exclude
area, annotation-restricted tiling of real slides, validation, QC and the MIRAX offset."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lncr.explain.heatmap import geojson
from lncr.layout import Layout
from lncr.slides.annotations import (
    AnnotationError,
    RegionRules,
    bounds_offset,
    candidates,
    read_regions,
    slide_regions,
)
from lncr.slides.reader import open_slide, probe_slide
from lncr.study.validate import Study, load_study
from lncr.tiling.qc import REGION_COLOURS
from lncr.tiling.run import tile_study
from lncr.tiling.store import TileStore
from lncr.tiling.tissue import grey
from lncr.tiling.unit import TileParams, TileUnit, tile_unit

# Hand-drawn on CMU-1-Small-Region.svs (2220 × 2967 px, 0.499 µm/px): the main tissue body as
# the area to use (with a hole), the loose fibres beside the epidermis as an artefact to leave
# out, plus a point and a detection that are not regions.
TISSUE = [[500, 700], [1700, 700], [1900, 2967], [500, 2967], [400, 1800], [500, 700]]
HOLE = [[700, 2300], [1000, 2300], [1000, 2600], [700, 2600], [700, 2300]]
ARTEFACT = [[1190, 840], [1640, 840], [1640, 1880], [1190, 1880], [1190, 840]]


def feature(kind: str, coords, cls: str | None = None, object_type: str = "annotation") -> dict:
    props: dict = {"objectType": object_type}
    if cls:
        props["classification"] = {"name": cls, "color": [255, 0, 0]}
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords},
            "properties": props}


def cmu_annotations() -> dict:
    return {"type": "FeatureCollection", "features": [
        feature("Polygon", [TISSUE, HOLE], "Tissue"),
        feature("Polygon", [ARTEFACT], "Ignore*"),
        feature("Point", [300, 300], "Tissue"),
        feature("Polygon", [[[0, 0], [50, 0], [50, 50], [0, 0]]], None, "detection")]}


@pytest.fixture
def cmu(real_data, tmp_path):
    """CMU-1-Small-Region.svs beside its annotations (CMU-1-Small-Region.geojson)."""
    slide = tmp_path / "CMU-1-Small-Region.svs"
    slide.symlink_to(real_data / "CMU-1-Small-Region.svs")
    (tmp_path / "CMU-1-Small-Region.geojson").write_text(json.dumps(cmu_annotations()))
    return slide


def allowed(x0, y0, size, scale):
    """The area to use under a tile, computed independently of lncr: include minus hole
    minus artefact, by pixel centres."""
    from matplotlib.path import Path as MplPath

    n = int(round(size / scale))
    centres = (np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1).reshape(-1, 2) + 0.5) * scale
    pts = centres + (x0, y0)
    inside = MplPath(TISSUE).contains_points(pts) & ~MplPath(HOLE).contains_points(pts)
    inside &= ~MplPath(ARTEFACT).contains_points(pts)
    return inside.reshape(n, n)


def within_a_pixel(mask: np.ndarray, expected: np.ndarray) -> bool:
    """Equal but for pixels on a boundary (the rasteriser counts them as inside)."""
    import cv2

    k = np.ones((3, 3), np.uint8)
    core = cv2.erode(expected.astype(np.uint8), k).astype(bool)
    hull = cv2.dilate(expected.astype(np.uint8), k).astype(bool)
    outside_core = cv2.erode((~expected).astype(np.uint8), k).astype(bool)
    return bool(mask[core].all() and not mask[outside_core].any() and not mask[~hull].any())


class DescribeReadingQuPathExports:
    def it_reads_include_and_exclude_regions_and_skips_what_is_not_an_area(self, tmp_path):
        path = tmp_path / "a.geojson"
        path.write_text(json.dumps(cmu_annotations()))
        regions = read_regions(path)
        assert len(regions.include) == 1 and len(regions.include[0]) == 2  # exterior + hole
        assert len(regions.exclude) == 1
        assert regions.skipped == {"no area": 1, "not an annotation": 1}

    def it_reads_the_list_of_features_of_qupath_before_0_4(self, tmp_path):
        path = tmp_path / "a.geojson"
        path.write_text(json.dumps(cmu_annotations()["features"]))
        assert len(read_regions(path).include) == 1

    def it_matches_classes_with_wildcards_ignoring_case(self):
        rules = RegionRules()
        assert rules.kind("Ignore*") == "exclude" and rules.kind("pen mark") == "exclude"
        assert rules.kind("Tumor") == "include" and rules.kind(None) == "include"
        only = RegionRules(include_classes=("Tissue",))
        assert only.kind("Tumor") is None and only.kind("tissue") == "include"

    @pytest.mark.parametrize("text,needle", [
        ("{not json", "cannot be read as GeoJSON"),
        ('{"type": "Topology"}', "not a GeoJSON FeatureCollection"),
        ('{"type": "FeatureCollection", "features": []}', "no polygon annotation"),
        ('[{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", '
         '"coordinates": [[["a", 1], [2, 3], [4]]]}}]', "feature 1 is malformed"),
        ('[{"type": "Feature", "properties": [1], "geometry": null}]',
         "feature 1 is malformed"),
        ('[{"type": "Feature", "geometry": {"type": "Polygon", '
         '"coordinates": [[[0, 0], [NaN, 0], [1, 1]]]}}]', "feature 1 is malformed")])
    def it_names_the_file_and_the_fix_for_a_bad_export(self, tmp_path, text, needle):
        path = tmp_path / "bad.geojson"
        path.write_text(text)
        with pytest.raises(AnnotationError, match=needle) as err:
            read_regions(path)
        assert "bad.geojson" in str(err.value)

    def it_finds_annotations_by_qupath_image_name_beside_the_slide(self, tmp_path):
        assert [p.name for p in candidates(tmp_path / "OS-1.ome.tif")] == [
            "OS-1.geojson", "OS-1.ome.tif.geojson"]
        assert [p.name for p in candidates(tmp_path / "a.svs")] == ["a.geojson",
                                                                     "a.svs.geojson"]


class DescribeTheArea:
    def it_is_the_union_of_inclusions_less_holes_and_exclusions(self, tmp_path):
        square = lambda x0, y0, s: [[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s],  # noqa: E731
                                    [x0, y0]]
        path = tmp_path / "a.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": [
            feature("Polygon", [square(0, 0, 100), square(20, 20, 10)]),
            feature("MultiPolygon", [[square(50, 50, 100)]], "Stroma"),
            feature("Polygon", [square(0, 0, 10)], "Pen mark")]}))
        mask = read_regions(path).mask(0, 0, 200, 200, 1.0)
        expected = np.zeros((200, 200), bool)
        expected[0:100, 0:100] = True
        expected[50:150, 50:150] = True
        expected[20:30, 20:30] = False
        expected[0:10, 0:10] = False
        assert within_a_pixel(mask, expected)

    def it_is_the_whole_slide_less_exclusions_when_nothing_is_included(self, tmp_path):
        path = tmp_path / "a.geojson"
        path.write_text(json.dumps([feature("Polygon", [ARTEFACT], "Artefact")]))
        mask = read_regions(path).mask(0, 0, 222, 297, 10.0)
        assert mask.mean() == pytest.approx(1 - 450 * 1040 / (2220 * 2970), abs=0.01)


class DescribeTheMiraxOffset:
    def it_reads_openslide_bounds_as_qupaths_origin(self, real_data):
        assert bounds_offset({"openslide.bounds-x": "1200", "openslide.bounds-y": "800"}) == (
            1200.0, 800.0)
        assert bounds_offset({"tiffslide.mpp-x": "0.25"}) == (0.0, 0.0)
        svs = probe_slide(real_data / "CMU-1-Small-Region.svs", decode=False)
        assert svs.bounds_offset == (0.0, 0.0)  # Aperio: no bounds

    def it_moves_annotations_in_and_tiles_out_by_the_offset(self, tmp_path):
        path = tmp_path / "a.geojson"
        path.write_text(json.dumps([feature("Polygon", [TISSUE])]))
        moved = slide_regions(path, (1200.0, 800.0), RegionRules())
        assert moved.include[0][0][0].tolist() == [1700.0, 1500.0]
        assert slide_regions(path, (1200.0, 800.0), RegionRules(crop_to_bounds=False)
                             ).include[0][0][0].tolist() == [500.0, 700.0]
        scores = pd.DataFrame({"index": [0], "x": [1700], "y": [1500], "size0": [512]})
        ring = geojson(scores, offset=(1200.0, 800.0))["features"][0]["geometry"]["coordinates"]
        assert ring[0][0] == [500.0, 700.0]  # back in QuPath's frame


class DescribeAnnotationRestrictedTiling:
    def it_keeps_only_tissue_inside_the_regions_of_a_real_slide(self, cmu, tmp_path):
        def run(annotations: str, name: str):
            u = TileUnit("P1", "development", "HE", str(cmu), None, "20x", 0.5,
                         str(tmp_path / f"{name}.tiles.zip"), annotations)
            # No luminosity step, so that the rule can be recomputed on the slide's pixels.
            return tile_unit(u, TileParams(tile_size=128, luminosity_standardise=False), None)

        whole = run("", "whole")
        part = run(str(cmu.with_suffix(".geojson")), "part")
        assert whole.status == part.status == "ok"
        assert 0 < part.kept < whole.kept and part.outside > 0
        with TileStore(tmp_path / "whole.tiles.zip") as w, \
                TileStore(tmp_path / "part.tiles.zip") as p:
            kept_whole = set(zip(w.coords.x, w.coords.y))
            kept_part = list(zip(p.coords.x, p.coords.y))
            size0 = float(p.coords.size0.iloc[0])
            meta = p.meta
        assert set(kept_part) <= kept_whole  # regions only ever remove tiles
        with open_slide(cmu) as slide:
            for x, y in kept_part:  # the tissue rule, inside the area only
                tile = slide.read(0, x, y, 128, 128)
                tissue = (grey(tile) <= 225) & allowed(x, y, size0, size0 / 128)
                assert tissue.mean() >= 0.5 - 0.02, (x, y)
            for x, y in kept_whole:  # whatever lies wholly inside the area is still kept
                if allowed(x, y, size0, size0 / 128).all():
                    assert (x, y) in kept_part, (x, y)
        in_artefact = [(x, y) for x, y in kept_part
                       if 1190 <= x and x + size0 <= 1640 and 840 <= y and y + size0 <= 1880]
        assert not in_artefact
        assert meta["annotations"]["include"] == 1 and meta["annotations"]["exclude"] == 1
        assert meta["counts"]["outside"] == part.outside

    def it_tiles_a_study_with_annotations_listed_or_found_beside_the_slide(
            self, make_study, real_data, cmu, tmp_path):
        ome = tmp_path / "OS-1-detail.ome.tif"
        shutil.copy(real_data / "OS-1-detail.ome.tif", ome)
        (tmp_path / "OS-1-detail.geojson").write_text(json.dumps([feature(
            "Polygon", [[[0, 0], [550, 0], [550, 1101], [0, 1101], [0, 0]]], "Tumor")]))
        listed = tmp_path / "regions" / "cmu.json"
        listed.parent.mkdir()
        listed.write_text(json.dumps(cmu_annotations()))
        rows = [("CMU", "development", "1"), ("OME", "development", "0")]
        slides = [("CMU", "HE", str(cmu), "regions/cmu.json"), ("OME", "HE", str(ome), "")]
        yaml = make_study(rows, slides=slides, slide_header="patient_id,stain,path,annotations",
                          stains=("HE",), yaml_extra="magnification: {powers: [20]}\n"
                          "tiling: {tile_size: 128, normalisation: {HE: none}}\n")
        study = load_study(yaml)
        assert study.ok, study.problems.items
        assert study.summary()["annotated_slides"] == 2
        tile_study(Study.load(yaml), workers=1)
        layout = Layout(tmp_path / "lncr-output")
        index = layout.read_tiles_index().set_index("patient_id")
        assert index.loc["CMU", "annotations"] == str(listed)
        assert index.loc["OME", "annotations"] == str(tmp_path / "OS-1-detail.geojson")
        assert (index.outside_regions > 0).all() and (index.status == "ok").all()
        with TileStore(index.loc["OME", "store"]) as store:  # left half only
            assert (store.coords.x + store.coords.size0 / 2 <= 550).all()
        qc = np.asarray(Image.open(layout.qc_image("CMU", "HE")).convert("RGB"))
        for colour in REGION_COLOURS.values():  # both kinds of region are drawn
            assert (qc == colour).all(-1).sum() > 50
        from lncr.report.sections import tiling_section

        assert "2 slide(s) were tiled inside a pathologist's QuPath annotations" in (
            tiling_section(tmp_path / "lncr-output"))
        again = tile_study(Study.load(yaml), workers=1)
        assert {r.status for r in again.results} == {"reused"}
        listed.write_text(json.dumps([feature("Polygon", [TISSUE], "Tissue")]))
        changed = tile_study(Study.load(yaml), workers=1)
        status = {r.unit.patient_id: r.status for r in changed.results}
        assert status == {"CMU": "ok", "OME": "reused"}  # new regions: cut again


class DescribeValidation:
    def study(self, make_study, slide, column: str = "", extra: str = ""):
        rows = [("P1", "development", "1"), ("P2", "development", "0")]
        slides = [("P1", "HE", str(slide), column), ("P2", "HE", str(slide.with_name("b.svs")),
                                                     "")]
        shutil.copy(slide, slide.with_name("b.svs"))
        return load_study(make_study(rows, slides=slides, stains=("HE",),
                                     slide_header="patient_id,stain,path,annotations",
                                     yaml_extra=extra))

    def codes(self, study):
        return {(p.code, p.line) for p in study.problems.items}

    def it_refuses_a_listed_file_that_does_not_exist(self, make_study, cmu):
        study = self.study(make_study, cmu, "nowhere.geojson")
        assert ("missing-annotations", 2) in self.codes(study)

    def it_refuses_an_export_it_cannot_read(self, make_study, cmu):
        cmu.with_suffix(".geojson").write_text("{oops")
        study = self.study(make_study, cmu)
        assert ("bad-annotations", 2) in self.codes(study)
        assert "CMU-1-Small-Region.geojson" in str(study.problems.errors[0])

    def it_refuses_regions_that_miss_the_slide(self, make_study, cmu):
        far = [[[5000, 5000], [6000, 5000], [6000, 6000], [5000, 5000]]]
        cmu.with_suffix(".geojson").write_text(json.dumps([feature("Polygon", far)]))
        study = self.study(make_study, cmu)
        assert ("annotations-outside", 2) in self.codes(study)
        assert "crop_to_bounds" in study.problems.errors[0].fix

    def it_requires_annotations_when_the_study_says_so(self, make_study, cmu):
        study = self.study(make_study, cmu, extra="annotations: {use: require}\n")
        assert ("missing-annotations", 3) in self.codes(study)  # b.svs has none
        assert ("missing-annotations", 2) not in self.codes(study)

    def it_ignores_them_when_told_to(self, make_study, cmu):
        study = self.study(make_study, cmu, extra="annotations: {use: never}\n")
        assert study.ok and study.summary()["annotated_slides"] == 0

    def it_warns_when_two_files_could_be_the_slides(self, make_study, cmu):
        shutil.copy(cmu.with_suffix(".geojson"), cmu.with_name(cmu.name + ".geojson"))
        study = self.study(make_study, cmu)
        assert ("ambiguous-annotations", 2) in self.codes(study) and study.ok
