"""Training the frozen grid one unit at a time against stacked groups, side by side.

    python bench/stacked.py demo [--study demo-output/study]   # the demo's sweep stage
    python bench/stacked.py head [--group 40] [--steps 30]       # the published head

``demo``: the demo's own grid (80 units × 30 epochs on its cached features: 4 stains × 4 bag
sizes × 5 repeats with re-drawn splits), swept twice from the same finished demo — with
``sweep.group_size=1`` (one unit at a time, as before groups) and ``0`` (automatic groups) —
on the same workers, reporting each sweep stage's wall time, the ratio, and whether the two
chose the same configuration with the same figures for every unit. Run ``make demo`` first.

``head``: the published bag model (512-d, 8 heads, feed-forward 2,048, 2 layers, dropout
0.1) on cached 2,048-d features (ResNet-50's), bags of 32 tiles, SGD with momentum as
published: optimiser steps per second of one unit at a time (``nn.Module`` forward, backward,
step) against a stacked group of ``--group`` units (:mod:`lncr.training.stacked_head`), in
unit-steps per second, one run, same threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

RESULTS = ("val_auc", "val_loss", "train_loss", "best_val_auc", "epochs_trained")


def copy_demo(study: Path, target: Path) -> Path:
    """The demo study without its sweep and later stages: slides and stores hard-linked."""
    skip = {"sweep", "final", "predictions", "evaluation", "explain", "report"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        return skip & set(names) if Path(folder).name == "lncr-output" else set()

    shutil.copytree(study, target, ignore=ignore, copy_function=os.link, symlinks=True)
    return target / "study.yaml"


def demo_overrides(study: Path) -> list[str]:
    """The overrides the demo swept with (recorded in its sweep.json)."""
    record = json.loads((study / "lncr-output" / "sweep" / "sweep.json").read_text())
    return list(record["overrides"])


def sweep_seconds(study_yaml: Path, overrides: list[str], group_size: int, workers: int):
    from lncr.study.validate import Study
    from lncr.sweep.run import run_sweep

    study = Study.load(study_yaml, overrides + [f"sweep.group_size={group_size}"])
    t0 = time.perf_counter()
    report = run_sweep(study, executor="local", workers=workers, device="cpu", final=False)
    return time.perf_counter() - t0, report


def bench_demo(study: Path, workers: int) -> None:
    if not (study / "lncr-output" / "sweep" / "sweep.json").exists():
        raise SystemExit(f"{study} has no finished sweep: run `make demo` first")
    overrides = demo_overrides(study)
    root = Path(tempfile.mkdtemp(prefix="lncr-stacked-"))
    runs = {}
    for size in (1, 0):
        yaml = copy_demo(study, root / f"group{size}")
        runs[size] = sweep_seconds(yaml, overrides, size, workers)
        print(f"sweep.group_size={size}: {runs[size][0]:.1f} s "
              f"({len(runs[size][1].units)} units, {workers} workers)")
    (alone, a), (grouped, b) = runs[1], runs[0]
    key = ["stain", "bag_size", "repeat"]
    ua = a.units.sort_values(key).reset_index(drop=True)
    ub = b.units.sort_values(key).reset_index(drop=True)
    diff = max(float(np.nanmax(np.abs(ua[c].to_numpy(float) - ub[c].to_numpy(float))))
               for c in RESULTS)
    same = all(a.selection[k] == b.selection[k] for k in ("architectures", "bag_size"))
    print(f"stacked groups: {alone / grouped:.2f}x faster; largest difference of any unit's "
          f"figures {diff:.1e}; same selection: {same}; groups of "
          f"{sorted(set(ub.group))} units")
    shutil.rmtree(root, ignore_errors=True)


def published_head(features: int = 2048):
    from lncr.models.mil import build_head_mil

    return build_head_mil("resnet50", features, embedding_dim=512, layers=2, heads=8,
                          feedforward_dim=2048, dropout=0.1)


def single_rate(steps: int, bag: int, features: int) -> float:
    """Unit-steps per second of one unit trained alone."""
    model = published_head(features).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4,
                          foreach=True)
    x, y = torch.randn(1, bag, features), torch.ones(1)
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        logits, _ = model.from_features(x)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def stacked_rate(group: int, steps: int, bag: int, features: int) -> float:
    """Unit-steps per second of ``group`` units stepping together."""
    from lncr.training.stacked_head import (
        HeadShape,
        draw_masks,
        stack_parameters,
        stacked_forward,
    )

    models = [published_head(features) for _ in range(group)]
    shape = HeadShape.of(models[0])
    params = stack_parameters(models)
    del models
    opt = torch.optim.SGD(list(params.values()), lr=1e-3, momentum=0.9, weight_decay=1e-4,
                          foreach=True)
    gens = [torch.Generator().manual_seed(i) for i in range(group)]
    x, y = torch.randn(group, 1, bag, features), torch.ones(group, 1)
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        masks = draw_masks(shape, gens, 1, bag, torch.device("cpu"))
        logits, _ = stacked_forward(params, x, shape, masks)
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return group * steps / (time.perf_counter() - t0)


def bench_head(group: int, steps: int, bag: int, threads: int) -> None:
    torch.set_num_threads(threads)
    one = single_rate(steps, bag, 2048)
    many = stacked_rate(group, max(3, steps // 4), bag, 2048)
    print(f"published head, bags of {bag} tiles of 2,048-d features, {threads} threads: one "
          f"unit at a time {one:.1f} unit-steps/s ({1000 / one:.1f} ms a step); a stacked "
          f"group of {group}: {many:.1f} unit-steps/s; {many / one:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    demo = sub.add_parser("demo")
    demo.add_argument("--study", type=Path, default=Path("demo-output/study"))
    demo.add_argument("--workers", type=int, default=2)
    head = sub.add_parser("head")
    head.add_argument("--group", type=int, default=40)
    head.add_argument("--steps", type=int, default=30)
    head.add_argument("--bag", type=int, default=32)
    head.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if args.what == "demo":
        bench_demo(args.study, args.workers)
    else:
        bench_head(args.group, args.steps, args.bag, args.threads)


if __name__ == "__main__":
    main()
