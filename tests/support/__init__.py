"""Helpers shared by the tests: real processes and servers (processes), the real app served
in a thread (live)."""
