"""The machine a number was measured on, and what a process used of it.

Speeds and memory only mean something next to the CPU that produced them, so every benchmark
and example states it the same way (`describe_cpu`) and reads memory the same way
(`peak_rss_bytes`: the kernel's per-process high-water mark).
"""

from __future__ import annotations

import ctypes
import resource
import sys
from pathlib import Path

import torch

from .precision import cpu_description


def describe_cpu() -> str:
    """CPU model, cores, native bf16 (detected through torch, `adarec.precision`), torch
    threads, ATen capability and torch version: one line for every report."""
    return (f"CPU: {cpu_description()}; {torch.get_num_threads()} torch thread(s); ATen "
            f"capability {torch.backends.cpu.get_cpu_capability()}; torch {torch.__version__}")


def _proc_status(field: str) -> int | None:
    """A ``/proc/self/status`` memory field in bytes (None where there is no procfs)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """This process's resident set size now (0 where the platform does not say)."""
    return _proc_status("VmRSS") or 0


def peak_rss_bytes() -> int:
    """This process's resident high-water mark: ``VmHWM`` where there is procfs (resettable,
    see `reset_peak_rss`), else ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    peak = _proc_status("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def reset_peak_rss() -> bool:
    """Reset the high-water mark to the current RSS (Linux >= 4.0: ``5 > clear_refs``), so a
    later `peak_rss_bytes` measures only what came after; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def fixed_mmap_threshold(size: int = 1 << 20) -> None:
    """glibc raises its mmap threshold as big tensors are freed, then serves later ones from a
    heap that fragments when every batch has other shapes (texts trimmed per batch): RSS grew
    past 9 GB in a prompt-tuning run. A fixed threshold hands big blocks back to the OS."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to do
        return
    libc.mallopt(-3, size)  # M_MMAP_THRESHOLD


__all__ = ["describe_cpu", "fixed_mmap_threshold", "peak_rss_bytes", "reset_peak_rss",
           "rss_bytes"]
