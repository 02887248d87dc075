"""Evaluation metrics and plots."""
