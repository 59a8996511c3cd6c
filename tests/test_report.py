"""`lncr report`: a self-contained HTML report, checked in a real browser (headless Chromium
through Playwright), and sections that say what is missing instead of failing."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import FAST, browser_page, validated_copy
from lncr.cli import app


@pytest.fixture(scope="module")
def tiled_report(tiled, tmp_path_factory):
    """A report of a study that is validated and tiled, nothing more."""
    study = validated_copy(tiled, tmp_path_factory.mktemp("report") / "study")
    out = study.parent / "report.html"
    result = CliRunner().invoke(app, ["report", str(study), "--out", str(out)]
                                + [a for s in FAST for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    return out


class DescribeReportFile:
    def it_is_self_contained(self, tiled_report):
        page = tiled_report.read_text()
        sources = re.findall(r'(?:src|href)="([^"#][^"]*)"', page)
        assert sources and all(s.startswith("data:image/") for s in sources)
        assert "http://" not in page and "https://" not in page

    def it_reports_the_study_and_tiling_and_says_what_has_not_run(self, tiled_report):
        page = tiled_report.read_text()
        for anchor in ("study", "tiling", "sweep", "final", "results", "explain", "methods"):
            assert f'<section id="{anchor}">' in page
        assert "Patients by cohort and outcome" in page and "QC thumbnails" in page
        assert "before | after" in page  # normalisation examples
        assert "Not available yet: the sweep" in page
        assert "lncr explain gradcam" in page  # the command to run
        assert "Tiling</h3><p>Slides were read with OpenSlide" in page  # methods from run.json


@pytest.mark.slow  # a browser
class DescribeReportInABrowser:
    def it_renders_every_section_and_image_without_errors(self, tiled_report, tmp_path):
        with browser_page(tiled_report) as (page, errors):
            images = page.evaluate("Array.from(document.images).map(i => "
                                   "[i.complete, i.naturalWidth, i.naturalHeight])")
            for anchor in ("study", "tiling", "methods"):
                assert page.locator(f"#{anchor}").is_visible()
            page.locator("#tiling table.sortable th").nth(4).click()  # sort by tiles
            first = page.locator("#tiling table.sortable tbody tr td").nth(4).inner_text()
            page.locator("img.zoom").first.click()
            zoomed = page.locator("#lightbox img").is_visible()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        assert not errors
        assert len(images) >= 5 and all(c and w > 0 and h > 0 for c, w, h in images)
        assert zoomed and first.strip().isdigit()
        import numpy as np
        from PIL import Image

        with Image.open(shot) as im:
            assert im.size[0] == 1280 and im.size[1] > 2000  # the whole page, not a blank
            assert len(np.unique(np.asarray(im.convert("L").resize((64, 64))))) > 20


def test_the_phantoms_pointing_games_are_shown_only_when_played(tmp_path):
    from lncr.report.sections import explain_section

    assert "Pointing games" not in explain_section(tmp_path)
    (tmp_path / "explain" / "pointing").mkdir(parents=True)
    pd.DataFrame([{"explanation": "gradcam", "game": "peak_vs_random_tiles", "target": "lesion",
                   "stain": "PAS", "magnification": "20x", "val_auc": 0.94, "n": 192,
                   "hit_rate": 0.55, "random_baseline": 0.24, "ratio": 2.3, "p_value": 1e-19,
                   "flat_maps": 101}]).to_csv(tmp_path / "explain" / "pointing" / "pointing.csv",
                                              index=False)
    html = explain_section(tmp_path)
    assert "Pointing games on the phantom" in html and "peak_vs_random_tiles" in html
    assert "<td>0.55</td>" in html and "<td>0.24</td>" in html


def test_an_incomplete_sweep_is_shown_as_such(tmp_path):
    import json

    from lncr.report.sections import sweep_section

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    pd.DataFrame([{"stain": "HE", "magnification": "10x", "architecture": "resnet50",
                   "bag_size": 8, "units": 1, "done": 1, "failed": 0, "mean_val_auc": 0.7,
                   "sd_val_auc": None, "mean_val_loss": 0.6}]).to_csv(sweep / "summary.csv",
                                                                       index=False)
    line = "every unit of architecture vgg11 failed: the selection ranked the others only"
    selection = {"status": "incomplete", "failure_lines": [line], "rule": "r",
                 "architectures": {"HE": "resnet50"}, "bag_size": 8}
    (sweep / "selection.json").write_text(json.dumps(selection))
    html = sweep_section(tmp_path)
    assert "The sweep is incomplete" in html and line in html
    (sweep / "selection.json").write_text(json.dumps({**selection, "failure_lines": []}))
    assert "incomplete" not in sweep_section(tmp_path)
    (sweep / "selection.json").write_text(json.dumps({"status": "failed",
                                                      "failure_lines": ["every unit of HE 10x "
                                                                        "failed"]}))
    assert "every unit of HE 10x failed" in sweep_section(tmp_path)
