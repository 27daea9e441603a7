"""Process memory settings for chunk work: what a big chunk freed goes back to the OS instead of staying reserved.

A chunk's frames live briefly and chunks differ a lot in size; Arrow's default pool (mimalloc) and glibc's
per-thread arenas keep what the largest chunk needed. Measured with the import process of 1,000 chats / 100k
messages (~5,000 messages per chunk): peak RSS 410 MB stock, 322 MB with the system pool, 304 MB with both
settings (bench/README.md). Call before the first frame is built: Arrow's C++ side reads its pool choice once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_ARENA_MAX = -8  # glibc mallopt parameter
ARENAS = 2


@functools.cache
def use_lean_allocators() -> None:
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())  # in case Arrow had already picked its pool
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "mallopt"):  # glibc only; elsewhere the default allocator stays
            libc.mallopt(M_ARENA_MAX, ARENAS)
