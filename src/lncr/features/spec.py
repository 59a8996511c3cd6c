"""What a set of cached tile features is: the encoder, its weights, what the encoder sees, and
the views — and the fingerprint that names it.

Two runs share cached features exactly when their :class:`FeatureSpec` is equal: the same
architecture with the same weights (by SHA-256 of the file, or the library's named weights),
the same crop and input size, the same channel statistics and the same views. The spec's
:meth:`FeatureSpec.feature_id` (architecture + a digest of the spec) names its folder under
``<output_dir>/features/``; each slide's file also records the identity of the tile store it
was computed from (:func:`store_identity`), so a re-tiled slide is embedded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from lncr.identifiers import file_name

FORMAT = 1  # the layout of a features file (lncr.features.store)


@dataclass(frozen=True)
class FeatureSpec:
    """The features one frozen backbone gives one run's tiles."""

    architecture: str
    weights: str  # "imagenet" or a local file
    weights_id: str  # SHA-256 of the file, or the library's weights name
    crop: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    views: int = 1  # view 0: the centred crop; 1..views-1 augmented
    augment: bool = False  # rotations and flips in the augmented views
    jitter: float = 0.0  # colour jitter of the augmented views
    seed: int = 0  # draws of the augmented views
    precision: str = "fp32"  # the encoder's arithmetic (bf16/fp16: CUDA autocast)
    dtype: str = "float32"  # how the features are stored
    embedding_dim: int = 512  # the projection built with the backbone (not in the features)

    def key(self) -> dict:
        """What the features depend on (the file path of the weights is left out: the same
        weights elsewhere give the same features)."""
        key = asdict(self)
        for name in ("weights", "embedding_dim"):
            key.pop(name)
        key.update(mean=list(self.mean), std=list(self.std), format=FORMAT)
        if self.views == 1:  # one view is the centred crop whatever the augmentation
            key.update(augment=False, jitter=0.0, seed=0)
        return key

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()

    def feature_id(self) -> str:
        """The folder name of these features: ``<architecture>-<digest[:12]>``."""
        return file_name(f"{self.architecture.replace(':', '-')}-{self.digest()[:12]}")


_SHA_CACHE: dict[tuple, str] = {}


def weights_id(weights: str, architecture: str) -> str:
    """A weights file's SHA-256 (remembered per path, size and modification time), or the
    library's name of the weights ``"imagenet"`` means for ``architecture``."""
    if weights == "imagenet":
        from lncr.models.backbones import backbone_spec

        return f"imagenet:{backbone_spec(architecture).weights}"
    stat = os.stat(weights)
    key = (os.path.abspath(weights), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        from lncr.fileio import file_sha256

        _SHA_CACHE[key] = f"sha256:{file_sha256(weights)}"
    return _SHA_CACHE[key]


def store_identity(store: str | Path) -> str:
    """A digest of a tile store's members and their CRC-32s, read from the ZIP's central
    directory (no tile is decoded): it changes whenever any tile or the index does."""
    with zipfile.ZipFile(store) as zf:
        members = [(i.filename, i.CRC, i.file_size) for i in zf.infolist()]
    return hashlib.sha256(json.dumps(members).encode()).hexdigest()


def feature_spec(architecture: str, weights: str, geometry, mean, std, views: int = 1,
                 augment: bool = False, jitter: float = 0.0, seed: int = 0,
                 precision: str = "fp32", dtype: str = "float32",
                 embedding_dim: int = 512) -> FeatureSpec:
    """The spec of a run's features (``geometry``: its :class:`InputGeometry`)."""
    return FeatureSpec(architecture, str(weights), weights_id(str(weights), architecture),
                       int(geometry.crop), int(geometry.size),
                       tuple(float(m) for m in mean), tuple(float(s) for s in std),
                       int(views), bool(augment), float(jitter), int(seed), precision, dtype,
                       int(embedding_dim))


def run_features(settings, embedding, weights: str, geometry, stats, precision: str
                 ) -> FeatureSpec:
    """The features a run with training ``settings`` (frozen backbone) and ``embedding``
    settings trains on; ``stats`` = (mean, std) of its channels."""
    return feature_spec(settings.architecture, weights, geometry, *stats,
                        views=embedding.views, augment=settings.augment,
                        jitter=settings.colour_jitter if settings.augment else 0.0,
                        seed=embedding.seed, precision=precision, dtype=embedding.dtype,
                        embedding_dim=settings.embedding_dim)


def spec_from_config(config: dict) -> FeatureSpec | None:
    """The :class:`FeatureSpec` a run folder's ``config.json`` records (None: the run trained
    on pixels). Its weights must still be the ones it was trained with."""
    from lncr.errors import BadInput

    recorded = config.get("features")
    if not recorded:
        return None
    key = dict(recorded["spec"])
    key.pop("format", None)
    weights = str(config["weights"])
    if not (weights == "imagenet" or os.path.isfile(weights)):
        raise BadInput(f"the backbone weights {weights} of this run (trained on cached "
                       "features) are missing: put the file back where config.json says")
    spec = FeatureSpec(weights=weights, embedding_dim=int(config["settings"]["embedding_dim"]),
                       **{**key, "mean": tuple(key["mean"]), "std": tuple(key["std"])})
    if weights_id(weights, spec.architecture) != spec.weights_id:
        raise BadInput(f"the backbone weights {weights} have changed since this run was "
                       "trained on their features: restore the original file")
    return spec
