"""Explaining predictions: tile scores, influential tiles, attention heatmaps."""
