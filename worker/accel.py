"""The C extensions: the accelerator of the miss path (worker/_fastwire.c)
and the pair's claim table (worker/_claims.c), each when it is built and
current; None otherwise, and the pure-Python reference runs.

TWINDNS_PURE_PYTHON=1 turns it off (for comparisons and benchmarks). An
extension built from another version of the C source than the one beside
this file (an edited checkout not rebuilt) is not used: it would disagree
with the Python it accelerates.
"""
from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from types import ModuleType


def find(name: str = "_fastwire", built: str = "C accelerator",
         fallback: str = "pure Python") -> tuple[ModuleType | None, str]:
    """(the extension `worker.<name>` or None, what the worker runs and why),
    the latter for its start-up log: `built` with it, `fallback` without."""
    if os.environ.get("TWINDNS_PURE_PYTHON"):
        return None, f"{fallback} (TWINDNS_PURE_PYTHON is set)"
    try:
        module = importlib.import_module(f"worker.{name}")
    except ImportError:
        return None, f"{fallback} (worker/{name}.c not built: no C compiler or Python headers at install)"
    source = Path(__file__).with_name(f"{name}.c")
    try:
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
    except OSError:
        return module, built     # installed without its source: built from the version installed
    if digest != module.SOURCE_SHA256:
        return None, f"{fallback} (worker/{name}.c changed since it was built: pip install again)"
    return module, built
