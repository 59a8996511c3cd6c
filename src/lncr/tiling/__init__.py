"""Tiling: slides → tiles at physical magnifications, the tissue rule, brightness/contrast,
per-stain colour normalisation, and the tile store."""
