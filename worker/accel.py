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


def find() -> tuple[ModuleType | None, str]:
    """(the extension or None, what the worker runs and why), the latter for its start-up log."""
    if os.environ.get("TWINDNS_PURE_PYTHON"):
        return None, "pure Python (TWINDNS_PURE_PYTHON is set)"
    try:
        from worker import _fastwire
    except ImportError:
        return None, "pure Python (worker/_fastwire.c not built: no C compiler or Python headers at install)"
    source = Path(__file__).with_name("_fastwire.c")
    try:
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
    except OSError:
        return _fastwire, "C accelerator"     # installed without its source: built from the version installed
    if digest != _fastwire.SOURCE_SHA256:
        return None, "pure Python (worker/_fastwire.c changed since it was built: pip install again)"
    return _fastwire, "C accelerator"
