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
        assert info.backend == "tiff-raw" and info.dimensions == (1493, 901)

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


class DescribeReaders:
    def it_reads_dicom_wsi_with_openslide_and_its_mpp_from_the_dicom(self, real_data):
        info = probe_slide(real_data / "CMU-1-Small-Region.dcm")
        assert info.backend == "openslide" and info.vendor == "dicom"
        assert info.dimensions == (2220, 2967) and info.mpp == pytest.approx(0.499)

    def it_reads_an_uncompressed_tiff_row_by_row_as_tiffslide_does(self, real_data):
        import numpy as np
        import tiffslide

        from lncr.slides.reader import open_slide

        path = real_data / "almost-empty-strip.tif"
        with open_slide(path, mpp=0.25) as slide, tiffslide.TiffSlide(str(path)) as ref:
            assert slide.backend == "tiff-raw"
            for x, y, w, h in ((0, 0, 64, 32), (1400, 850, 200, 100), (-10, -5, 30, 20)):
                ours = slide.read(0, x, y, w, h)
                theirs = np.full((h, w, 3), 255, np.uint8)
                x0, y0 = max(x, 0), max(y, 0)
                part = np.asarray(ref.read_region((x0, y0), 0, (min(1493, x + w) - x0,
                                                                 min(901, y + h) - y0)))[..., :3]
                theirs[y0 - y:y0 - y + part.shape[0], x0 - x:x0 - x + part.shape[1]] = part
                assert np.array_equal(ours, theirs)

    @pytest.mark.parametrize("suffix,extra", [(".kfb", "kfb"), (".isyntax", "isyntax")])
    def it_names_the_extra_to_install_for_a_format_without_its_reader(self, tmp_path,
                                                                      monkeypatch, suffix, extra):
        from lncr.slides.backends import Backend

        monkeypatch.setattr(Backend, "available", lambda self: not self.extra)
        slide = tmp_path / f"biopsy{suffix}"
        slide.write_bytes(b"scanner data")
        with pytest.raises(SlideReadError, match=rf"pip install 'lncr\[{extra}\]'"):
            probe_slide(slide)

    def it_refuses_a_file_that_only_claims_to_be_kfb(self, tmp_path):
        pytest.importorskip("kfbslide", reason="the kfb extra is part of `make test`")
        slide = tmp_path / "biopsy.kfb"
        slide.write_bytes(b"not a KFBIO file" * 64)
        with pytest.raises(SlideReadError, match="kfb:"):
            probe_slide(slide)

    def it_reads_isyntax_regions_in_level_zero_coordinates(self):
        import numpy as np

        from lncr.slides.backends import ISyntaxHandle

        class Fake:  # pyisyntax's interface: regions in the level's own coordinates
            dimensions, level_dimensions = (4000, 2000), ((4000, 2000), (1000, 500))
            level_downsamples, mpp_x, mpp_y = (1.0, 4.0), 0.25, 0.25
            seen: list = []

            def read_region(self, x, y, w, h, level):
                self.seen.append((x, y, w, h, level))
                return np.zeros((h, w, 4), np.uint8)

        handle = ISyntaxHandle(Fake())
        handle.read_region((800, 400), 1, (64, 32))
        assert Fake.seen == [(200, 100, 64, 32, 1)]
        assert handle.properties["isyntax.mpp-x"] == "0.25"


@pytest.mark.slow  # tiles real slides
def it_validates_and_tiles_every_real_format_naming_its_reader(real_data, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from lncr.cli import app

    files = {"P1": "CMU-1-Small-Region.svs", "P2": "CMU-1-Small-Region.dcm",
             "P3": "OS-1-detail.ome.tif", "P4": "almost-empty-strip.tif"}
    (tmp_path / "patients.csv").write_text("patient_id,cohort,label\n" + "".join(
        f"{p},development,{i % 2}\n" for i, p in enumerate(files)))
    (tmp_path / "slides.csv").write_text("patient_id,stain,path,mpp\n" + "".join(
        f"{p},HE,{real_data / f},{'0.25' if f.startswith('almost') else ''}\n"
        for p, f in files.items()))
    (tmp_path / "study.yaml").write_text(
        "patients: patients.csv\nslides: slides.csv\nstains: [HE]\n"
        "magnification: {powers: [10, 20]}\ntiling: {tile_size: 128, normalisation: {HE: none}}\n")
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "study.yaml")])
    assert result.exit_code == 0, result.output
    assert "Readers: openslide 2 slide(s), tiff-raw 1 slide(s), tiffslide 1 slide(s)" in \
        " ".join(result.output.split())
    result = CliRunner().invoke(app, ["tile", str(tmp_path / "study.yaml"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    index = pd.read_csv(tmp_path / "lncr-output" / "tiles" / "index.csv", dtype=str)
    kept = index.assign(kept=index.kept.astype(int)).set_index(
        ["patient_id", "magnification"]).kept
    # the DICOM is the SVS converted: the same tiles at every magnification
    assert kept[("P2", "10x")] == kept[("P1", "10x")] > 0
    assert kept[("P2", "20x")] == kept[("P1", "20x")] > 0
    assert kept[("P3", "20x")] > 0 and kept[("P4", "20x")] == 0  # almost empty: glass


class DescribeReadingInThreads:
    def it_reads_thread_safe_handles_at_once_and_others_one_region_at_a_time(self):
        from lncr.slides.backends import thread_safe

        assert thread_safe("openslide") and thread_safe("tiff-raw")
        assert not any(thread_safe(b) for b in ("tiffslide", "kfb", "isyntax", "pillow"))

    @pytest.mark.parametrize("mode", ["RGBA", "RGB", "L", "P"])
    def it_turns_any_pillow_region_into_the_rgba_array_pillow_gives(self, mode):
        import numpy as np
        from PIL import Image

        from lncr.slides.reader import rgba_array

        pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGBA").convert(mode)
        assert np.array_equal(rgba_array(image), np.asarray(image.convert("RGBA")))

    def it_keeps_freed_tile_buffers_in_the_heap_under_glibc(self):
        import platform

        from lncr.allocator import keep_freed_memory

        assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
