"""The names settings are checked against, for the registries that live in upper layers.

``study.yaml`` is validated in :mod:`lncr.study`, below the packages that hold the stain
normalisers (:mod:`lncr.tiling.normalisers`), the CAM methods (:mod:`lncr.explain.gradcam`)
and the sweep executors (:mod:`lncr.sweep.executors`). Each registry is one entry per name
here — what the upper package builds from — so settings are checked without importing those
packages (and torch), and no lower layer imports an upper one. Adding a method is one entry
here and its implementation there.
"""

from __future__ import annotations

#: ``tiling.normalisation`` methods -> their class in :mod:`lncr.tiling.normalisers`.
NORMALISERS: dict[str, str] = {
    "macenko": "Macenko",
    "vahadane": "Vahadane",
    "reinhard": "Reinhard",
    "none": "Identity",
}

#: ``explain.cam_method`` / ``--method`` -> the class in pytorch_grad_cam (the grad-cam package).
CAM_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "gradcamelementwise": "GradCAMElementWise",
}

#: ``sweep.executor`` / ``--executor`` -> the factory function in :mod:`lncr.sweep.executors`.
EXECUTORS: dict[str, str] = {"local": "local_executor", "ray": "ray_executor"}


def list_normalisers() -> list[str]:
    """The registered normaliser names (what ``tiling.normalisation`` accepts)."""
    return list(NORMALISERS)


def list_cam_methods() -> list[str]:
    """The CAM method names ``explain.cam_method`` accepts."""
    return list(CAM_METHODS)


def list_executors() -> list[str]:
    """The registered executor names."""
    return list(EXECUTORS)
