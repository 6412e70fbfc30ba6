"""Xinhe control plane: API, store, scheduler and reconcilers."""

__version__ = "0.1.0"
