"""Benchmarks of the scheduler core (``xinhe bench scheduler``)."""
