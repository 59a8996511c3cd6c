"""matplotlib for files only: every figure of lncr is drawn with the non-interactive Agg
backend, so no display is needed on servers."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` with the Agg backend selected (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
