"""Where job inputs and stems live: a small byte-stream interface (:class:`Storage`) and its
local-directory backend; :func:`storage_from_url` picks the backend from a setting."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from stemify.storage.base import Storage, check_key, local_file
from stemify.storage.local import LocalStorage

__all__ = ["LocalStorage", "Storage", "check_key", "local_file", "storage_from_url"]


def storage_from_url(url: str) -> Storage:
    """``file:///abs/path`` or a plain filesystem path → :class:`LocalStorage`."""
    if not url or not url.strip():
        raise ValueError("storage URL is empty: use file:///absolute/path or a plain path")
    parts = urlsplit(url)
    # A one-letter "scheme" is a Windows drive letter; only real schemes are URLs.
    if not parts.scheme or len(parts.scheme) == 1:
        return LocalStorage(Path(url).expanduser())
    if parts.scheme.lower() != "file":
        raise ValueError(
            f"unsupported storage URL scheme {parts.scheme!r}: use file:///absolute/path "
            "or a plain path (only local storage is available)"
        )
    if parts.netloc not in ("", "localhost"):
        raise ValueError(
            f"file URL must be file:///absolute/path, got host {parts.netloc!r} in {url!r}"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"file URL must not have a query or fragment: {url!r}")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise ValueError(f"file URL must hold an absolute path: {url!r}")
    return LocalStorage(Path(path))
