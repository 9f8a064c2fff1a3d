"""The CPU a process runs on: its model and the ISA extensions bertc's speed depends on.

Read from /proc/cpuinfo (Linux), never assumed: bertc is built, tested and
benchmarked on CPUs that differ between sessions (an AVX2-only Zen 1, an
AVX512-BF16 Zen 4, a Xeon with AMX), and so do its users'.  What each flag
changes (BUILD_NOTES.md, "Which figures depend on the CPU"):
  avx2          the floor TensorFlow's x86 wheels are built for
  avx512f       oneDNN's AVX-512 fp32 kernels
  avx512_bf16   bfloat16 dot products (--dtype bfloat16 pays off)
  avx512_vnni   int8 dot products (and TensorFlow turns oneDNN on by default)
  amx_bf16      AMX tiles: bfloat16 matmuls several times the fp32 rate
  amx_int8      AMX tiles for int8
  avx512_fp16   float16 arithmetic (--dtype float16 runs natively)
"""

import functools
import os
import platform
from typing import Dict, List

#: The ISA flags benchmarks print and the manifest records, in this order.
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8",
             "avx512_fp16")
CPUINFO = "/proc/cpuinfo"


@functools.lru_cache(maxsize=None)
def _cpuinfo_fields(path: str = CPUINFO) -> Dict[str, str]:
    """The first processor's 'key: value' lines of /proc/cpuinfo ({} elsewhere), read
    once per process (describe() and header() ask for the model and the flags)."""
    fields = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model(path: str = CPUINFO) -> str:
    """E.g. 'AMD EPYC 7571' or 'Intel(R) Xeon(R) Processor'; platform's guess elsewhere."""
    return _cpuinfo_fields(path).get("model name") or platform.processor() or "unknown"


def cpu_vendor(path: str = CPUINFO) -> str:
    """/proc/cpuinfo's vendor_id: 'GenuineIntel', 'AuthenticAMD' ('' elsewhere)."""
    return _cpuinfo_fields(path).get("vendor_id", "")


def isa_flags(path: str = CPUINFO) -> Dict[str, bool]:
    """{flag: present} for ISA_FLAGS."""
    present = set(_cpuinfo_fields(path).get("flags", "").split())
    return {flag: flag in present for flag in ISA_FLAGS}


def present_flags(path: str = CPUINFO) -> List[str]:
    return [flag for flag, present in isa_flags(path).items() if present]


def describe(path: str = CPUINFO) -> dict:
    """What a manifest or a benchmark records: model, cores, ISA flags."""
    return {"model": cpu_model(path), "vendor": cpu_vendor(path), "cores": os.cpu_count(),
            "isa": isa_flags(path)}


def header(path: str = CPUINFO) -> str:
    """One line for the top of a benchmark's output."""
    flags = isa_flags(path)
    return (f"CPU: {cpu_model(path)}, {os.cpu_count()} cores; ISA: "
            + " ".join(f"{name}{'+' if on else '-'}" for name, on in flags.items()))
