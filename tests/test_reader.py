"""Describe probe_slide: the backend order and what it reads from real files."""

from __future__ import annotations

import pytest

from lncr.slides.reader import SlideReadError, probe_slide


class DescribeProbeSlide:
    def it_opens_aperio_svs_with_openslide_and_reads_mpp(self, real_data):
        info = probe_slide(real_data / "CMU-1-Small-Region.svs")
        assert info.backend == "openslide" and info.vendor == "aperio"
        assert info.mpp == pytest.approx(0.499, abs=1e-3)
        assert info.dimensions == (2220, 2967)

    def it_opens_ome_tiff_with_tiffslide(self, real_data):
        info = probe_slide(real_data / "OS-1-detail.ome.tif")
        assert info.backend == "tiffslide"
        assert info.mpp == pytest.approx(0.2271, abs=1e-4)

    def it_reports_no_mpp_when_the_file_has_none(self, real_data):
        info = probe_slide(real_data / "tcga-cr-7395-01a-01-ts1.svs")
        assert info.backend == "openslide" and info.mpp is None
        assert len(info.level_dimensions) == 2

    def it_falls_back_for_an_untiled_tiff(self, real_data):
        info = probe_slide(real_data / "almost-empty-strip.tif")
        assert info.backend == "tiffslide" and info.dimensions == (1493, 901)

    def it_raises_for_a_missing_file(self, tmp_path):
        with pytest.raises(SlideReadError, match="file not found"):
            probe_slide(tmp_path / "nope.svs")

    def it_raises_for_a_file_that_is_not_a_slide(self, tmp_path):
        text = tmp_path / "notes.svs"
        text.write_text("this is not an image\n" * 20)
        with pytest.raises(SlideReadError, match="not a readable slide"):
            probe_slide(text)

    def it_raises_for_a_truncated_slide(self, real_data, tmp_path):
        data = (real_data / "CMU-1-Small-Region.svs").read_bytes()
        cut = tmp_path / "cut.svs"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(SlideReadError):
            probe_slide(cut)
