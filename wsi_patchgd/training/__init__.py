"""Runs: configuration, the training loop, metrics, checkpoints, evaluation and prediction."""
