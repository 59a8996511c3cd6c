"""Stain normalisers by name: ``macenko``, ``vahadane``, ``reinhard``, ``none``.

Adding a method is one class with ``fit``/``_estimate``/``_apply``/``to_dict``/``from_dict``
and one entry in :data:`lncr.registries.NORMALISERS` (name -> class name), from which
:data:`NORMALISERS` is built.
"""

from __future__ import annotations

from typing import Any

from lncr import registries
from lncr.registries import list_normalisers
from lncr.tiling.normalisers.base import Identity, NotEnoughTissue, StainNormaliser
from lncr.tiling.normalisers.macenko import Macenko
from lncr.tiling.normalisers.reinhard import Reinhard
from lncr.tiling.normalisers.vahadane import Vahadane

NORMALISERS: dict[str, type[StainNormaliser]] = {
    name: {c.__name__: c for c in (Macenko, Vahadane, Reinhard, Identity)}[cls]
    for name, cls in registries.NORMALISERS.items()}


def make_normaliser(name: str) -> StainNormaliser:
    """A new, unfitted normaliser of the named method."""
    try:
        return NORMALISERS[name]()
    except KeyError:
        raise ValueError(f"unknown normalisation {name!r}; choose one of "
                         f"{', '.join(NORMALISERS)}") from None


def load_normaliser(data: dict[str, Any]) -> StainNormaliser:
    """Restore a fitted normaliser from its :meth:`~StainNormaliser.to_dict` record."""
    return NORMALISERS[data["method"]].from_dict(data)


__all__ = ["NORMALISERS", "Identity", "Macenko", "NotEnoughTissue", "Reinhard",
           "StainNormaliser", "Vahadane", "list_normalisers", "load_normaliser",
           "make_normaliser"]
