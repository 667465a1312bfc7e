"""Which config fields a piece of code reads: the honesty tests' probe (every knob works or refuses)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from alignkit.config import Section


@contextlib.contextmanager
def recording_reads() -> Iterator[set[tuple[str, str]]]:
    """Within the block, every read of a config field is recorded as (section class, field) in the yielded set."""
    reads: set[tuple[str, str]] = set()
    original = Section.__getattribute__

    def recording(self, name):
        if name in type(self).model_fields:
            reads.add((type(self).__name__, name))
        return original(self, name)

    Section.__getattribute__ = recording
    try:
        yield reads
    finally:
        Section.__getattribute__ = original
