"""Describe lncr synth: a phantom cohort that real readers open, with known, planted truth."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import openslide
import pandas as pd
import pytest
from PIL import Image

from conftest import PHANTOM
from lncr.synth.cohort import SynthError, SynthSettings, parse_size, plan_cohort, synthesize
from lncr.synth.render import MASK_CODES


def files_digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tissue_od(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean optical density (R, G, B) of the pixels a mask marks as tissue."""
    od = -np.log10(np.clip(rgb[..., :3].astype(float), 1, 255) / 255.0)
    return od[mask].mean(axis=0)


def stain_colour(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean OD direction (unit RGB absorbance) of tissue pixels: the stain's hue,
    independent of how much tissue absorbs."""
    od = -np.log10(np.clip(rgb[..., :3].astype(float), 1, 255) / 255.0)[mask]
    return (od / np.linalg.norm(od, axis=1, keepdims=True).clip(1e-6)).mean(axis=0)


class DescribePhantomFiles:
    def it_writes_a_complete_study(self, phantom):
        patients = pd.read_csv(phantom / "patients.csv")
        slides = pd.read_csv(phantom / "slides.csv")
        assert len(patients) == 8 and len(slides) == 32
        assert set(slides.stain) == {"HE", "PAS", "PASM", "MASSON"}
        assert (phantom / "study.yaml").read_text().count("patients: patients.csv") == 1

    def it_opens_every_slide_with_openslide_at_quarter_micron(self, phantom):
        slides = pd.read_csv(phantom / "slides.csv")
        for path in slides.path:
            with openslide.OpenSlide(str(phantom / path)) as s:
                assert s.properties["openslide.vendor"] == "generic-tiff"
                assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
                assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.25)
                assert s.dimensions == (3200, 1920)
                assert s.level_downsamples == (1.0, 2.0, 4.0, 8.0, 16.0)
                assert s.level_dimensions[4] == (200, 120)

    def it_uses_256_pixel_jpeg_tiles(self, phantom):
        import tifffile

        with tifffile.TiffFile(phantom / "slides" / "DEV-001_HE.tiff") as tif:
            for page in tif.pages:
                assert (page.tilewidth, page.tilelength) == (256, 256)
                assert page.compression == tifffile.COMPRESSION.JPEG

    def it_writes_masks_that_align_with_the_slides(self, phantom):
        """The mask's tissue matches the slide's non-glass area (lumens and pale interstitium
        filled in), and far better than the same mask moved by 5 cells (80 µm)."""
        from scipy import ndimage

        truth = json.loads((phantom / "truth.json").read_text())
        ds = truth["generator"]["mask_downsample"]
        for pid in ("DEV-001", "EXT-002"):
            for stain in ("HE", "MASSON"):
                mask = np.asarray(Image.open(phantom / "masks" / f"{pid}_{stain}.png"))
                with openslide.OpenSlide(str(phantom / "slides" / f"{pid}_{stain}.tiff")) as s:
                    assert mask.shape == (s.dimensions[1] // ds, s.dimensions[0] // ds)
                    level = s.get_best_level_for_downsample(4)
                    low = np.asarray(s.read_region((0, 0), level, s.level_dimensions[level]))
                    factor = ds // int(round(s.level_downsamples[level]))
                grey = low[..., :3].mean(axis=2)[factor // 2::factor, factor // 2::factor]
                glass = np.percentile(grey, 99)  # the scanner's empty-glass brightness
                stained = grey[: mask.shape[0], : mask.shape[1]] < glass - 12
                stained = ndimage.binary_fill_holes(ndimage.binary_closing(stained, iterations=2))
                tissue = mask > 0

                def iou(a, b):
                    return (a & b).sum() / (a | b).sum()

                assert iou(stained, tissue) > 0.9, (pid, stain, iou(stained, tissue))
                assert iou(stained, np.roll(tissue, 5, axis=1)) < iou(stained, tissue) - 0.05

    def it_marks_planted_lesions_in_the_masks(self, phantom):
        truth = json.loads((phantom / "truth.json").read_text())
        for pid, rec in truth["patients"].items():
            mask = np.asarray(Image.open(phantom / rec["slides"]["PAS"]["mask"]))
            for lesion, count in rec["lesioned_glomeruli"].items():
                assert (count > 0) == bool((mask == MASK_CODES[lesion]).any()), (pid, lesion)

    def it_writes_thumbnails(self, phantom):
        thumb = Image.open(phantom / "thumbnails" / "DEV-002_PASM.png")
        assert thumb.size == (100, 60) and thumb.mode == "RGB"


class DescribeStains:
    def it_colours_each_stain_differently(self, phantom):
        means, hues = {}, {}
        for stain in ("HE", "PAS", "PASM", "MASSON"):
            rgb = np.asarray(Image.open(phantom / "thumbnails" / f"DEV-001_{stain}.png"))
            mask = np.asarray(Image.open(phantom / "masks" / f"DEV-001_{stain}.png"))[::2, ::2] > 0
            means[stain] = tissue_od(rgb, mask[: rgb.shape[0], : rgb.shape[1]])
            hues[stain] = stain_colour(rgb, mask[: rgb.shape[0], : rgb.shape[1]])
        stains = list(means)
        for i, a in enumerate(stains):
            for b in stains[i + 1:]:
                assert np.linalg.norm(hues[a] - hues[b]) > 0.03, (a, b)
        assert means["MASSON"][0] > means["MASSON"][2]  # blue collagen absorbs red
        assert means["HE"][1] > means["HE"][0]  # pink eosin absorbs green

    def it_shifts_the_external_cohort_measurably(self, phantom):
        """Per stain, the distance between the cohorts' mean stain colours exceeds twice the
        root-mean-square spread of development slides around their mean."""
        truth = json.loads((phantom / "truth.json").read_text())
        for stain in ("HE", "PAS", "PASM", "MASSON"):
            by_cohort = {"development": [], "external": []}
            for rec in truth["patients"].values():
                paths = rec["slides"][stain]
                rgb = np.asarray(Image.open(phantom / paths["thumbnail"]))
                mask = np.asarray(Image.open(phantom / paths["mask"]))[::2, ::2] > 0
                by_cohort[rec["cohort"]].append(stain_colour(rgb, mask[: rgb.shape[0], : rgb.shape[1]]))
            dev, ext = np.array(by_cohort["development"]), np.array(by_cohort["external"])
            within = np.sqrt((np.linalg.norm(dev - dev.mean(axis=0), axis=1) ** 2).mean())
            gap = np.linalg.norm(ext.mean(axis=0) - dev.mean(axis=0))
            assert gap > 2 * within, (stain, gap, within)


class DescribeLabels:
    def it_balances_labels_within_each_cohort(self, phantom):
        patients = pd.read_csv(phantom / "patients.csv")
        for _, group in patients.groupby("cohort"):
            assert abs((group.label == 1).sum() - (group.label == 0).sum()) <= 1

    def it_gives_non_responders_a_higher_lesion_burden(self):
        plans = plan_cohort(SynthSettings(patients=400, external=0, seed=1))
        burden = pd.DataFrame([(p.label, p.burden) for p in plans], columns=["label", "b"])
        means = burden.groupby("label").b.mean()
        assert means[0] - means[1] > 0.35
        # ... yet some responders carry lesions and some non-responders few.
        assert (burden[burden.label == 1].b > 0.5).mean() > 0.02
        assert (burden[burden.label == 0].b < 0.5).mean() > 0.02

    def it_removes_the_link_with_signal_zero(self):
        plans = plan_cohort(SynthSettings(patients=400, external=0, seed=1, signal=0.0))
        burden = pd.DataFrame([(p.label, p.burden) for p in plans], columns=["label", "b"])
        means = burden.groupby("label").b.mean()
        assert abs(means[0] - means[1]) < 0.05

    def it_records_burden_and_labels_in_truth(self, phantom):
        truth = json.loads((phantom / "truth.json").read_text())
        patients = pd.read_csv(phantom / "patients.csv").set_index("patient_id")
        for pid, rec in truth["patients"].items():
            assert rec["label"] == patients.loc[pid, "label"] == rec["label_rendered"]
            assert 0 <= rec["burden"] <= 1
        assert truth["generator"]["seed"] == PHANTOM.seed


TINY = dict(patients=2, external=1, size="1024x640", stains=("HE", "PASM"))


class DescribeReproducibility:
    def it_writes_byte_identical_files_for_the_same_seed(self, tmp_path):
        a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
        synthesize(a, SynthSettings(seed=3, **TINY))
        synthesize(b, SynthSettings(seed=3, **TINY), workers=2)
        synthesize(c, SynthSettings(seed=4, **TINY))
        assert files_digest(a) == files_digest(b)
        assert files_digest(a)["slides/DEV-001_HE.tiff"] != files_digest(c)["slides/DEV-001_HE.tiff"]

    def it_resumes_without_redoing_finished_slides(self, tmp_path):
        out = tmp_path / "p"
        first = synthesize(out, SynthSettings(seed=3, **TINY))
        before = files_digest(out)
        (out / "slides" / "DEV-002_PASM.tiff").unlink()
        (out / "slides" / ".DEV-001_HE.tiff.partial").write_bytes(b"half a file")
        again = synthesize(out, SynthSettings(seed=3, **TINY))
        assert first.rendered == 6 and again.rendered == 1 and again.reused == 5
        after = files_digest(out)
        after.pop("slides/.DEV-001_HE.tiff.partial")
        assert after == before

    def it_refuses_to_mix_settings_in_one_folder(self, tmp_path):
        synthesize(tmp_path / "p", SynthSettings(seed=3, **TINY))
        with pytest.raises(SynthError, match="other settings .*seed"):
            synthesize(tmp_path / "p", SynthSettings(seed=4, **TINY))

    def it_refuses_a_foreign_non_empty_folder(self, tmp_path):
        (tmp_path / "notes.txt").write_text("mine")
        with pytest.raises(SynthError, match="not empty"):
            synthesize(tmp_path, SynthSettings(seed=3, **TINY))


class DescribeOptions:
    def it_permutes_labels_after_rendering(self, tmp_path):
        settings = SynthSettings(patients=12, external=0, seed=2, size="1024x640", stains=("HE",),
                                 permute_labels=True)
        truth = synthesize(tmp_path, settings, workers=2).truth
        recs = truth["patients"].values()
        assert sorted(r["label"] for r in recs) == sorted(r["label_rendered"] for r in recs)
        assert any(r["label"] != r["label_rendered"] for r in recs)

    @pytest.mark.parametrize("size", ["huge", "10x10", "100000x100000"])
    def it_rejects_a_bad_size(self, size):
        with pytest.raises(SynthError, match="--size"):
            parse_size(size)

    def it_accepts_named_and_explicit_sizes(self):
        assert parse_size("demo") == (2600.0, 1040.0)
        assert parse_size("2048x1024") == (512.0, 256.0)

    def it_rejects_an_unknown_stain(self):
        with pytest.raises(SynthError, match="IHC"):
            SynthSettings(stains=("HE", "IHC"))


#: Needle cores of true width, shortened so that a test renders them in seconds.
SHORT_CORES = dict(anatomy="biopsy", cores=(1, 2), core_length_mm=(1.2, 1.8),
                   core_width_mm=(0.8, 1.2), stains=("HE",), external=0)


@pytest.fixture(scope="module")
def biopsies(tmp_path_factory):
    out = tmp_path_factory.mktemp("biopsies")
    synthesize(out, SynthSettings(patients=3, seed=5, **SHORT_CORES), workers=2)
    return out


def core_widths(mask: np.ndarray, ds: int, mpp: float) -> list[float]:
    """The width (µm) of each core of a lesion mask, measured across its middle column."""
    column = mask[:, mask.shape[1] // 2] > 0
    runs, start = [], None
    for i, inside in enumerate(np.append(column, False)):
        if inside and start is None:
            start = i
        elif not inside and start is not None:
            runs.append((i - start) * ds * mpp)
            start = None
    return runs


@pytest.mark.slow  # renders true-size needle cores and tiles them at 512 px
class DescribeBiopsyAnatomy:
    def it_lays_one_or_two_cores_of_true_width_on_glass(self, biopsies):
        truth = json.loads((biopsies / "truth.json").read_text())
        counts = []
        for pid, rec in truth["patients"].items():
            mask = np.asarray(Image.open(biopsies / rec["slides"]["HE"]["mask"]))
            assert (mask[:4] == 0).all() and (mask[-4:] == 0).all()  # glass all round
            assert (mask[:, :4] == 0).all() and (mask[:, -4:] == 0).all()
            widths = core_widths(mask, 16, 0.25)
            assert len(widths) == rec["cores"] and all(700 <= w <= 1300 for w in widths), widths
            counts.append(rec["cores"])
            width_um, height_um = rec["canvas_um"]
            with openslide.OpenSlide(str(biopsies / rec["slides"]["HE"]["slide"])) as s:
                assert s.dimensions == (round(width_um / 0.25), round(height_um / 0.25))
                assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
                assert s.level_count >= 5  # pyramidal
            # each core 1.2–1.8 mm long and about 1 mm wide
            assert 0.8 * rec["cores"] <= rec["tissue_mm2"] <= 2.4 * rec["cores"]
        assert set(counts) <= {1, 2}

    def it_keeps_the_published_tiles_a_needle_core_gives(self, biopsies):
        """512-px tiles: one 10x tile covers half a core's width, so a core keeps few."""
        from conftest import validated_copy
        from lncr.layout import Layout
        from lncr.study.validate import Study
        from lncr.tiling.run import tile_study

        study = validated_copy(biopsies, biopsies.parent / "tiled")
        tile_study(Study.load(study, ["tiling.encoding=jpeg", "tiling.normalisation={}",
                                      "tiling.default_normalisation=none"]), workers=2)
        index = Layout(study.parent / "lncr-output").read_tiles_index().set_index(
            ["patient_id", "magnification"])
        truth = json.loads((biopsies / "truth.json").read_text())["patients"]
        for pid, rec in truth.items():
            kept = {m: int(index.loc[(pid, m), "kept"]) for m in ("10x", "20x", "40x")}
            assert kept["10x"] < kept["20x"] < kept["40x"]
            full = rec["tissue_mm2"] / 0.512 ** 2  # 10x tiles the tissue would fill
            assert kept["10x"] <= 1.5 * full + 1
            assert kept["40x"] == pytest.approx(rec["tissue_mm2"] / 0.128 ** 2, rel=0.35)


class DescribeBiopsySettings:
    def it_refuses_cores_out_of_range(self):
        with pytest.raises(SynthError, match="core width"):
            SynthSettings(anatomy="biopsy", core_width_mm=(2.0, 1.0))
        with pytest.raises(SynthError, match="--anatomy"):
            SynthSettings(anatomy="organ")


class DescribeMissingStains:
    def it_leaves_some_patients_without_some_stains_and_lists_only_what_exists(self, tmp_path):
        settings = SynthSettings(patients=6, external=2, seed=1, size="1024x640",
                                 stains=("HE", "PAS", "MASSON"), missing_stains=0.4)
        truth = synthesize(tmp_path, settings, workers=2).truth["patients"]
        slides = pd.read_csv(tmp_path / "slides.csv")
        listed = slides.groupby("patient_id").stain.apply(set).to_dict()
        missing = {pid: set(rec["missing_stains"]) for pid, rec in truth.items()}
        assert any(missing.values()) and all(listed[p] for p in truth)  # one stain at least
        for pid, rec in truth.items():
            assert listed[pid] | missing[pid] == {"HE", "PAS", "MASSON"}
            assert set(rec["slides"]) == listed[pid]
        on_disk = {p.name for p in (tmp_path / "slides").glob("*.tiff")}
        assert on_disk == {f"{r.patient_id}_{r.stain}.tiff" for r in slides.itertuples()}
        assert [p.stains for p in plan_cohort(settings)] == [
            tuple(s for s in ("HE", "PAS", "MASSON") if s in listed[pid]) for pid in
            sorted(truth, key=lambda p: (p.startswith("EXT"), p))]


class DescribeSynthOptions:
    def it_takes_ranges_for_the_cores_and_refuses_a_reversed_one(self):
        from lncr.synth.cohort import parse_range

        assert parse_range("5-15", "--core-length") == (5.0, 15.0)
        assert parse_range("2", "--cores") == (2.0, 2.0)
        with pytest.raises(SynthError, match="--core-width '1.2-0.8'"):
            parse_range("1.2-0.8", "--core-width")

    def it_writes_a_biopsy_study_from_the_command_line(self, tmp_path):
        from typer.testing import CliRunner

        from lncr.cli import app

        result = CliRunner().invoke(app, [
            "synth", str(tmp_path / "b"), "--anatomy", "biopsy", "--cores", "1",
            "--core-length", "0.6-0.8", "--patients", "2", "--external", "0", "--stains", "HE",
            "--workers", "1"])
        assert result.exit_code == 0, result.output
        record = json.loads((tmp_path / "b" / "synth.json").read_text())
        assert record["anatomy"] == "biopsy" and record["cores"] == [1, 1]
        bad = CliRunner().invoke(app, ["synth", str(tmp_path / "c"), "--core-length", "x"])
        assert bad.exit_code == 2 and "--core-length 'x'" in bad.output


class DescribeRendering:
    def it_paints_a_wide_strip_in_pieces_with_the_same_pixels(self):
        from lncr.synth.cohort import patient_geometry
        from lncr.synth.geometry import section_of
        from lncr.synth.render import render_section
        from lncr.synth.stains import DEVELOPMENT_STYLE, compartment_od

        settings = SynthSettings(patients=2, external=0, seed=2, size="small")
        geometry = patient_geometry(settings, plan_cohort(settings)[0])
        rng = np.random.default_rng(0)
        section, od = section_of(geometry, rng), compartment_od("PAS", DEVELOPMENT_STYLE, rng)
        whole = render_section(section, od, 240.0, 0.25)
        pieces = render_section(section, od, 240.0, 0.25, chunk=512)  # 3200 px: 7 pieces
        assert np.array_equal(whole.rgb, pieces.rgb)
        assert np.array_equal(whole.labels, pieces.labels)

    def it_writes_the_same_pyramid_from_strips_without_holding_level_0(self, tmp_path):
        from lncr.synth.pyramid import write_pyramid, write_pyramid_strips

        image = np.random.default_rng(1).integers(0, 256, (1100, 700, 3), dtype=np.uint8)
        whole = write_pyramid(tmp_path / "whole.tiff", image, 0.25, 85)
        strips = (image[y:y + 512] for y in range(0, 1100, 512))
        levels = write_pyramid_strips(tmp_path / "strips.tiff", strips, (1100, 700), 0.25, 85)
        assert (tmp_path / "whole.tiff").read_bytes() == (tmp_path / "strips.tiff").read_bytes()
        assert levels[0] is None and len(levels) == len(whole)
        assert all(np.array_equal(a, b) for a, b in zip(levels[1:], whole[1:]))
