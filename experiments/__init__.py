"""Experiments: the training CLI (`python -m experiments.train`) and its configs."""
