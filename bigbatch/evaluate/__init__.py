"""Evaluation: task metrics on a split."""
