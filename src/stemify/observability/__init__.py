"""Metrics, structured logs and error tracking."""
