"""CPU memory-allocator tuning shared by the command-line entry points."""
import ctypes
import sys


def tune_cpu_allocator() -> bool:
    """Make glibc's malloc keep freed memory for reuse; returns whether it applied.

    A training iteration or a full-size forward allocates and frees gigabytes of activations.
    With glibc's defaults every large block is a fresh mmap that the kernel zero-fills page by page on first touch: measured at
    15 of 23 s of a paper-size CPU iteration (batch 3, patch 128). With the mmap and trim
    thresholds raised, the heap keeps those pages and reuses them; the process's RSS stays at
    its peak. Process-wide, so command-line entry points apply it (``trainer_bary.py``,
    ``tester_bary.py``, ``make demo``), never library functions.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))
    except (OSError, AttributeError):  # not glibc
        return False
