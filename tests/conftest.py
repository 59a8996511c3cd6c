"""Shared fixtures: the small phantom cohort (made once per test run), the real slides of
``tests/data/slides`` (with a generated almost-empty strip TIFF beside them) and a factory for
tiny studies with chosen rows."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from lncr.study.validate import Study
from lncr.synth.cohort import SynthSettings, synthesize
from lncr.synth.pyramid import write_pyramid

REPO = Path(__file__).resolve().parents[1]

def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, one torch thread per worker: two workers each running two OpenMP
    threads on a 2-core machine spin against each other and run slower than one each."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


#: The phantom most tests share: 6 development + 2 external patients × 4 stains, small size.
PHANTOM = SynthSettings(patients=6, external=2, seed=7, size="small")


def _shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary folder shared by all xdist workers of this run (and only this run)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the shared phantom study (do not modify it; copy it first)."""
    root = _shared_tmp(tmp_path_factory)
    out = root / "phantom-small"
    with FileLock(str(root / "phantom.lock")):
        if not (out / "truth.json").exists():
            synthesize(out, PHANTOM, workers=2)
    return out


#: Small tiles and two magnifications keep tiling the phantom to seconds.
FAST = ["tiling.tile_size=128", "magnification.powers=[10, 20]"]


@pytest.fixture(scope="session")
def tiled(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared phantom, tiled once with :data:`FAST` (do not modify; copy first)."""
    import shutil

    from lncr.tiling.run import tile_study

    root = _shared_tmp(tmp_path_factory)
    out = root / "phantom-tiled"
    with FileLock(str(root / "phantom-tiled.lock")):
        if not (out / "lncr-output" / "tiles" / "index.csv").exists():
            shutil.copytree(phantom, out, dirs_exist_ok=True)
            tile_study(Study.load(out / "study.yaml", FAST), workers=2)
    return out


def validated_copy(tiled: Path, folder: Path) -> Path:
    """A copy of the tiled phantom in ``folder``, validated (its split recorded); the study
    file's path."""
    import shutil

    from typer.testing import CliRunner

    from lncr.cli import app

    shutil.copytree(tiled, folder)
    result = CliRunner().invoke(app, ["validate", str(folder / "study.yaml"), "--no-files"])
    assert result.exit_code == 0, result.output
    return folder / "study.yaml"


def tiled_entries(tiled: Path, stain: str, magnification: str) -> list:
    """Slides of the tiled phantom for one stain × magnification, with a seeded split that
    leaves both labels on both sides."""
    import pandas as pd

    from lncr.data.bags import slide_entries
    from lncr.layout import Layout
    from lncr.study.split import stratified_split

    patients = pd.read_csv(tiled / "patients.csv", dtype={"patient_id": str})
    patients["split"] = ""
    split = stratified_split(patients, 0.34, seed=0)
    return slide_entries(Layout(tiled / "lncr-output"), patients, split, stain, magnification)


#: The third-party slides shipped with the tests (sources and licences in its README.md).
SLIDES = REPO / "tests" / "data" / "slides"
#: The name of the generated almost-empty, non-tiled RGB TIFF in :func:`real_data`.
ALMOST_EMPTY = "almost-empty-strip.tif"


def write_almost_empty_tiff(path: Path) -> Path:
    """A 1493 × 901 RGB TIFF in one uncompressed strip (not tiled, no resolution tags), glass
    everywhere but a small stained fragment (≈ 0.3 % of the pixels): OpenSlide cannot open it
    (untiled), tiffslide reads it as one level, and no tile keeps tissue."""
    import tifffile

    rng = np.random.default_rng(48)
    image = (238 + rng.integers(-6, 7, (901, 1493, 3))).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:901, :1493]
    fragment = ((yy - 610) / 16.0) ** 2 + ((xx - 380) / 42.0) ** 2 <= 1.0
    image[fragment] = (150, 90, 140)
    tifffile.imwrite(path, image, photometric="rgb", rowsperstrip=901, compression=None)
    return path


@pytest.fixture(scope="session")
def real_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real slides of ``tests/data/slides`` (linked) and :data:`ALMOST_EMPTY` in one
    folder of this test run."""
    folder = tmp_path_factory.mktemp("real-data")
    for slide in sorted(SLIDES.iterdir()):
        if slide.suffix != ".md":
            (folder / slide.name).symlink_to(slide)
    write_almost_empty_tiff(folder / ALMOST_EMPTY)
    return folder


@pytest.fixture(scope="session")
def tiny_slide_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Write a small pyramidal TIFF (0.25 µm/px) under a given name and return its path."""
    folder = tmp_path_factory.mktemp("tiny-slides")
    rng = np.random.default_rng(0)
    base = (200 + rng.integers(0, 40, (600, 800, 3))).astype(np.uint8)

    def make(name: str) -> Path:
        path = folder / name
        if not path.exists():
            write_pyramid(path, base, 0.25, 90)
        return path

    return make


PATIENTS_OK = [
    ("P1", "development", "1"), ("P2", "development", "0"), ("P3", "development", "1"),
    ("P4", "development", "0"), ("E1", "external", "1"), ("E2", "external", "0"),
]


@pytest.fixture
def make_study(tmp_path: Path, tiny_slide_factory) -> Callable[..., Path]:
    """Write study.yaml, patients.csv and slides.csv with the given rows; slides are tiny
    real TIFFs unless a row's path says otherwise. Returns the YAML path."""

    def make(patients: list[tuple] | None = None, slides: list[tuple] | None = None,
             patient_header: str = "patient_id,cohort,label",
             slide_header: str = "patient_id,stain,path", yaml_extra: str = "",
             stains: tuple[str, ...] = ("HE", "PAS")) -> Path:
        patients = PATIENTS_OK if patients is None else patients
        if slides is None:
            ids = list(dict.fromkeys(row[0] for row in patients))  # unique, in order
            slides = [(pid, stain, str(tiny_slide_factory(f"{pid}_{stain}.tiff")))
                      for pid in ids for stain in stains]
        (tmp_path / "patients.csv").write_text(
            patient_header + "\n" + "".join(",".join(r) + "\n" for r in patients))
        (tmp_path / "slides.csv").write_text(
            slide_header + "\n" + "".join(",".join(r) + "\n" for r in slides))
        study = tmp_path / "study.yaml"
        study.write_text("patients: patients.csv\nslides: slides.csv\n"
                         f"stains: [{', '.join(stains)}]\n" + yaml_extra)
        return study

    return make


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def browser_page(html: Path, width: int = 1280) -> Iterator[tuple[object, list[str]]]:
    """An HTML file open in headless Chromium (Playwright): (page, console and page errors
    so far). `make test` installs Chromium (`make browser`)."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "no chromium on PATH: `make test` installs it (apt-get install chromium)"
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        try:
            yield page, errors
        finally:
            browser.close()
