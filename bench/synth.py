"""Benchmark the phantom generator (``lncr synth``): seconds per slide, megapixels per second,
the speed-up of 2 worker processes over 1 (a ratio measured in this run), peak memory, and the
projected time of the demo cohort.

    python bench/synth.py [--patients 4] [--size demo]

Prints a table; nothing is asserted (targets live in the docs, not in timed tests).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from lncr.synth.cohort import SynthSettings, parse_size, synthesize


def run(out: Path, settings: SynthSettings, workers: int) -> float:
    t0 = time.perf_counter()
    synthesize(out, settings, workers=workers)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=4, help="development patients per run")
    ap.add_argument("--size", default="demo")
    ap.add_argument("--demo-patients", type=int, default=24, help="patients of the demo cohort")
    args = ap.parse_args()
    settings = SynthSettings(patients=args.patients, external=0, seed=11, size=args.size)
    w_um, h_um = parse_size(args.size)
    mpx = w_um / settings.mpp * h_um / settings.mpp / 1e6
    slides = args.patients * len(settings.stains)
    with tempfile.TemporaryDirectory() as tmp:
        one = run(Path(tmp) / "w1", settings, workers=1)
        two = run(Path(tmp) / "w2", settings, workers=2)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"phantom size {args.size}: {mpx:.1f} Mpx per slide, {slides} slides per run")
    print(f"{'workers':>8} {'s/slide':>9} {'Mpx/s':>8}")
    for workers, sec in ((1, one), (2, two)):
        print(f"{workers:>8} {sec / slides:>9.2f} {slides * mpx / sec:>8.1f}")
    print(f"speed-up of 2 workers over 1: {one / two:.2f}x")
    print(f"peak RSS: main process {peak_mb:.0f} MB, largest worker {child_mb:.0f} MB")
    demo_slides = args.demo_patients * len(settings.stains)
    print(f"projected demo cohort ({args.demo_patients} patients, 2 workers): "
          f"{demo_slides * two / slides:.0f} s")


if __name__ == "__main__":
    main()
