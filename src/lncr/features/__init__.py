"""Tile features of frozen backbones, computed once and reused: the spec that names them,
their HDF5 files, the embedding stage and the bags training reads from them
(docs/embeddings.md)."""
