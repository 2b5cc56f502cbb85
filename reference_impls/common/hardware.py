"""What the CPU can do, read without importing torch (the search index keys its cache on it)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path


@cache
def native_bf16() -> bool:
    """Whether this CPU has native bf16 dot products (AVX512-BF16 or AMX): bf16 autocast pays off only
    there (2-2.6x measured on 2 cores); elsewhere it emulates bf16 and is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None
