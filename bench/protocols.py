"""Does the frozen-feature selection pick what the published protocol picks, and at what cost?

Runs the same grid twice on a tiled study (by default the demo's, from `make demo`), in one
run on this machine:
  finetune  every unit fine-tunes its backbone end to end (the published protocol)
  frozen    every unit trains on cached features of the frozen backbone
            (``sweep.backbone: frozen``; embedding included in its time)
and prints, per protocol, the selection (architecture per stain and bag size), the mean
validation AUC per bag size and the wall time. Final models are not trained (the question
is the selection).

    python bench/protocols.py demo-output --repeats 2 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def run(study_folder: Path, out: Path, protocol: str, extra: list[str], workers: int) -> dict:
    from lncr.features.study_run import embed_study
    from lncr.pipeline import DemoPipeline
    from lncr.study.validate import Study
    from lncr.sweep.run import Sweep

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(study_folder / "study", out / "study",
                    ignore=shutil.ignore_patterns("sweep", "final", "features", "predictions",
                                                  "evaluation", "explain", "report"))
    demo = DemoPipeline(out, extra=extra + [f"sweep.backbone={protocol}"])
    if protocol == "finetune":
        demo.extra.append("training.backbone_lr_factor=1")
    study = Study.load(demo.study_yaml, demo.overrides())
    t0 = time.perf_counter()
    if protocol == "frozen":
        embed_study(study, device="cpu")
    report = Sweep(study, "local", workers, device="cpu").run(final=False)
    seconds = time.perf_counter() - t0
    by_bag = report.units.groupby("bag_size").val_auc.mean().round(3).to_dict()
    return {"protocol": protocol, "seconds": round(seconds, 1),
            "selection": {"architectures": report.selection["architectures"],
                          "bag_size": report.selection["bag_size"]},
            "mean_val_auc_by_bag": {int(k): v for k, v in by_bag.items()},
            "units": len(report.units)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo_output", type=Path, help="a finished `lncr demo` folder")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("bench-protocols"))
    args = parser.parse_args()
    extra = [f"sweep.repeats={args.repeats}", f"sweep.epochs={args.epochs}",
             "training.augment=false", "embedding.views=1"]
    results = [run(args.demo_output, args.work / p, p, extra, args.workers)
               for p in ("frozen", "finetune")]
    frozen, finetune = results
    print(json.dumps({"results": results,
                      "same_selection": frozen["selection"] == finetune["selection"],
                      "cost_ratio": round(finetune["seconds"] / frozen["seconds"], 1)},
                     indent=2))


if __name__ == "__main__":
    main()
