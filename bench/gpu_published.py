"""The published configuration on a GPU, in one short run: every backbone, fp32 and AMP.

    python bench/gpu_published.py [--architectures alexnet,resnet50,...] [--steps 20]
                                  [--out results.json]

For each published architecture, built exactly as for training (the authors' heads; random
weights, since speed does not depend on their values), at the published geometry (384-px crops
of 512-px tiles resized to 299 px on the device; the ViT takes the 384-px crop), one optimiser
step of

- ``published``: the recipe's step — 4 bags of 32 tiles with BatchNorm in training mode, the
  single-device equivalent of the authors' 4 GPUs with synchronised BatchNorm;
- ``lncr``: lncr's default step — one bag of 32 tiles, frozen BatchNorm;

in fp32 and with bf16 autocast. Reports tiles/s over ``--steps`` timed steps after 3 warm-up
steps, and the peak GPU memory of each. Tiles are random uint8 bags already on the GPU: this
measures the model step; ``bench/train_throughput.py`` measures the loader. Prints a Markdown
table for docs/training.md. Not run yet on this project's machines (no GPU was lent to the
session that wrote it).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from lncr.data.inputs import DeviceInput, input_geometry
from lncr.data.precision import autocast_dtype
from lncr.models.backbones import backbone_spec
from lncr.models.mil import freeze_batch_norm
from lncr.study.config import SweepSettings, TrainingSettings
from lncr.training.loop import build_model, make_optimiser

STEPS = {"published": (4, "train"), "lncr": (1, "frozen")}


def measure(arch: str, step: str, precision: str, steps: int, bag: int = 32) -> dict:
    bags, batch_norm = STEPS[step]
    settings = TrainingSettings(architecture=arch, batch_norm=batch_norm, precision=precision,
                                bags_per_step=bags, pretrained=False)
    geometry = input_geometry(settings, 512)
    device = torch.device("cuda")
    model = build_model(settings).to(device)
    optimiser = make_optimiser(model, arch, settings)
    inputs = DeviceInput(geometry, [0.5] * 3, [0.25] * 3, device)
    amp = autocast_dtype(precision, device)
    x = torch.randint(0, 256, (bags, bag, 3, geometry.crop, geometry.crop), dtype=torch.uint8,
                      device=device)
    labels = torch.tensor([i % 2 for i in range(bags)], dtype=torch.float32, device=device)
    torch.cuda.reset_peak_memory_stats()

    def one() -> None:
        model.train()
        if batch_norm == "frozen":
            freeze_batch_norm(model)
        with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
            logits, _ = model(inputs(x))
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    for _ in range(3):
        one()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"architecture": arch, "step": step, "precision": precision,
            "input": geometry.size, "tiles_per_step": bags * bag,
            "tiles_per_s": round(bags * bag * steps / seconds, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--architectures", default=",".join(SweepSettings().architectures))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for a GPU machine")
    rows = []
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| architecture | step | precision | input | tiles/step | tiles/s | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for arch in args.architectures.split(","):
        backbone_spec(arch)  # fail early on a typo
        for step in STEPS:
            for precision in ("fp32", "bf16"):
                try:
                    r = measure(arch, step, precision, args.steps)
                except torch.cuda.OutOfMemoryError:
                    r = {"architecture": arch, "step": step, "precision": precision,
                         "error": "out of memory"}
                torch.cuda.empty_cache()
                rows.append(r)
                print(f"| {arch} | {step} | {precision} | {r.get('input', '')} | "
                      f"{r.get('tiles_per_step', '')} | {r.get('tiles_per_s', r.get('error'))}"
                      f" | {r.get('peak_gib', '')} |", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
