"""precision="auto": bf16 autocast only where the hardware computes bf16 natively.

The capability probes are mocked, so every branch of the decision is checked on any machine.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from adarec import precision as P
from adarec.errors import SpecError

X86 = {"architecture": "x86_64", "avx2": True}


def fake(monkeypatch: pytest.MonkeyPatch, caps: dict[str, Any], isa: str = "AVX512",
         onednn: bool = True) -> None:
    monkeypatch.setattr(P, "_cpu_capabilities", lambda: dict(caps))
    monkeypatch.setattr(P, "_onednn_bf16", lambda: onednn)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: isa)
    monkeypatch.setattr(P, "_said", set())


@pytest.mark.parametrize(("caps", "isa", "onednn", "expected"), [
    (X86, "AVX2", False, torch.float32),                                   # AVX2-only CPU
    ({**X86, "avx512_f": True}, "AVX512", False, torch.float32),           # AVX512, no BF16
    ({**X86, "avx512_bf16": True}, "AVX512", True, torch.bfloat16),        # Cooper Lake+
    ({**X86, "amx_bf16": True}, "AVX512", True, torch.bfloat16),           # Sapphire Rapids+
    ({**X86, "avx512_bf16": True}, "AVX2", True, torch.float32),           # ATEN_CPU_CAPABILITY
    ({**X86, "avx512_bf16": True}, "AVX512", False, torch.float32),        # ONEDNN_MAX_CPU_ISA
    ({"architecture": "aarch64", "bf16": True}, "DEFAULT", True, torch.bfloat16),
    ({"architecture": "aarch64", "bf16": False}, "DEFAULT", True, torch.float32),
    ({"architecture": "riscv64"}, "DEFAULT", True, torch.float32),
])
def test_auto_decision(monkeypatch: pytest.MonkeyPatch, caps: dict[str, Any], isa: str,
                       onednn: bool, expected: torch.dtype) -> None:
    fake(monkeypatch, caps, isa, onednn)
    assert P.resolve_precision("auto", "cpu") == expected
    with P.autocast("auto", "cpu"):
        assert torch.is_autocast_enabled("cpu") == (expected == torch.bfloat16)


def test_explicit_precisions_are_taken_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    fake(monkeypatch, X86, "AVX2", False)
    assert P.resolve_precision("bf16") == torch.bfloat16
    assert P.resolve_precision("fp32") == torch.float32
    with P.autocast("bf16"):
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(SpecError, match="precision='fp16'"):
        P.resolve_precision("fp16")


def test_cuda_and_other_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.native_bf16("cuda")[0]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert not P.native_bf16("cuda")[0]
    assert not P.native_bf16("meta")[0]


def test_decision_is_logged_once_with_its_reason(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    fake(monkeypatch, X86, "AVX2", False)
    with caplog.at_level(logging.INFO, logger="adarec.precision"):
        for _ in range(3):
            P.resolve_precision("auto", "cpu")
    lines = [r.getMessage() for r in caplog.records if r.name == "adarec.precision"]
    assert len(lines) == 1
    assert "no AVX512-BF16 or AMX-BF16" in lines[0] and "fp32" in lines[0]


def test_real_probe_runs() -> None:
    ok, why = P.native_bf16("cpu")
    assert isinstance(ok, bool) and why
