"""Datasets: the built-in synthetic piano music and clip caches."""
