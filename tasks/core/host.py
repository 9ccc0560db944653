"""The CPU this process runs on, as every speed figure states it: model name and vector/matrix extensions.

An artifact's speed depends on the instruction sets the host offers (INT8 convolutions run on VNNI or AMX where
present, on plain AVX2 otherwise), so the export stage records them with its selection and every benchmark table
prints them.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
"""The extensions named (``/proc/cpuinfo`` flag names), in the order they are listed."""


def cpu() -> dict[str, Any]:
    """The CPU's model name, its headline ISA (``AVX-512 VNNI``, ``AVX2``, else the machine), every extension of
    :data:`ISA_FLAGS` it reports (``/proc/cpuinfo``; none where that file is missing) and the core count."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    present = set(info.split())
    isa = "AVX-512 VNNI" if "avx512_vnni" in present else "AVX2" if "avx2" in present else platform.machine()
    model = re.search(r"model name\s*:\s*(.+)", info)
    return {
        "cpu": model[1].strip() if model else platform.processor() or platform.machine(),
        "isa": isa,
        "isa_flags": [flag for flag in ISA_FLAGS if flag in present],
        "cores": os.cpu_count(),
    }


def describe(host: dict[str, Any]) -> str:
    """``AMD EPYC (avx2, avx512f, avx512_vnni)``: a :func:`cpu` record in one line (its ISA when no flag is known)."""
    return f"{host.get('cpu', '?')} ({', '.join(host.get('isa_flags') or []) or host.get('isa', '?')})"
