"""Mixed precision that never makes a run slower: ``precision="auto"``.

bf16 autocast pays only where the hardware computes in bf16. On a CPU without native bf16
instructions every bf16 matmul is emulated, and a training step becomes *much* slower, not faster
(measured on an AVX2-only CPU: MiniLM forward + backward on 64 titles 2.0-2.7 s in fp32, 31-32 s
under bf16 autocast). So ``"auto"`` picks bf16 only on

- a CUDA GPU that supports it (``torch.cuda.is_bf16_supported()``), or
- a CPU whose instruction set has native bf16 (x86: AVX512-BF16 or AMX-BF16; ARM: the BF16
  extension) **and** whose kernels may use it: oneDNN must report bf16 support
  (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, which honours ``ONEDNN_MAX_CPU_ISA``) and,
  on x86, ATen's vectorised kernels must run at AVX512 (``torch.backends.cpu.get_cpu_capability()``,
  which honours ``ATEN_CPU_CAPABILITY``);

and fp32 everywhere else. The decision and its reason are logged once per device (logger
``adarec.precision``), so a run says why it is not using bf16.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import SpecError

PRECISIONS = ("auto", "bf16", "fp32")
logger = logging.getLogger(__name__)
_said: set[tuple[str, str]] = set()


def _cpu_capabilities() -> dict[str, Any]:
    """``torch.cpu.get_capabilities()`` (torch >= 2.8), else what older torch can tell."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if callable(get):
        return dict(get())
    caps: dict[str, Any] = {}
    for key, probe in (("avx512_bf16", "_is_avx512_bf16_supported"),
                       ("amx_tile", "_is_amx_tile_supported")):
        fn = getattr(torch.cpu, probe, None)
        caps[key] = bool(fn()) if callable(fn) else False
    import platform

    caps["architecture"] = platform.machine().lower()
    return caps


def _onednn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def native_bf16(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and why (one short sentence)."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, f"CUDA device {'supports' if ok else 'does not support'} bf16"
    if device.type != "cpu":
        return False, f"no bf16 capability check for device type {device.type!r}"
    caps = _cpu_capabilities()
    arch = str(caps.get("architecture", "")).lower()
    if arch in ("x86_64", "amd64", "x86", "i686"):
        hw = bool(caps.get("avx512_bf16")) or bool(caps.get("amx_bf16"))
        if not hw:
            return False, "the CPU has no AVX512-BF16 or AMX-BF16 instructions"
        isa = torch.backends.cpu.get_cpu_capability()
        if not isa.upper().startswith("AVX512"):
            return False, (f"ATen kernels run at {isa} (ATEN_CPU_CAPABILITY?), below the AVX512 "
                           "needed for native bf16")
    elif arch in ("arm64", "aarch64"):
        if not (caps.get("bf16") or caps.get("sve_bf16")):
            return False, "the CPU has no BF16 extension"
    else:
        return False, f"no native bf16 known for CPU architecture {arch or 'unknown'!r}"
    if not _onednn_bf16():
        return False, "oneDNN reports no bf16 support (ONEDNN_MAX_CPU_ISA?)"
    return True, "the CPU computes bf16 natively"


def resolve_precision(precision: str = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """The compute dtype for ``precision`` on ``device``: ``torch.bfloat16`` or
    ``torch.float32``. ``"bf16"`` and ``"fp32"`` are taken as given; ``"auto"`` asks
    `native_bf16` and logs its decision once per device."""
    if precision not in PRECISIONS:
        raise SpecError(f"precision={precision!r} is not one of {list(PRECISIONS)}")
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    device = torch.device(device)
    ok, why = native_bf16(device)
    dtype = torch.bfloat16 if ok else torch.float32
    key = (str(device), str(dtype))
    if key not in _said:
        _said.add(key)
        choice = "bf16 autocast" if ok else "fp32 (bf16 autocast would be emulated: slower)"
        logger.info("precision auto on %s: %s, so %s", device, why, choice)
    return dtype


@contextlib.contextmanager
def autocast(precision: str = "auto", device: torch.device | str = "cpu") -> Iterator[None]:
    """``torch.autocast`` in bf16 when `resolve_precision` says so, else a no-op context
    (weights stay float32 either way)."""
    device = torch.device(device)
    dtype = resolve_precision(precision, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        yield


SIZES_PER_OCTAVE = 8
"""How finely `stable_size` rounds: 8 sizes between n and 2n, so at most 12.5 % padding."""
_OCTAVE_BITS = SIZES_PER_OCTAVE.bit_length() - 1


def stable_size(n: int, device: torch.device | str = "cpu") -> int:
    """The size to pad a batch-dependent matmul dimension of ``n`` rows to: under CPU autocast
    ``n`` rounded up to one of `SIZES_PER_OCTAVE` sizes per power of two, elsewhere ``n``.

    Why: under CPU bf16 autocast oneDNN builds a matmul kernel for every new shape and keeps
    it for the whole process (about 2 MB each). A training step whose shapes follow the batch
    (its distinct items, its target positions) meets new shapes every step: training the
    side network over cached states on MovieLens-100k grew the resident memory by about
    7 MB a step, 740 MB in one epoch. With rounded sizes the shapes repeat and memory stays
    flat. fp32 (MKL) and CUDA keep no per-shape state, so they get ``n`` unchanged."""
    if n <= 16 or torch.device(device).type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return n
    step = 1 << (n.bit_length() - 1 - _OCTAVE_BITS)  # n in [2^k, 2^(k+1)): steps of 2^(k-3)
    return -(-n // step) * step


def cpu_description() -> str:
    """The CPU model, its core count and whether it computes bf16 natively: what every reported
    number should be stated next to (speeds and the precision "auto" picks depend on both)."""
    name = platform.processor() or platform.machine() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ok, why = native_bf16("cpu")
    return f"{name}, {os.cpu_count()} cores, native bf16: {'yes' if ok else 'no'} ({why})"


__all__ = ["PRECISIONS", "SIZES_PER_OCTAVE", "autocast", "cpu_description", "native_bf16",
           "resolve_precision", "stable_size"]
