"""The sweep's own overhead beside training, and what successive halving saves.

    python bench/sweep.py                 # ≥ 50 tiny units on the local pool
    python bench/sweep.py --executor ray  # the same on a local Ray instance
    python bench/sweep.py --halving       # full grid vs successive halving: compute, selection

Overhead = wall time − (Σ unit seconds inside the workers) / workers: process start-up,
dispatch, reading results and the bookkeeping files. Reported as a fraction of the wall time,
with the time to re-read the finished sweep (no unit trained again).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from lncr.study.validate import Study

TILES = ["tiling.tile_size=128", "magnification.powers=[10]", "tiling.encoding=jpeg"]
TINY = TILES + ["training.pretrained=false", "training.architecture=resnet18",
                "training.input_size=16", "training.crop_size=64", "training.embedding_dim=8",
                "training.transformer_heads=2", "training.feedforward_dim=8",
                "training.transformer_layers=1", "training.eval_tiles=2",
                "training.loader_workers=0", "training.warmup_epochs=0",
                "sweep.architectures=[resnet18]", "sweep.magnifications=[10x]"]


def phantom(folder: Path) -> Path:
    from lncr.study.validate import load_study, save_study_record
    from lncr.synth.cohort import SynthSettings, synthesize
    from lncr.tiling.run import tile_study

    synthesize(folder, SynthSettings(patients=6, external=2, seed=7, size="small"), workers=2)
    study = folder / "study.yaml"
    save_study_record(load_study(study, TILES))
    tile_study(Study.load(study, TILES), workers=2)
    return study


def fresh(study: Path, name: str) -> Path:
    out = study.parent.parent / name
    shutil.copytree(study.parent, out)
    shutil.rmtree(out / "lncr-output" / "sweep", ignore_errors=True)
    return out / "study.yaml"


def overhead(study: Path, executor: str, workers: int) -> None:
    from lncr.sweep.run import run_sweep

    sets = TINY + ["training.epochs=1", "sweep.bag_sizes=[2, 3, 4]", "sweep.repeats=5"]
    t0 = time.perf_counter()
    arrivals: list[tuple[float, float]] = []  # (time since start, the unit's own seconds)
    report = run_sweep(Study.load(study, sets), executor=executor, workers=workers, device="cpu",
                       final=False, progress=lambda row: arrivals.append(
                           (time.perf_counter() - t0, row["seconds"])))
    wall = time.perf_counter() - t0
    startup = min(t - s for t, s in arrivals)  # before the first unit could start
    units = report.units
    busy = units.seconds.sum() / workers
    t1 = time.perf_counter()
    run_sweep(Study.load(study, sets), executor=executor, workers=workers, device="cpu", final=False)
    again = time.perf_counter() - t1
    print(f"executor {executor}, {workers} workers, {len(units)} units "
          f"({(units.status == 'done').sum()} done)")
    print(f"  wall {wall:.1f} s; units' own time {units.seconds.sum():.1f} s "
          f"(mean {units.seconds.mean():.2f} s); per worker {busy:.1f} s")
    print(f"  executor start {report.timings['executor_start']:.2f} s, bookkeeping "
          f"{report.timings['bookkeeping']:.2f} s")
    print(f"  overhead {wall - busy:.1f} s = {(wall - busy) / wall:.1%} of the wall time "
          f"({(wall - busy) / len(units) * 1000:.0f} ms per unit), of which worker start-up "
          f"(spawn + imports, once) {startup:.1f} s; the rest "
          f"{(wall - busy - startup) / len(units) * 1000:.0f} ms per unit (dispatch, results, "
          "bookkeeping, the last units' imbalance)")
    print(f"  re-reading the finished sweep: {again:.2f} s")


def halving(study: Path, workers: int) -> None:
    from lncr.sweep.run import run_sweep

    sets = TINY + ["training.epochs=9", "sweep.bag_sizes=[2, 3, 4, 5, 6, 8]", "sweep.repeats=2",
                   "sweep.stains=[HE, PAS]", "training.input_size=256", "training.crop_size=384"]
    full = run_sweep(Study.load(fresh(study, "full"), sets), workers=workers, device="cpu",
                     final=False)
    half = run_sweep(Study.load(fresh(study, "half"), sets + ["sweep.early_stopping=halving",
                                                              "sweep.min_epochs=1",
                                                              "sweep.halving_rate=3"]),
                     workers=workers, device="cpu", final=False)
    es = half.selection["early_stopping"]
    print(f"grid {len(full.units)} units × 9 epochs; rungs {es['rungs']}")
    print(f"  full: {full.timings['total']:.0f} s, {full.units.epochs_trained.sum()} epochs; "
          f"halving: {half.timings['total']:.0f} s, {es['epochs_trained']} epochs "
          f"({es['compute_saved']:.0%} of the grid's epochs saved)")
    same = (full.selection["architectures"] == half.selection["architectures"]
            and full.selection["bag_size"] == half.selection["bag_size"])
    print(f"  selection: full {full.selection['architectures']} bag {full.selection['bag_size']}"
          f"; halving {half.selection['architectures']} bag {half.selection['bag_size']} "
          f"→ {'unchanged' if same else 'CHANGED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executor", default="local", choices=["local", "ray"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--halving", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study = phantom(Path(tmp) / "phantom")
        if args.halving:
            halving(study, args.workers)
        else:
            overhead(fresh(study, "sweep"), args.executor, args.workers)


if __name__ == "__main__":
    main()
