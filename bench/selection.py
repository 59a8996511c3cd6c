"""Which validation protocol chooses well on a small cohort? How often each picks the
configuration with the best external AUC, and how far the chosen one falls short of it.

    python bench/selection.py [--seeds 0 1 2 3 4] [--patients 32] [--external 16]
                              [--signal 1.0] [--epochs 30] [--workers 2]
                              [--work bench/out/selection]

Per seed, a phantom of the demo's shape (32 development + 16 external patients, H&E and PAS)
is rendered, tiled, and embedded once with the demo's frozen EfficientNet-Lite0; the grid is
the demo's (bag sizes 8/16/32/64 on cached features, 30 epochs, selection at 10x). Then:

- the truth: every bag size trained on all development patients (three seeds), its
  multi-stain (max over stains) external AUC, averaged over the seeds — the configuration a
  perfect selection would pick;
- each protocol's choice, at the same number of trainings (5 per configuration and stain):
  ``split`` (the published protocol: one validation split, 5 repeats on it), ``resplit`` (5
  repeats, each on its own split: the demo's), ``kfold`` (5 stratified folds, the pooled
  out-of-fold AUC).

Prints per seed and protocol the chosen bag size and its external AUC beside the best, then
per protocol how often it chose the best and its mean shortfall ("regret"). Nothing is
asserted: the figures go to docs/sweep.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = {
    "split": ["sweep.validation=split", "sweep.resplit=false", "sweep.repeats=5"],
    "resplit": ["sweep.validation=split", "sweep.resplit=true", "sweep.repeats=5"],
    "kfold": ["sweep.validation=kfold", "sweep.folds=5", "sweep.repeats=1",
              "sweep.resplit=false"],
}
STAINS = ("HE", "PAS")
MAG = "10x"
TRUTH_SEEDS = (100, 101, 102)


def prepare(work: Path, seed: int, args) -> object:
    """The seed's phantom, validated, tiled and embedded (reused when already there)."""
    from lncr.features.study_run import embed_study
    from lncr.pipeline import DemoPipeline
    from lncr.synth.cohort import SynthSettings, synthesize

    demo = DemoPipeline(work / f"seed{seed}", workers=args.workers, epochs=args.epochs,
                        extra=["sweep.stains=[HE, PAS]"])
    synthesize(demo.out / "study", SynthSettings(
        patients=args.patients, external=args.external, seed=seed, size="small",
        signal=args.signal, stains=STAINS), workers=args.workers)
    demo.validate()
    demo.tile()
    embed_study(demo.study(), device="cpu")
    return demo


def truth(demo, workers: int) -> dict[int, float]:
    """Per bag size, the mean over :data:`TRUTH_SEEDS` of the multi-stain external AUC of
    models trained on every development patient."""
    from lncr.sweep.executors import make_executor
    from lncr.sweep.grid import ALL_DEVELOPMENT, Unit
    from lncr.sweep.unit import UnitTask
    from lncr.training.metrics import auc
    from lncr.training.predict import predict_run

    study, cfg = demo.study(), demo.study().config
    arch = cfg.sweep.architectures[0]
    root = demo.out / "truth-runs"
    units = [Unit.of(stain, MAG, arch, bag, 0, seed, ALL_DEVELOPMENT)
             for bag in cfg.sweep.bag_sizes for seed in TRUTH_SEEDS for stain in STAINS]
    tasks = [UnitTask(u, study, str(root), cfg.training.epochs, cfg.training.epochs, "cpu", 1,
                      cfg.backbone_weights(arch), True) for u in units]
    executor = make_executor("local", workers, 1, 1.0, None, "cpu", 0)
    try:
        rows = list(executor.map(tasks))
    finally:
        executor.close()
    failed = [r["error"] for r in rows if r["status"] != "done"]
    if failed:
        raise SystemExit(f"truth runs failed: {failed[:2]}")
    scores: dict[int, list[float]] = {}
    for bag in cfg.sweep.bag_sizes:
        for seed in TRUTH_SEEDS:
            per_stain = [predict_run(Unit.of(s, MAG, arch, bag, 0, seed, ALL_DEVELOPMENT)
                                     .spec.folder(root), "external", "last", "all",
                                     study=study, device="cpu").set_index("patient_id")
                         for s in STAINS]
            both = pd.concat([p.probability for p in per_stain], axis=1).max(axis=1)
            labels = per_stain[0].label.reindex(both.index)
            scores.setdefault(int(bag), []).append(auc(labels.to_numpy(int), both.to_numpy()))
    return {bag: float(np.mean(v)) for bag, v in scores.items()}


def choose(demo, protocol: str, workers: int) -> tuple[int, float]:
    """The bag size ``protocol`` selects (``lncr sweep --no-final``) and the time it took."""
    from lncr.study.validate import Study
    from lncr.sweep.run import Sweep

    out = demo.out / "study" / "lncr-output"
    for stale in ("sweep", "final"):
        shutil.rmtree(out / stale, ignore_errors=True)
    study = Study.load(demo.study_yaml, demo.overrides() + PROTOCOLS[protocol])
    t0 = time.perf_counter()
    report = Sweep(study, "local", workers, device="cpu").run(final=False)
    return int(report.selection["bag_size"]), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--patients", type=int, default=32)
    ap.add_argument("--external", type=int, default=16)
    ap.add_argument("--signal", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS))
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "selection")
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        demo = prepare(args.work, seed, args)
        best = truth(demo, args.workers)
        top = max(best.values())
        for protocol in args.protocols:
            bag, seconds = choose(demo, protocol, args.workers)
            rows.append({"seed": seed, "protocol": protocol, "chosen_bag": bag,
                         "chosen_external_auc": best[bag], "best_external_auc": top,
                         "picked_best": bool(best[bag] >= top - 1e-9),
                         "regret": top - best[bag], "seconds": round(seconds, 1),
                         "external_auc_by_bag": best})
            print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby("protocol", sort=False).agg(
        seeds=("seed", "size"), picked_best=("picked_best", "sum"),
        mean_regret=("regret", "mean"), max_regret=("regret", "max"),
        seconds=("seconds", "mean"))
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "results.json").write_text(json.dumps(
        {"rows": rows, "summary": summary.reset_index().to_dict("records"),
         "settings": vars(args) | {"work": str(args.work)}}, indent=1))


if __name__ == "__main__":
    main()
