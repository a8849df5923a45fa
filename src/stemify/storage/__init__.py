"""Where job inputs and stems live: a small byte-stream interface (:class:`Storage`), its
local-directory and S3 backends; :func:`storage_from_url` picks the backend from a setting."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from stemify.storage.base import Storage, check_key, local_file
from stemify.storage.local import LocalStorage

if TYPE_CHECKING:
    from stemify.storage.s3 import S3Storage

__all__ = ["LocalStorage", "S3Storage", "Storage", "check_key", "local_file", "storage_from_url"]


def __getattr__(name: str) -> object:
    # boto3 is imported only by those who use S3.
    if name == "S3Storage":
        from stemify.storage.s3 import S3Storage

        return S3Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def storage_from_url(
    url: str,
    *,
    s3_addressing_style: str = "auto",
    s3_connect_timeout_s: float = 5.0,
    s3_read_timeout_s: float = 60.0,
) -> Storage:
    """``file:///abs/path`` or a plain filesystem path → :class:`LocalStorage`;
    ``s3://BUCKET/PREFIX`` → :class:`S3Storage` (endpoint, region and credentials from
    boto3's own configuration; the ``s3_*`` arguments are the ``STEMIFY_S3_*`` settings)."""
    if not url or not url.strip():
        raise ValueError(
            "storage URL is empty: use file:///absolute/path, a plain path or s3://BUCKET/PREFIX"
        )
    parts = urlsplit(url)
    # A one-letter "scheme" is a Windows drive letter; only real schemes are URLs.
    if not parts.scheme or len(parts.scheme) == 1:
        return LocalStorage(Path(url).expanduser())
    if parts.scheme.lower() == "s3":
        from stemify.storage.s3 import S3Storage, parse_s3_url

        bucket, prefix = parse_s3_url(url)
        return S3Storage(
            bucket,
            prefix,
            addressing_style=s3_addressing_style,
            connect_timeout_s=s3_connect_timeout_s,
            read_timeout_s=s3_read_timeout_s,
        )
    if parts.scheme.lower() != "file":
        raise ValueError(
            f"unsupported storage URL scheme {parts.scheme!r}: use file:///absolute/path, "
            "a plain path or s3://BUCKET/PREFIX"
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
