"""CAM methods by name (``explain.cam_method``, ``--method``): the class of the ``grad-cam``
package (pytorch-grad-cam) behind each. A leaf module, so settings can be checked against it
without importing torch; adding a method is one entry here."""

from __future__ import annotations

#: name -> class in pytorch_grad_cam
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


def list_cam_methods() -> list[str]:
    """The CAM method names ``explain.cam_method`` accepts."""
    return list(CAM_METHODS)
