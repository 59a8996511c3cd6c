"""Grad-CAM of the *bag's* prediction for tiles seen inside their bag.

The maintained ``grad-cam`` package (pytorch-grad-cam) computes the maps. It expects a model
that maps a batch of images to a batch of outputs; the bag model maps a bag of tiles to one
output. :class:`BagAsBatch` bridges the two: the bag's N tiles go in as the package's "batch",
the model returns the bag's single logit, and :class:`BagTarget` picks the evidence for CR or
for non-CR of that bag (± its logit, see there). The package's hooks then see the target layer's activations and gradients for all N
tiles at once, so **one forward and one backward pass per bag** give the map of every tile in
it, each computed with the rest of the bag present (the transformer lets tiles change one
another's embeddings; the published code also ran Grad-CAM on the tile inside its bag).

Methods are chosen by name (:data:`CAM_METHODS`): those that weigh the target layer's
activations by gradients or by their principal components. Perturbation methods (Score-CAM,
Ablation-CAM) re-run the model once per masked *image*, which in a bag means once per tile ×
mask, and are left out.

The target layer is found by a dry run: the last module whose output is still a spatial map
(N, C, h, w) with more than one position, adaptive pooling excepted — for ResNets the last
residual stage, for DenseNet the final feature block, for EfficientNet the head's BN-activation.
ViTs are handled by the usual token-to-grid reshape of the last block's first LayerNorm. Both
can be overridden with ``explain.cam_layer``: a dotted module path inside the backbone, or
``last_conv`` — the last ``Conv2d`` of the backbone, the authors' rule (``gradCAM.py``; for
ResNet-50 ``layer4.2.conv3``, before the last BatchNorm, residual sum and ReLU).

Each map is rescaled by the package to [0, 1] per tile (min subtracted, divided by max) and
resized to the model's input size, after a ReLU that keeps only evidence *for* the target.
``relu=False`` (``explain.cam_relu``; Grad-CAM only) is the authors' map: the raw weighted sum
of activations, negative evidence included, min-max rescaled — computed here from the
activations and gradients the package's hooks recorded.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from lncr.models.backbones import TileEncoder
from lncr.models.mil import AttentionMIL
from lncr.registries import CAM_METHODS

TARGETS = ("predicted", "cr", "noncr")


class BagAsBatch(nn.Module):
    """The bag model seen as an image model: (N, 3, H, W) tiles of ONE bag → (1, 1) logit."""

    def __init__(self, model: AttentionMIL):
        super().__init__()
        self.model = model

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model(tiles[None])
        return logits.view(1, 1)


class BagTarget:
    """Grad-CAM target: the evidence for complete response (``outcome=1``) or for no complete
    response (``outcome=0``) of the bag — its logit, or minus its logit.

    The logit (the log-odds of P(CR)) and not the probability is differentiated, as the
    Grad-CAM paper differentiates the pre-softmax class score: the gradient of P(CR) is the
    logit's times σ'(logit), a positive factor shared by every tile of the bag, so the maps of
    Grad-CAM are the same either way — except that for a confident bag σ(logit) rounds to
    exactly 1 in float32, σ' to 0, and every map of the bag would come out flat."""

    def __init__(self, outcome: int):
        self.outcome = int(outcome)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        logit = output.reshape(-1)[0]
        return logit if self.outcome == 1 else -logit


def vit_tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """(N, T, C) ViT tokens → (N, C, g, g), dropping the class/register tokens in front."""
    n, t, c = tokens.shape
    g = int(math.isqrt(t))
    while g * g > t or (t - g * g) > 8:  # at most a few prefix tokens
        g -= 1
    grid = tokens[:, t - g * g:, :].reshape(n, g, g, c)
    return grid.permute(0, 3, 1, 2)


def _vit_layer(model: nn.Module) -> nn.Module | None:
    if hasattr(model, "encoder") and hasattr(model.encoder, "layers"):  # torchvision ViT
        return model.encoder.layers[-1].ln_1
    if hasattr(model, "blocks") and hasattr(model.blocks[-1], "norm1"):  # timm ViT/DeiT
        return model.blocks[-1].norm1
    return None


def find_cam_layer(encoder: TileEncoder, size: int, name: str | None = None
                   ) -> tuple[nn.Module, Callable | None, str]:
    """The backbone layer to explain, its reshape transform (ViT) and its dotted name."""
    model = encoder.model
    names = {m: n for n, m in model.named_modules()}
    if name == "last_conv":
        convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError(f"explain.cam_layer=last_conv: {encoder.spec.name} has no Conv2d")
        return convs[-1][1], None, convs[-1][0]  # (a ViT's: its patch embedding's grid)
    if name:
        try:
            layer = model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"explain.cam_layer {name!r} is not a module of the backbone; "
                             f"e.g. {', '.join(list(n for n, _ in model.named_children())[:6])}"
                             ) from exc
        return layer, (vit_tokens_to_grid if encoder.spec.fixed_input else None), name
    vit = _vit_layer(model) if encoder.spec.fixed_input else None
    if vit is not None:
        return vit, vit_tokens_to_grid, names[vit]
    finished: list[nn.Module] = []

    def hook(module, _inputs, output):
        if (isinstance(output, torch.Tensor) and output.dim() == 4
                and output.shape[-1] * output.shape[-2] > 1
                and not isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))):
            finished.append(module)

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        was = model.training
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            encoder(torch.zeros(1, 3, size, size, device=device))
        model.train(was)
    finally:
        for h in handles:
            h.remove()
    if not finished:
        raise ValueError(f"{encoder.spec.name} has no spatial feature map at {size} px to "
                         "explain; set explain.cam_layer to a module path")
    return finished[-1], None, names[finished[-1]]


