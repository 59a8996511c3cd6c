"""Evaluation: ROC statistics with confidence intervals and paired tests."""
