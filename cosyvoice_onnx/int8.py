"""How wide the int8 exports' weights are, and which CPUs compute full-width int8 weights wrongly.

ONNX Runtime multiplies dynamically quantized MatMuls (uint8 activations x int8 weights) on x86 CPUs without a
VNNI dot-product unit (AVX2 only: AMD before Zen 4, Intel before Ice Lake / Alder Lake) with vpmaddubsw, which
adds two uint8*int8 products in int16 and saturates once they pass 32767: 255 * 127 * 2 does, 255 * 63 * 2 does
not. With full-range 8-bit weights the real-size flow estimator came out 11 % RMS off fp32 on an AVX2 AMD EPYC
instead of 1.7 % (exact 8-bit math); 7-bit weights (onnxruntime's `reduce_range`) gave 1.9 % there and give the
same numbers on every CPU, at the same speed. So 7 bits is the default and 8 bits an option for deployments that
only run on VNNI/AMX (or ARM) CPUs. The batched and single decode graphs use MatMulNBits, which is not affected.
"""

from __future__ import annotations

import platform
from pathlib import Path

from .errors import InputError

# The stages whose int8 graphs hold dynamically quantized MatMuls: the LM prefill and the flow estimator (the LM
# decode uses MatMulNBits; the vocoder runs its fp32 graphs at every precision).
QUANTIZED_STAGES = ("lm", "flow")
WEIGHT_BITS = (7, 8)
DEFAULT_WEIGHT_BITS = 7
# The manifest key under which an export records its int8 weight width; exports older than the option lack it
# and were written with 8 bits.
MANIFEST_KEY = "int8_weight_bits"
UNRECORDED_WEIGHT_BITS = 8
# CPU flags (Linux /proc/cpuinfo names) whose int8 dot products accumulate in int32 without saturating.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
CPUINFO = Path("/proc/cpuinfo")


def parse_weight_bits(value: int | str) -> int:
    """7 or 8, from the CLI or an API caller; anything else is an InputError naming the choices."""
    if isinstance(value, str) and value.strip().isdigit():
        bits = int(value)
    else:
        bits = value if type(value) is int else None  # not 7.5 or True, which int() would take
    if bits not in WEIGHT_BITS:
        raise InputError(f"int8 weight bits {value!r}: choose 7 (exact on every CPU) or 8 (exact only on CPUs "
                         "with AVX-VNNI, AVX512-VNNI or AMX)")
    return bits


def cpu_saturates_full_range(machine: str | None = None, cpuinfo: Path = CPUINFO) -> bool | None:
    """True on an x86 CPU whose flags name no VNNI/AMX unit, False where int8 products cannot saturate, None where
    this platform does not say (no /proc/cpuinfo)."""
    machine = (machine or platform.machine()).lower()
    if machine not in X86_MACHINES:
        return False
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags") and ":" in line), None)
    if flags is None:
        return None
    return not VNNI_FLAGS.intersection(flags)


def weight_bits_of(manifest: dict) -> int:
    """The int8 weight width an export was made with (8 for exports older than the record)."""
    return manifest.get(MANIFEST_KEY, UNRECORDED_WEIGHT_BITS)


def full_range_notice(manifest: dict, export_dir: Path, saturates: bool | None = None) -> str | None:
    """A warning when this export's int8 graphs have 8-bit weights and this CPU saturates them, else None."""
    if weight_bits_of(manifest) != 8 or not (cpu_saturates_full_range() if saturates is None else saturates):
        return None
    return (f"{export_dir}: its int8 graphs have full-range 8-bit weights, which ONNX Runtime computes with "
            "saturating sums on this CPU (no AVX-VNNI/AVX512-VNNI/AMX): int8 output drifts far from fp32 (11 % RMS "
            "on the flow). Re-export int8 with 7-bit weights, the default: `cosyvoice-onnx export --model DIR "
            "--precision int8`")
