"""What this CPU can do that changes how fast training runs: its vector instructions, read from
/proc/cpuinfo (empty where there is none, as on macOS and Windows)."""
from __future__ import annotations

import functools
import platform
from pathlib import Path

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # the /proc/cpuinfo flags of native bfloat16 arithmetic


@functools.cache
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpuinfo_field(name: str) -> str:
    """The first processor's ``name`` field of /proc/cpuinfo ("" when absent)."""
    for line in _cpuinfo().splitlines():
        if line.split(":", 1)[0].strip() == name:
            return line.split(":", 1)[1].strip()
    return ""


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The instruction-set flags of /proc/cpuinfo (an empty set where it cannot be read)."""
    return set(cpuinfo_field("flags").split())


def cpu_isa() -> str:
    """The widest vector instructions this CPU has ("unknown" where the flags cannot be read). A
    virtual machine's "AMD EPYC" can name two generations whose training steps differ by 1.7x (one
    with AVX-512 BF16, one with AVX2 only), so benchmarks record this beside the model name."""
    flags = cpu_flags()
    for flag in (*BF16_FLAGS, "avx512f", "avx2"):
        if flag in flags:
            return flag
    return "unknown"


def native_bf16() -> bool | None:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), None where the flags cannot
    be read. Where it does, bf16 autocast trains the convolutional models faster than float32
    (docs/scaling.md); where it does not, bfloat16 is emulated and slower than float32."""
    flags = cpu_flags()
    if not flags:
        return None
    return not flags.isdisjoint(BF16_FLAGS)
