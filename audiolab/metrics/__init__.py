"""Metrics that judge runs independently of how they were trained."""
