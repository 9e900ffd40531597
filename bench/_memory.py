"""Resident memory of this process, for the benchmarks' peak-memory columns."""


def rss_mib() -> float:
    """Current resident set size in MiB (Linux ``/proc``; NaN elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
