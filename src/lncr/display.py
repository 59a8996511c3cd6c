"""How numbers read in the console and the report: "—" for an undefined one, with the reason
it is undefined when one is known (shared by :mod:`lncr.cli` and :mod:`lncr.report`)."""

from __future__ import annotations

import math


def fmt(x: float | None, digits: int = 3, why: object = "") -> str:
    """A number to ``digits`` decimals; "—" for an undefined one, with the reason when known.

    >>> fmt(0.8123, 2), fmt(float("nan"), 2, "only CR patients")
    ('0.81', '— (only CR patients)')
    """
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return f"— ({why})" if isinstance(why, str) and why else "—"
    return f"{x:.{digits}f}"
