"""Blocking work (the store, storage, ffprobe) off the event loop."""

from __future__ import annotations

import functools
from typing import Any

import anyio.to_thread


async def in_thread(func: Any, *args: Any, **kwargs: Any) -> Any:
    return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs))
