"""Evaluation metrics of the paper (METHOD.md, "Metrics the paper reports")."""
