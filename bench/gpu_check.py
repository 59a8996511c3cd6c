"""The CUDA paths, checked on a GPU machine in one short run.

    python bench/gpu_check.py --study TILED_STUDY/study.yaml [--out results.json]

1. Mixed precision: one short training run per precision (fp32, fp16 with GradScaler, bf16) on
   the study's first stain at 10x; every epoch's losses must be finite and the run folder must
   record the precision it used. Then ``lncr predict`` on the GPU.
2. Model-step throughput at the published geometry (384-px crops resized to 299 on the GPU,
   bags of 16): ResNet-50 (NCHW and channels-last) and ViT-B/16 (384 px) in fp32, bf16 and
   fp16, tiles per second.
3. The sweep's local executor on a GPU machine: each unit is given the GPU (``cuda:0``).

The study is any tiled study (``lncr tile``); the tiles may be small (128 px): only item 1 and
3 read them.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from lncr.study.validate import Study


def amp_runs(study: Path, sets: list[str], out: Path) -> dict:
    from lncr.data.entries import study_entries
    from lncr.training.loop import RunSpec
    from lncr.training.predict import predict_run
    from lncr.training.trainer import train_run

    loaded = Study.load(study, sets)
    cfg, entries = loaded.config, study_entries(loaded, "HE", "10x")
    results = {}
    for precision in ("fp32", "fp16", "bf16"):
        settings = cfg.training.model_copy(update={"precision": precision})
        t0 = time.perf_counter()
        folder = train_run(RunSpec("HE", "10x", "resnet18", 8, 0), entries, settings,
                           out / precision, cfg.tiling.tile_size, device="cuda", force=True,
                           source={"study": str(study), "overrides": sets})
        seconds = time.perf_counter() - t0
        import pandas as pd

        metrics = pd.read_csv(folder / "metrics.csv")
        config = json.loads((folder / "config.json").read_text())
        finite = bool(metrics[["train_loss", "val_loss"]].map(math.isfinite).all().all())
        preds = predict_run(folder, "all", "last", device="cuda", write=False)
        results[precision] = {"recorded_precision": config["precision"],
                              "device": config["device"], "finite_losses": finite,
                              "epochs": len(metrics), "seconds": round(seconds, 1),
                              "last_train_loss": float(metrics.train_loss.iloc[-1]),
                              "predicted_slides": len(preds),
                              "probabilities_finite": bool(preds.probability.map(
                                  math.isfinite).all())}
        print(precision, results[precision], flush=True)
    return results


def step_throughput(architecture: str, crop: int, size: int, precision: str,
                    bag: int = 16, steps: int = 30, channels_last: bool = True) -> float:
    """Tiles/s through resize + forward + backward + step at the published geometry."""
    from lncr.data.inputs import DeviceInput, InputGeometry
    from lncr.data.precision import autocast_dtype
    from lncr.study.config import TrainingSettings
    from lncr.training.loop import build_model, make_optimiser

    dev = torch.device("cuda")
    settings = TrainingSettings(architecture=architecture, precision=precision,
                                embedding_dim=512)
    model = build_model(settings).to(dev).train()
    if channels_last:  # measured against NCHW; the training loop keeps NCHW
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimiser(model, architecture, settings)
    amp = autocast_dtype(precision, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    inputs = DeviceInput(InputGeometry(crop, size), [0.5] * 3, [0.25] * 3, dev)
    bags = torch.randint(0, 256, (1, bag, 3, crop, crop), dtype=torch.uint8).pin_memory()
    labels = torch.ones(1, device=dev)

    def step() -> None:
        x = inputs(bags)
        if channels_last:
            b, n = x.shape[:2]
            x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(b, n, *x.shape[2:])
        with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
            logits, _ = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps * bag / (time.perf_counter() - t0)


def sweep_on_gpu(study: Path, sets: list[str]) -> dict:
    from lncr.sweep.run import run_sweep

    grid = ["sweep.architectures=[resnet18]", "sweep.bag_sizes=[4, 8]", "sweep.repeats=1",
            "sweep.stains=[HE]", "sweep.magnifications=[10x]"]
    report = run_sweep(Study.load(study, sets + grid), executor="local", device="auto",
                       final=False)
    devices = {json.loads((Path(f) / "config.json").read_text())["device"]
               for f in report.units.folder}
    return {"units": len(report.units), "done": int((report.units.status == "done").sum()),
            "devices": sorted(devices), "seconds": round(report.timings["total"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--runs", type=Path, default=Path("/tmp/lncr-gpu-runs"))
    args = ap.parse_args()
    sets = ["tiling.tile_size=128", "magnification.powers=[10, 20]", "training.pretrained=false",
            "training.epochs=3", "training.warmup_epochs=1", "training.input_size=384",
            "training.embedding_dim=64", "training.eval_tiles=16", "training.loader_workers=4",
            ]
    print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    results: dict = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    results["amp_runs"] = amp_runs(args.study, sets, args.runs)
    results["throughput_tiles_per_s"] = {}
    for arch, crop, size, nhwc in (("resnet50", 384, 299, False), ("resnet50", 384, 299, True),
                                   ("vit_b_16", 384, 384, False)):
        for precision in ("fp32", "bf16", "fp16"):
            value = step_throughput(arch, crop, size, precision, channels_last=nhwc)
            name = f"{arch}-{precision}" + ("-channels_last" if nhwc else "")
            results["throughput_tiles_per_s"][name] = round(value, 1)
            print(name, f"{value:.1f} tiles/s", flush=True)
    results["sweep"] = sweep_on_gpu(args.study, sets)
    print("sweep", results["sweep"], flush=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