class BagCAM:
    """Grad-CAM (or another method of :data:`CAM_METHODS`) for every tile of a bag."""

    def __init__(self, model: AttentionMIL, input_size: int, method: str = "gradcam",
                 layer: str | None = None, relu: bool = True):
        import pytorch_grad_cam

        if method not in CAM_METHODS:
            raise ValueError(f"explain.cam_method {method!r}: use one of "
                             f"{', '.join(CAM_METHODS)}")
        if not relu and method != "gradcam":
            raise ValueError(f"explain.cam_relu=false is the authors' Grad-CAM without ReLU; "
                             f"it is not defined for {method!r}: use cam_method=gradcam")
        self.relu = relu
        self.model = model.eval()
        self.model.requires_grad_(True)  # frozen backbones too: the hooks need gradients
        target, reshape, self.layer_name = find_cam_layer(model.encoder, input_size, layer)
        self.method = method
        self._cam = getattr(pytorch_grad_cam, CAM_METHODS[method])(
            model=BagAsBatch(self.model), target_layers=[target], reshape_transform=reshape)

    def __call__(self, tiles: torch.Tensor, outcome: int) -> tuple[np.ndarray, float]:
        """Maps (N, H, W) in [0, 1] for the N normalised input tiles of one bag, and the bag's
        P(CR).

        TF32 is switched off while the maps are computed: each map is rescaled by its own
        range, and with TF32 convolutions (PyTorch's default on GPUs) nearly flat maps came
        out entirely different from the CPU's (``bench/gpu_explain.py``: largest difference
        1.0 with TF32, 0.002 without, same model and tiles)."""
        flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            maps = self._cam(input_tensor=tiles, targets=[BagTarget(outcome)])
            if not self.relu:
                maps = self._raw_maps(tiles.shape[-1])
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
        probability = float(torch.sigmoid(self._cam.outputs.detach().reshape(-1)[0]))
        return flat_safe(np.asarray(maps, dtype=np.float32)), probability

    def _raw_maps(self, size: int) -> np.ndarray:
        """Grad-CAM without the ReLU (the authors' ``gradCAM.py``): Σ_c mean(∂y/∂A_c)·A_c,
        min-max rescaled per tile, resized to the input size."""
        import cv2

        recorded = self._cam.activations_and_grads
        acts = recorded.activations[0].float().cpu().numpy()
        grads = recorded.gradients[0].float().cpu().numpy()
        cams = (grads.mean(axis=(2, 3), keepdims=True) * acts).sum(axis=1)
        out = np.empty((len(cams), size, size), dtype=np.float32)
        for i, cam in enumerate(cams):
            cam = cam - cam.min()
            cam = cam / (cam.max() + 1e-7)
            out[i] = cv2.resize(cam.astype(np.float32), (size, size))
        return out

    def close(self) -> None:
        self._cam.activations_and_grads.release()

    def __enter__(self) -> "BagCAM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def resolve_target(target: str, probability: float, threshold: float = 0.5) -> int:
    """The outcome whose probability is explained: ``predicted`` follows the model."""
    if target not in TARGETS:
        raise ValueError(f"--target {target!r}: use one of {', '.join(TARGETS)}")
    if target == "predicted":
        return int(probability >= threshold)
    return 1 if target == "cr" else 0


def flat_safe(maps: np.ndarray) -> np.ndarray:
    """Maps with every non-finite value set to 0 and clipped to [0, 1]: a flat map (no
    gradient reached the tile: the CAM methods divide 0 by 0) is drawn as "no evidence" instead
    of reaching the colour map as NaN (NumPy's "invalid value encountered in cast")."""
    return np.clip(np.nan_to_num(maps, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def overlay(tile: np.ndarray, cam: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The tile (H, W, 3 uint8) with the map (h, w in [0, 1]) in OpenCV's JET colour map over
    it: ``alpha`` × map + (1 − ``alpha``) × tile, rounded to uint8 — the authors' blend
    (``gradCAM.py``: ``cam*0.6 + img*0.4`` written by ``cv2.imwrite``). pytorch-grad-cam's
    ``show_cam_on_image`` would divide the blend by its maximum, which brightens every overlay
    whose maximum is below 255, so the blend is written here."""
    import cv2

    h, w = tile.shape[:2]
    cam = cv2.resize(flat_safe(cam.astype(np.float32)), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET)[..., ::-1]  # BGR → RGB
    blend = alpha * heat.astype(np.float64) + (1.0 - alpha) * tile.astype(np.float64)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def peak(cam: np.ndarray, size0: float, x: float, y: float, crop_fraction: float = 1.0
         ) -> tuple[float, float]:
    """Level-0 coordinates of the map's maximum, for a map covering the tile's centred crop
    (``crop_fraction`` of the tile's side); NaN for a flat map, which has no maximum (Grad-CAM
    leaves nothing after its ReLU when no part of the tile raises the target)."""
    if not cam.max() > cam.min():
        return float("nan"), float("nan")
    h, w = cam.shape
    i, j = np.unravel_index(int(np.argmax(cam)), cam.shape)
    side = size0 * crop_fraction
    offset = (size0 - side) / 2.0
    return (float(x + offset + (j + 0.5) / w * side), float(y + offset + (i + 0.5) / h * side))
