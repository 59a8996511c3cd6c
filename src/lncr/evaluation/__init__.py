"""Evaluation: the published ensembles, ROC statistics with confidence intervals and paired
tests, and metrics at a threshold fixed on development data."""
