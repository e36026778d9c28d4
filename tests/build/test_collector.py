"""The collector skips what a command's imports create, and teardown walks nothing."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pipeline.build.collector import long_lived


@pytest.fixture
def collector() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_no_collection_inside_and_what_lives_is_frozen_after(collector: None) -> None:
    gc.enable()
    gc.unfreeze()
    with long_lived():
        assert not gc.isenabled()
        kept = Cycle()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects())  # frozen objects are not tracked gens
    Cycle()  # garbage made after the block is still collected
    assert gc.collect() > 0


def test_collection_stays_off_when_it_was(collector: None) -> None:
    gc.disable()
    with long_lived():
        pass
    assert not gc.isenabled()


def test_collection_resumes_when_the_block_raises(collector: None) -> None:
    gc.enable()
    with pytest.raises(RuntimeError), long_lived():
        raise RuntimeError("import failed")
    assert gc.isenabled()


def test_at_exit_what_is_alive_is_frozen_once() -> None:
    code = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
        "from pipeline.build.collector import skip_collection_at_exit\n"
        "before = atexit._ncallbacks()\n"
        "skip_collection_at_exit(); skip_collection_at_exit()\n"
        "print('added', atexit._ncallbacks() - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[:2] == ["added 1", "frozen True"]
