"""Explanations on a GPU: bag Grad-CAM and DCCS training on CUDA, checked against the CPU.

    python bench/gpu_explain.py [--out results.json]

1. Grad-CAM of a bag of 16 tiles at the published 299-px input through a ResNet-50 bag model
   (random weights): seconds per bag (one forward + backward) on the GPU and on the CPU, and
   the largest difference between the GPU's and the CPU's maps (same model, same tiles), with
   TF32 convolutions (PyTorch's default on the GPU) allowed and not. (BagCAM now switches TF32
   off itself, so both rows measure fp32 maps unless run on a version before that change.)
2. DCCS on scikit-learn's digits (10 clusters, 60 epochs, lr 1e-3) on the GPU: time and
   accuracy / NMI / ARI (the CPU figures are in docs/explain.md).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def bag_cam(tf32: bool) -> dict:
    from lncr.explain.gradcam import BagCAM
    from lncr.models.mil import build_mil

    torch.backends.cudnn.allow_tf32 = tf32  # cuDNN convolutions use TF32 by default
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.manual_seed(0)
    model = build_mil("resnet50", 512, 2, 8, None, 2048, 0.1).eval()
    x = torch.randn(16, 3, 299, 299, generator=torch.Generator().manual_seed(1))
    out = {}
    maps = {}
    for device in ("cuda", "cpu"):
        m = model.to(device)
        with BagCAM(m, 299) as cam:
            cam(x.to(device), 1)  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            reps = 5 if device == "cuda" else 1
            for _ in range(reps):
                maps[device], p = cam(x.to(device), 1)
            if device == "cuda":
                torch.cuda.synchronize()
            out[f"{device}_s_per_bag"] = (time.perf_counter() - t0) / reps
            out[f"{device}_probability"] = p
            out["layer"] = cam.layer_name
    out["max_map_difference"] = float(np.abs(maps["cuda"] - maps["cpu"]).max())
    out["speed_ratio"] = out["cpu_s_per_bag"] / out["cuda_s_per_bag"]
    return out


def dccs_digits() -> dict:
    from sklearn.datasets import load_digits

    from lncr.explain.cluster_metrics import clustering_scores
    from lncr.explain.dccs import DCCSConfig, assign, fit_dccs

    data = load_digits()
    x = torch.tensor(data.images[:, None] / 16.0, dtype=torch.float32)
    cfg = DCCSConfig(clusters=10, epochs=60, lr=1e-3, encoder="plain", augment={
        "crop_scale": (0.7, 1.0), "flips": False, "channel_shuffle": False, "jitter": 0.2})
    t0 = time.perf_counter()
    model, history = fit_dccs(x, cfg, "cuda")
    seconds = time.perf_counter() - t0
    _, clusters = assign(model, x, device="cuda")
    return {"seconds": seconds, **clustering_scores(data.target, clusters),
            "final_losses": history[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "bag_gradcam_tf32": bag_cam(True), "bag_gradcam_fp32": bag_cam(False),
               "dccs_digits": dccs_digits()}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
