"""Evaluation: scoring outputs (with and without references), sweeps over checkpoints, training curves,
the quality benchmark and its baselines, and the speed benchmark."""
