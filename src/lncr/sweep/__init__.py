"""The sweep: the architecture × bag-size grid with repeats, its executors, the selection of the final configuration."""
