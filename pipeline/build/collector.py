"""Python's cyclic garbage collector, told to skip the objects that live as long as the
command.

Importing Prefect creates several hundred thousand objects (modules, classes, pydantic
schemas) that stay until the process exits. While they are created, allocation counts
set off collections that walk them; after, every full collection of the build walks them
again, and so do the collections of interpreter teardown. Frozen (moved to the
permanent generation), they are skipped; objects created later are collected as usual.
"""

from __future__ import annotations

import atexit
import functools
import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def long_lived() -> Iterator[None]:
    """No collection while the block runs (for imports: what they create stays); after
    it, everything alive is frozen, and collection resumes as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


@functools.cache  # one handler, however often a process asks
def skip_collection_at_exit() -> None:
    """At exit, freeze what is alive: teardown then frees it by reference count without
    walking it first."""
    atexit.register(gc.freeze)
