"""``lncr report``: one self-contained HTML file describing a study and its results."""
