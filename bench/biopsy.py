"""Render needle biopsies at full size and tile them as published: tiles per slide per
magnification, against the tutorial's area-based estimate.

    python bench/biopsy.py [--patients 2] [--seed 0] [--workers 2] [--out bench/out/biopsy]

`lncr synth --anatomy biopsy` with its true-scale defaults (1–3 cores of 0.8–1.2 × 5–15 mm at
0.25 µm/px, four stains), then `lncr tile` with the published tiling (512-px tiles at 10x, 20x
and 40x, the > 225 grey / 50 % glass rule, luminosity standardisation and the default colour
normalisation; JPEG tiles to spare the disk — the encoding does not change which tiles are
kept). Prints, per magnification, the kept tiles per slide (mean, min, max), the slides that
keep none, and the kept tiles against the tissue's area in tiles (the tutorial's estimate);
the render's seconds and peak memory. Nothing is asserted; figures go to docs/phantom.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import pandas as pd

from lncr.synth.cohort import SynthSettings, synthesize

REPO = Path(__file__).resolve().parents[1]
TILE_UM = {"10x": 512.0, "20x": 256.0, "40x": 128.0}  # a 512-px tile's side at each power


def tile(study: Path, workers: int) -> pd.DataFrame:
    from lncr.layout import Layout
    from lncr.study.validate import Study
    from lncr.tiling.run import tile_study

    loaded = Study.load(study, ["tiling.encoding=jpeg"])
    if not loaded.ok:
        raise SystemExit("\n".join(str(p) for p in loaded.problems.items))
    tile_study(loaded, workers=workers)
    return Layout(study.parent / "lncr-output").read_tiles_index()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "biopsy")
    args = ap.parse_args()
    settings = SynthSettings(patients=args.patients, external=0, seed=args.seed,
                             anatomy="biopsy")
    t0 = time.perf_counter()
    result = synthesize(args.out, settings, workers=args.workers)
    render_s = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    truth = result.truth["patients"]
    t0 = time.perf_counter()
    index = tile(result.study, args.workers)
    tile_s = time.perf_counter() - t0
    index["tissue_mm2"] = index.patient_id.map({p: r["tissue_mm2"] for p, r in truth.items()})
    index["area_tiles"] = index.tissue_mm2 / index.magnification.map(TILE_UM).pow(2) * 1e6
    rows = []
    for mag, part in index.groupby("magnification", sort=False):
        rows.append({"magnification": mag, "slides": len(part),
                     "kept_mean": part.kept.mean(), "kept_min": int(part.kept.min()),
                     "kept_max": int(part.kept.max()), "no_tile": int((part.kept == 0).sum()),
                     "grid_cells_mean": part.grid_cells.mean(),
                     "kept_over_area": part.kept.sum() / part.area_tiles.sum()})
    table = pd.DataFrame(rows)
    slides = len(index) // 3
    mm2 = [r["tissue_mm2"] for r in truth.values()]
    print(f"{args.patients} patients, {slides} slides; cores per slide "
          f"{sorted(r['cores'] for r in truth.values())}; tissue {min(mm2):.1f}–{max(mm2):.1f}"
          f" mm² per slide; canvases up to "
          f"{max(r['canvas_um'][0] for r in truth.values()) / 1000:.1f} mm long")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"render: {render_s:.0f} s ({render_s / slides:.1f} s per slide, {args.workers} "
          f"workers, largest worker {peak_mb:.0f} MB); tiling: {tile_s:.0f} s")
    (args.out / "bench.json").write_text(json.dumps({
        "settings": {"patients": args.patients, "seed": args.seed, "workers": args.workers},
        "tiles": table.to_dict("records"), "render_s": render_s, "tile_s": tile_s,
        "peak_worker_mb": peak_mb, "tissue_mm2": mm2}, indent=1))


if __name__ == "__main__":
    main()
