"""Evaluation: metrics, cross-validation reports, model comparison."""
