"""The C allocator of a process that trains or samples on a CPU: freed memory kept for the next step instead of being
handed back to the kernel and faulted in again.

glibc's malloc serves large blocks (an activation of a batch) with mmap and returns them with munmap when freed, and
trims the heap's free top back to the kernel, so every training step of a small student faults its activations
in afresh: ConvNet-3 at 28 px, batch 64, one thread, spent ~12,000 page faults a step (81.5 ms a step in fp32;
with the blocks kept, 0 faults and 54–60 ms; batch 256: 367 → 223 ms; docs/performance.md). Arithmetic is
untouched, so no number changes.

What is kept: every block comes from the heap, and up to `TRIM_ABOVE` of free memory at the heap's top stays.
A freed block below a live one stays too, whatever its size, so work that starts in a reused process first hands
back what earlier work left (`release_freed_memory`: each evaluate group, search trial and measured shard).
glibc gives each thread beyond the first its own arena, where blocks above 64 MiB are still mmapped: training
that Ray Tune or Ray Train runs in a thread of its own gains less (measured by the review: 70 MiB blocks faulted
as before in a thread). Where the C library is not glibc (macOS, musl, Windows) nothing is changed.
"""

from __future__ import annotations

import ctypes

# glibc's malloc.h parameters.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
# Freed memory at the heap's top that is kept rather than returned (the kernel gets back what is above it).
TRIM_ABOVE = 1 << 30

_tuned: bool | None = None


def _libc_function(name: str):
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no process-wide CDLL(None)
        return None


def keep_freed_memory() -> bool:
    """Serve every block from the heap (no mmap) and keep up to TRIM_ABOVE of freed memory; True where it applied.
    Idempotent: Ray reuses a worker process for many trials."""
    global _tuned
    if _tuned is None:
        mallopt = _libc_function("mallopt")
        if mallopt is None:
            _tuned = False
        else:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            _tuned = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))
    return _tuned


def release_freed_memory() -> None:
    """Hand the kept freed memory back to the kernel now (glibc `malloc_trim`), so that the work starting here holds
    only what is live and a measurement of resident memory that starts here counts only that. Costs one round of
    page faults."""
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim.argtypes, malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
        malloc_trim(0)
