"""Start-up of the commands that build no model: wall time, peak memory and what they import.

Runs, on a small phantom study (2 + 1 patients, tiled at 10x in 128-px tiles), each of
``lncr validate --no-files``, ``lncr tile`` (every store reused), ``lncr tiles export``,
``lncr evaluate`` and ``lncr report`` three times as a fresh process, and prints the median
wall time, the peak resident memory and — from ``python -X importtime`` — whether PyTorch,
torchvision or timm was imported and the cumulative import time of the slowest top-level
modules.

    python bench/startup.py [--keep FOLDER]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMALL = ["--set", "tiling.tile_size=128", "--set", "magnification.powers=[10]"]


def lncr(*args: str, importtime: bool = False) -> tuple[float, int, str]:
    """(seconds, peak RSS of that process in MB, stderr) of one ``lncr`` process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, *(["-X", "importtime"] if importtime else []),
                                  "-m", "lncr", *args], stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak memory
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"lncr {' '.join(args)} failed:\n{stdout}\n{stderr}")
    return seconds, usage.ru_maxrss // 1024, stderr


def heavy_imports(stderr: str, top: int = 3) -> tuple[list[str], list[str]]:
    """(the model libraries imported, the slowest top-level imports with their ms)."""
    rows = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(1)), len(m.group(2)), m.group(3)))
    libraries = sorted({name for _, _, name in rows if name in ("torch", "torchvision",
                                                                 "timm")})
    slow = sorted((r for r in rows if r[1] == 0), reverse=True)[:top]
    return libraries, [f"{name} {us / 1000:.0f} ms" for us, _, name in slow]


def fake_predictions(folder: Path) -> None:
    """Prediction tables for the study's patients (random probabilities): what `lncr
    evaluate` reads, so that it runs to the end."""
    import numpy as np
    import pandas as pd

    patients = pd.read_csv(folder / "patients.csv", dtype=str)
    rng = np.random.default_rng(0)
    rows = patients.assign(split=np.where(patients.cohort == "external", "external", "val"),
                           label=patients.label.astype(int),
                           probability=rng.random(len(patients)))
    cols = ["patient_id", "cohort", "split", "label", "probability"]
    out = folder / "lncr-output" / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    rows[cols].assign(stain="HE", magnification="10x").to_csv(out / "single_models.csv",
                                                              index=False)
    rows[cols].assign(stain="HE").to_csv(out / "stain_ensembles.csv", index=False)
    rows[cols].to_csv(out / "multi_stain.csv", index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Write the study here and keep it.")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="lncr-startup-"))
    study = folder / "study" / "study.yaml"
    if not study.exists():
        lncr("synth", str(study.parent), "--patients", "2", "--external", "1")
    lncr("tile", str(study), *SMALL)
    fake_predictions(study.parent)
    commands = {"validate --no-files": ["validate", str(study), "--no-files"],
                "tile (all reused)": ["tile", str(study), *SMALL],
                "tiles export": ["tiles", "export", str(study), str(folder / "export"), *SMALL],
                # 100 bootstrap resamples and no figures: the command's start, not its work
                "evaluate": ["evaluate", str(study), "--no-figures", "--set",
                             "evaluation.bootstrap_resamples=100"],
                "report": ["report", str(study)]}
    print(f"{'command':22} {'median s':>9} {'peak MB':>8}  model libraries  slowest imports")
    for name, argv in commands.items():
        runs = [lncr(*argv) for _ in range(3)]
        _, _, stderr = lncr(*argv, importtime=True)
        libraries, slow = heavy_imports(stderr)
        print(f"{name:22} {statistics.median(r[0] for r in runs):9.2f} "
              f"{max(r[1] for r in runs):8d}  {', '.join(libraries) or 'none':15}  "
              f"{'; '.join(slow)}")


if __name__ == "__main__":
    main()
