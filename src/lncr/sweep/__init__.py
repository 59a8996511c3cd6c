"""The sweep: the architecture × bag-size grid with repeats, its executors, and the
selection of the final configuration."""
