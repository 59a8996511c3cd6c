"""Fault injection: kill each long command at random moments, re-run it, and check that the
outputs are byte-identical to an uninterrupted run.

    python bench/faults.py [--kills 3] [--seed 0] [--out /tmp/lncr-faults]

For each command (synth, tile, train, sweep on a small phantom) it runs the command once
uninterrupted and times it; then, in a fresh copy, it starts the command, kills its whole
process group with SIGKILL after a random fraction of that time (``--kills`` times in a row),
re-runs it to the end, and compares every output file that must not depend on timing. A run
that had finished before the kill still counts (the re-run must then redo nothing). Prints one
line per command and exits 1 if any output differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

LNCR = [sys.executable, "-m", "lncr"]
FAST = ["--set", "tiling.tile_size=128", "--set", "magnification.powers=[10, 20]"]
TRAIN = FAST + [f"--set={s}" for s in (
    "training.epochs=3", "training.embedding_dim=16", "training.transformer_heads=2",
    "training.feedforward_dim=32", "training.eval_tiles=8", "training.bag_size=4",
    "training.architecture=resnet18", "training.pretrained=false",
    "training.checkpoint_every=2", "training.loader_workers=0")]
SWEEP = TRAIN + [f"--set={s}" for s in (
    "sweep.architectures=[resnet18]", "sweep.bag_sizes=[2, 4]", "sweep.repeats=1",
    "sweep.stains=[HE]", "sweep.magnifications=[10x]", "sweep.epochs=2")]
#: Columns that record time or place, not results.
VOLATILE = {"seconds", "timings", "started", "host", "pid", "versions", "lncr_version"}


def digest(path: Path, root: Path) -> str:
    """A file's content, with the copy's own folder written as ``<root>`` (records name their
    slides by absolute path); tables and records without their timing columns and keys."""
    def text(raw: str) -> str:
        return raw.replace(str(root), "<root>")

    if path.suffix == ".csv":
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        table = table.drop(columns=[c for c in table.columns if c in VOLATILE])
        return text(table.to_csv())
    if path.suffix == ".json":
        return text(json.dumps(_strip(json.loads(path.read_text())), sort_keys=True))
    if path.suffix == ".zip":
        import zipfile

        with zipfile.ZipFile(path) as zf:
            return "".join(text(zf.read(n).decode()) if n.endswith(".json")
                           else hashlib.sha256(zf.read(n)).hexdigest() for n in zf.namelist())
    if path.suffix == ".pt":
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        model = state.get("model", state)
        return hashlib.sha256(b"".join(t.numpy().tobytes() for t in model.values())).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(x) for k, x in value.items() if k not in VOLATILE}
    return [_strip(x) for x in value] if isinstance(value, list) else value


def outputs(root: Path, copy: Path) -> dict[str, str]:
    skip = ("tb", ".lncr.lock", ".lncr.lock.json", "predictions")
    return {str(p.relative_to(root)): digest(p, copy) for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part in skip for part in p.relative_to(root).parts)
            and not p.name.startswith(".")}


def run(args: list[str], cwd: Path, kill_after: float | None = None) -> bool:
    """Run ``lncr args``; with ``kill_after``, SIGKILL its process group then. True if it
    finished by itself."""
    proc = subprocess.Popen(LNCR + args, cwd=cwd, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        proc.wait(timeout=kill_after)
        if proc.returncode != 0:
            raise SystemExit(f"lncr {' '.join(args)} failed: {proc.stderr.read()[-2000:]}")
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False


def trial(name: str, base: Path, args: list[str], compare: str, kills: int,
          rng: random.Random) -> bool:
    """Uninterrupted vs killed ``kills`` times and resumed: same outputs under ``compare``?"""
    clean, broken = base / f"{name}-clean", base / f"{name}-killed"
    for folder in (clean, broken):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(base / "seed", folder)
    t0 = time.perf_counter()
    run(args, clean)
    full = time.perf_counter() - t0
    killed = []
    for _ in range(kills):
        at = rng.uniform(0.1, 0.9) * full
        killed.append(round(at, 1))
        if run(args, broken, kill_after=at):
            break
    run(args, broken)
    a, b = outputs(clean / compare, clean), outputs(broken / compare, broken)
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    print(f"{name:6s} uninterrupted {full:6.1f} s; killed at {killed} s; "
          f"{len(a)} files compared: " + ("identical" if not differ else
                                          f"{len(differ)} DIFFER, e.g. {differ[:3]}"))
    return not differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/lncr-faults"))
    parser.add_argument("--only", nargs="*", default=["synth", "tile", "train", "sweep"])
    args = parser.parse_args()
    rng = random.Random(args.seed)
    base = args.out
    shutil.rmtree(base, ignore_errors=True)
    (base / "seed").mkdir(parents=True)
    ok = True
    synth = ["synth", "study", "--patients", "6", "--external", "2", "--seed", "5",
             "--workers", "2"]
    if "synth" in args.only:
        ok &= trial("synth", base, synth, "study", args.kills, rng)
    run(synth, base / "seed")
    run(["validate", "study/study.yaml", "--no-files"] + FAST, base / "seed")
    if "tile" in args.only:
        ok &= trial("tile", base, ["tile", "study/study.yaml", "--workers", "2"] + FAST,
                    "study/lncr-output/tiles", args.kills, rng)
    run(["tile", "study/study.yaml", "--workers", "2"] + FAST, base / "seed")
    if "train" in args.only:
        ok &= trial("train", base, ["train", "study/study.yaml", "--stain", "HE",
                                    "--magnification", "10x", "--device", "cpu"] + TRAIN,
                    "study/lncr-output/runs", args.kills, rng)
    if "sweep" in args.only:
        ok &= trial("sweep", base, ["sweep", "study/study.yaml", "--device", "cpu",
                                    "--workers", "2"] + SWEEP,
                    "study/lncr-output/sweep", args.kills, rng)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
