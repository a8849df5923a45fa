"""stemify: self-hosted music stem separation with Demucs."""

__version__ = "0.1.0"
