"""The web page: ``/`` and its static assets (plain HTML, CSS and ES modules, no build step),
served by the app itself so it works offline and needs no CDN."""

from stemify.web.routes import STATIC_DIR, mount_web

__all__ = ["STATIC_DIR", "mount_web"]
