"""The C accelerator of the miss path (worker/_fastwire.c), when it is
built and current; None otherwise, and the pure-Python reference runs.

TWINDNS_PURE_PYTHON=1 turns it off (for comparisons and benchmarks). An
extension built from another version of the C source than the one beside
this file (an edited checkout not rebuilt) is not used: it would disagree
with the Python it accelerates.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import ModuleType


def load() -> ModuleType | None:
    if os.environ.get("TWINDNS_PURE_PYTHON"):
        return None
    try:
        from worker import _fastwire
    except ImportError:
        return None
    source = Path(__file__).with_name("_fastwire.c")
    try:
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
    except OSError:
        return _fastwire        # installed without its source: built from the version installed
    return _fastwire if digest == _fastwire.SOURCE_SHA256 else None
