"""The whole `lncr tile` command against the decode floor, in one run (docs/tiling.md).

Two phantom H&E slides (pyramidal TIFF, 0.25 µm/px: 16384 × 8192 of cortex, or with
``--anatomy biopsy`` one 5-mm needle core on glass each) and the default study settings (10x, 20x, 40x; 512-px tiles; luminosity standardisation, Vahadane
normalisation, the lossless PNG store), tiled by ``lncr tile --workers 1`` in a fresh process
(start-up, reference fitting, QC thumbnails and the index included). The floor, timed in the
same run: OpenSlide ``read_region`` of every grid cell at the matching level for the three
magnifications, plus the > 225 grey rule. The ratio is floor seconds / command seconds (≥ 1:
the command is faster than decoding every cell). Three rounds; the median and range.

    python bench/tile_command.py [--rounds 3] [--keep FOLDER]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tiling import floor_rate

WIDTH, HEIGHT = 16384, 8192


def make_study(root: Path, anatomy: str) -> Path:
    """A phantom H&E study of two patients (a study needs both outcomes), one slide each:
    the band of cortex at 16384 × 8192, or needle biopsies at their true size."""
    study = root / f"study-{anatomy}"
    if not (study / "study.yaml").exists():
        shape = (["--size", f"{WIDTH}x{HEIGHT}"] if anatomy == "band" else
                 ["--anatomy", "biopsy", "--cores", "1", "--core-length", "5-5"])
        subprocess.run([sys.executable, "-m", "lncr", "synth", str(study), "--patients", "2",
                        "--external", "0", "--stains", "HE", *shape], check=True,
                       capture_output=True)
    return study / "study.yaml"


def command_seconds(study_yaml: Path) -> float:
    """Seconds of ``lncr tile`` on the study, from scratch, in a fresh process."""
    out = study_yaml.parent / "lncr-output"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lncr", "tile", str(study_yaml), "--workers", "1"],
                   check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path)
    parser.add_argument("--anatomy", choices=["band", "biopsy"], default="band",
                        help="band: 16384 x 8192 of cortex (much tissue); biopsy: one 5-mm "
                             "needle core on glass per slide")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="lncr-tile-command-"))
    import pandas as pd

    study_yaml = make_study(root, args.anatomy)
    slides = [(study_yaml.parent / p).resolve()
              for p in pd.read_csv(study_yaml.parent / "slides.csv").path]
    n_slides = len(slides)
    ratios, commands, floors = [], [], []
    for _ in range(args.rounds):
        floor = sum(cells / rate for slide in slides for rate, cells in (
            floor_rate(slide, 0.25, target) for target in (1.0, 0.5, 0.25)))
        seconds = command_seconds(study_yaml)
        floors.append(floor)
        commands.append(seconds)
        ratios.append(floor / seconds)
    print(f"{n_slides} {args.anatomy} slide(s): floor {statistics.median(floors):.1f} s "
          f"({min(floors):.1f}-{max(floors):.1f}), lncr tile {statistics.median(commands):.1f} s"
          f" ({min(commands):.1f}-{max(commands):.1f}): ratio {statistics.median(ratios):.2f}x "
          f"({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
