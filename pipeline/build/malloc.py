"""glibc's malloc, told to keep the image-sized buffers a build frees.

By default glibc gives every freed block over 128 KiB (a threshold it raises to at most
32 MiB as it goes) back to the kernel, and trims the heap whenever its free top passes
twice that. A build allocates and frees a few such buffers per image (decoded masks,
label arrays, thresholds), so each new one started as fresh pages and paid a page fault
per 4 KiB: about 900 faults per 600x500 image, a quarter of the build's time. With fixed
thresholds the freed buffers are reused; the peak memory is unchanged.
"""

from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # blocks above this (whole volumes, batch payloads) still use mmap
TRIM_THRESHOLD = 64 * 2**20  # at most this much freed memory is kept at the heap top


@functools.cache  # once per process, however many tasks ask
def keep_freed_buffers() -> bool:
    """Tune this process's malloc (glibc only); False where it is another C library."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
