"""How long does scoring one new patient take? ``lncr apply`` on one external patient of a
finished demo (4 stains × the demo's magnifications), split into its stages: opening and
verifying the bundle and writing the scoring study, the slide checks, tiling, inference (every
final model and the ensembles), the explanations (heatmaps and influential tiles) and the
report. Measured in one run on this machine; the bundle is exported first if needed.

    python bench/apply.py demo-output [--device cuda] [--repeats 2]

Each repeat scores into a fresh folder (nothing reused); the figures are the medians.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import pandas as pd


def one_patient(demo: Path) -> pd.DataFrame:
    """The slides of the external patient with the most stains (first by identifier)."""
    folder = demo / "study"
    patients = pd.read_csv(folder / "patients.csv", dtype=str)
    slides = pd.read_csv(folder / "slides.csv", dtype=str)
    ext = slides[slides.patient_id.isin(patients[patients.cohort == "external"].patient_id)]
    counts = ext.groupby("patient_id").stain.nunique()
    pid = sorted(counts[counts == counts.max()].index)[0]
    mine = ext[ext.patient_id == pid].copy()
    mine["path"] = [str((folder / p).resolve()) for p in mine.path]
    return mine


def timed_apply(bundle: Path, slides: pd.DataFrame, out: Path, device: str,
                heatmaps: bool) -> dict[str, float]:
    from lncr.bundle.apply import Steps, apply_bundle

    marks: list[tuple[str, float]] = []
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    apply_bundle(bundle, slides, out, device=device, workers=1, heatmaps=heatmaps,
                 steps=Steps(stage=lambda name: marks.append((name, time.perf_counter()))))
    marks.append(("end", time.perf_counter()))
    stages = {name: marks[i + 1][1] - at for i, (name, at) in enumerate(marks[:-1])}
    stages["total"] = marks[-1][1] - t0
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_output", type=Path, help="a finished `lncr demo` folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("bench-apply"))
    args = parser.parse_args()
    from lncr.bundle.export import export_bundle
    from lncr.pipeline import DemoPipeline
    from lncr.study.validate import Study

    bundle = args.demo_output / "bundle.lncr"
    if not bundle.exists():
        demo = DemoPipeline(args.demo_output)
        export_bundle(Study.load(demo.study_yaml, demo.overrides()), bundle)
    slides = one_patient(args.demo_output)
    print(f"patient {slides.patient_id.iloc[0]}: {len(slides)} slides "
          f"({', '.join(slides.stain)}), bundle {bundle.stat().st_size / 1e6:.1f} MB, "
          f"device {args.device}")
    for heatmaps in (True, False):
        runs = [timed_apply(bundle, slides, args.work / f"run{i}", args.device, heatmaps)
                for i in range(args.repeats)]
        median = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
        print(json.dumps({"heatmaps": heatmaps, "seconds": median}))


if __name__ == "__main__":
    main()
