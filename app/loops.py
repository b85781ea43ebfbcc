"""One helper object per event loop, found without a lookup on the hot path."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Self


class PerLoop:
    """A subclass has one instance per event loop (``of(loop)``, made on first use; a worker
    runs one loop, tests make several one after another). The last one found is kept beside
    the registry: a request asks for its loop's instance without a dict lookup."""

    _instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]
    _last: tuple[asyncio.AbstractEventLoop, Any] | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._instances = weakref.WeakKeyDictionary()
        cls._last = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Self:
        last = cls._last
        if last is not None and last[0] is loop:
            mine: Self = last[1]
            return mine
        found: Self | None = cls._instances.get(loop)
        if found is None:
            found = cls._instances[loop] = cls(loop)
        cls._last = (loop, found)
        return found
