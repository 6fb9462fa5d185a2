"""glibc malloc settings for processes that move camera-sized buffers every frame.

By default glibc serves each buffer over ~128 KiB with its own mmap and unmaps it on free, so
every frame pays page faults again: 0.9 ms of the ~1 ms it took the image source to build a
640x480 message, and 27-48 % kernel time in CPU inference. Keeping freed memory in the heap
removes that; the heap stays at its high-water mark, which for these processes is steady.
"""
from __future__ import annotations

import ctypes
import os

__all__ = ['tune_malloc']

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4  # mallopt parameter numbers (malloc.h)


def tune_malloc() -> bool:
    """Stop glibc from handing large freed buffers back to the OS; call once, early in main.

    Returns False (and changes nothing) where the C library is not glibc, or where the user
    already tuned malloc through GLIBC_TUNABLES: their setting wins.
    """
    if 'glibc.malloc.' in os.environ.get('GLIBC_TUNABLES', ''):
        return False
    try:
        libc = ctypes.CDLL('libc.so.6')
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1  # large buffers come from the heap, not mmap
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1  # and the heap is never trimmed
        ok &= libc.mallopt(_M_TOP_PAD, 256 * 1024 * 1024) == 1  # grown in big steps
        return bool(ok)
    except (OSError, AttributeError):
        return False
