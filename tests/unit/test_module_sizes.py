"""The style rule the project holds itself to: no module over 400 lines, no
class over 250 (tools/check_sizes.py), so each concept reads in one sitting."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_module_or_class_over_the_limits():
    spec = importlib.util.spec_from_file_location("check_sizes", ROOT / "tools/check_sizes.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    assert check.offenders(ROOT) == []
