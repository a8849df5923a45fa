"""The HTTP API (FastAPI): jobs, downloads, models, health and readiness."""

from stemify.api.app import create_app

__all__ = ["create_app"]
