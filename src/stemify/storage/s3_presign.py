"""Presigned GET links to objects of an :class:`S3Storage` (SigV4 query signing, computed from
the client's credentials: no request to S3).

The job JSON is polled often and compared between reads (SSE sends a change only when it
differs), but a SigV4 link carries the time it was signed. So a link is made once per
``(key, expiry, disposition)`` and then reused: its expiry is an absolute time rounded to a
step (the job links' rule), and a signing time within that step changes nothing a client sees
but the query."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Literal
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError

from stemify.errors import ConfigurationError, StorageError
from stemify.storage.base import check_key
from stemify.storage.s3 import S3Storage
from stemify.storage.s3_errors import describe

# SigV4 presigned URLs live at most 7 days (X-Amz-Expires); S3 refuses longer ones.
MAX_LIFETIME_S = 7 * 24 * 3600
# Links kept: each stem of each job polled within one expiry step.
_CACHED = 4096


def check_lifetime(ttl_s: float) -> None:
    if ttl_s > MAX_LIFETIME_S:
        raise ConfigurationError(
            f"STEMIFY_SIGNED_URL_TTL_S is {ttl_s:.0f} s, longer than S3 presigned links can "
            f"live ({MAX_LIFETIME_S} s, 7 days): lower it, or set STEMIFY_DOWNLOAD_MODE=proxy"
        )


class S3Presigner:
    """Presigned GETs with a ``response-content-disposition`` override."""

    kind: Literal["s3"] = "s3"

    def __init__(self, storage: S3Storage, *, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self._clock = clock
        self._signed = functools.lru_cache(maxsize=_CACHED)(self._sign)

    @functools.cached_property
    def origin(self) -> str:
        """Where the links point (the endpoint, or the bucket's virtual host), from one link;
        without credentials yet (links will fail then anyway), the client's endpoint."""
        try:
            url = self._sign("origin", int(self._clock()) + 60, "attachment")
        except StorageError:
            url = self.storage.client.meta.endpoint_url
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"

    def url(self, key: str, expires: int, disposition: str) -> str:
        return self._signed(key, expires, disposition)

    def _sign(self, key: str, expires: int, disposition: str) -> str:
        name = self.storage.prefix + check_key(key)
        # At least one second: a job past its expiry has no objects left to fetch anyway.
        lifetime = min(max(1, expires - int(self._clock())), MAX_LIFETIME_S)
        try:
            url: str = self.storage.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.storage.bucket,
                    "Key": name,
                    "ResponseContentDisposition": disposition,
                },
                ExpiresIn=lifetime,
            )
        except (BotoCoreError, ValueError) as e:  # no credentials, for one
            raise StorageError(f"cannot sign a link to {self.storage.url}: {describe(e)}") from None
        return url
