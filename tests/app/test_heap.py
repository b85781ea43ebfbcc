"""``settle_heap``: what a model load leaves is collected once, then frozen out of the
collector's sight, so no full collection walks it again while requests run."""

from __future__ import annotations

import gc
import weakref

from app.main import settle_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_garbage_is_collected_and_the_rest_frozen() -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    dead = weakref.ref(a)
    del a, b
    try:
        settle_heap()
        assert dead() is None  # collected before the freeze, not frozen with the rest
        assert gc.get_freeze_count() > 0
        frozen = gc.get_freeze_count()
        settle_heap()  # the next swap unfreezes, collects and freezes again
        assert gc.get_freeze_count() > 0 and abs(gc.get_freeze_count() - frozen) < frozen
    finally:
        gc.unfreeze()
