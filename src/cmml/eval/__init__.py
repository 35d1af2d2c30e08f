"""Evaluation: per-task scores and continual-learning metrics over the score matrix."""
