"""Training and prediction: bags of tiles from the tile stores, the input pipeline, one
resumable (optionally distributed) training run, and slide-level prediction."""
