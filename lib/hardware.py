"""The CPU a number was measured on. Machines of one cloud "kind" differ (AMD EPYC with AVX-512 here, Intel
Xeon with AMX there), and which kernels PyTorch and ONNX Runtime pick follows the instruction sets, so a
timing, or a score that must repeat bit for bit, is only comparable on the same model and flags."""
import platform
from pathlib import Path

# the instruction sets that change which matmul kernels run (fp32, bf16, int8)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    info = {}
    path = Path("/proc/cpuinfo")
    for line in path.read_text().splitlines() if path.exists() else []:
        if not line.strip():
            break
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    present = set(_cpuinfo().get("flags", "").split())
    return [f for f in ISA_FLAGS if f in present]


def cpu() -> str:
    """One string naming the CPU and its relevant flags, e.g. 'AMD EPYC 9B14 [avx2 avx512f avx512_vnni]'."""
    return f"{cpu_model()} [{' '.join(isa_flags()) or 'no ' + ISA_FLAGS[0]}]"
