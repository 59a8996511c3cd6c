"""Training data: bags of tiles drawn from the tile stores (the training loop is to come)."""
