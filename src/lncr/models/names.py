"""The names of the registered tile encoders, without importing PyTorch.

Commands that never build a model (``lncr validate``, ``tile``, ``evaluate``, ``report``)
check a study's architectures against this list instead of building each one; the registry
in :mod:`lncr.models.backbones` must hold exactly these names (a test keeps them in step).
Other names (``timm:<name>``, any torchvision classifier, ``name.TAG``) are checked by
building them on the meta device, once per library versions (:func:`check_key`).
"""

from __future__ import annotations

from importlib import metadata

#: Every architecture registered in :mod:`lncr.models.backbones` and
#: :mod:`lncr.models.foundation`.
REGISTERED = frozenset({
    "alexnet", "densenet121", "inception_v3", "resnet18", "resnet50", "vgg11",
    "vit_b_16", "vit_base_patch16_384",
    "h_optimus_0", "prov_gigapath", "uni", "uni2_h", "virchow2",
})


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def check_key(name: str, embedding_dim: int) -> str:
    """What a cached check of ``name`` depends on: the name, the width and the versions of
    the libraries that build it (read from package metadata: nothing is imported)."""
    versions = ",".join(f"{p}={_version(p)}" for p in ("torch", "torchvision", "timm"))
    return f"{name}|{embedding_dim}|{versions}"
