"""Placement: a pure core (core*.py, types.py) and the Ray shell hosting it."""
