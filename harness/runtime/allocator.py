"""The C allocator of a process that trains or samples on a CPU: freed memory kept for the next step instead of being
handed back to the kernel and faulted in again.

glibc's malloc serves large blocks (an activation of a batch) with mmap and returns them with munmap when freed, and
trims the heap's free top back to the kernel, so every training step of a small student faults its activations
in afresh: ConvNet-3 at 28 px, batch 64, one thread, spent ~12,000 page faults a step (81.5 ms a step in fp32;
with the blocks kept, 0 faults and 54–60 ms; batch 256: 367 → 223 ms; docs/performance.md). Kept memory is
bounded: at most `TRIM_ABOVE` of freed memory stays above the heap's live top, and a shard's peak-memory
measurement hands it back before it starts (`release_freed_memory`). Arithmetic is untouched, so no number
changes. Where the C library has no glibc `mallopt` (macOS, musl's stub) nothing is changed.
"""

from __future__ import annotations

import ctypes

# glibc's malloc.h parameters.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
# Freed memory at the heap's top that is kept rather than returned (the kernel gets back what is above it).
TRIM_ABOVE = 1 << 30

_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Serve every block from the heap (no mmap) and keep up to TRIM_ABOVE of freed memory; True where it applied.
    Idempotent: Ray reuses a worker process for many trials."""
    global _tuned
    if _tuned is None:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            _tuned = False
        else:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            _tuned = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE))
    return _tuned


def release_freed_memory() -> None:
    """Hand the kept freed memory back to the kernel now (glibc `malloc_trim`), so that a measurement of resident
    memory that starts here counts what is live, not what earlier work freed. Costs one round of page faults."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
