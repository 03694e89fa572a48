"""What the CPU can do natively: bf16 autocast pays only with bf16 instructions.

On an x86 CPU without them (no ``avx512_bf16``, no AMX) PyTorch emulates bf16 and a training step
runs several times slower than fp32 (7x per recipe training step on a 2-core AVX2 EPYC, measured 2026-11),
so a user asking for ``trainer.precision=bf16-mixed`` there should hear it before an hour is lost.
"""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str] | None:
    """The x86 CPU's bf16 / AMX flags (e.g. ["amx_bf16", "avx512_bf16"]); None where that cannot be
    read (not Linux, not x86, no cpuinfo): unknown, not "none"."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))


def bf16_is_emulated(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True only when the CPU is known to lack native bf16 (an x86 CPU whose flags have none)."""
    return cpu_bf16_flags(cpuinfo) == []
