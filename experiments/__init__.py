"""Experiment files: one module per run recipe, each defining `EXPERIMENT` (see docs/experiments.md)."""
