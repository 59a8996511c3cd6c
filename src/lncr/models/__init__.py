"""Models: tile encoders by name and the attention-MIL bag head of the published method."""
