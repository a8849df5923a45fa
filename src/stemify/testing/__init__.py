"""Helpers shared by the test suite and the benchmarks (random-weight models, test audio)."""
