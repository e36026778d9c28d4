"""malloc tuning: freed image-sized buffers are reused, not faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Per "image", three 1 MiB buffers that live together, as a decoded mask and the arrays
# made from it do; prints the minor page faults 400 images took.
FILL = """
import resource, sys
import numpy as np
from pipeline.build.malloc import keep_freed_buffers
if sys.argv[1] == "tuned":
    assert keep_freed_buffers()
def image():
    buffers = [np.ones(2**20, np.uint8) for _ in range(3)]
    del buffers
image()  # warm-up: the first buffers are fresh either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(400):
    image()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", FILL, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_freed_buffers_are_reused() -> None:
    plain, tuned = _faults("plain"), _faults("tuned")
    assert plain > 400 * 256  # glibc trims the heap: fresh pages again for every image
    assert tuned < plain / 20
