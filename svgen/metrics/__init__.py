"""Evaluation metrics of the paper (docs/method.md, "Metrics")."""
