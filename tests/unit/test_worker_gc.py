"""The worker's collector settings (worker.main.tune_gc): what is loaded
before serving is frozen out of every collection, and young collections
run GC_YOUNG_THRESHOLD allocations apart. In a child process, so pytest's
own collector stays as it is."""
from __future__ import annotations

import json
import subprocess
import sys

from worker.main import GC_YOUNG_THRESHOLD

PROBE = """
import gc, json
from worker import main
default = gc.get_threshold()
main.tune_gc()
print(json.dumps({"default": default, "tuned": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                  "enabled": gc.isenabled()}))
"""


def test_tune_gc_freezes_what_is_loaded_and_spaces_young_collections_but_keeps_collecting():
    out = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                    check=True).stdout)
    assert out["tuned"] == [GC_YOUNG_THRESHOLD, *out["default"][1:]]
    assert out["tuned"][0] > out["default"][0]
    assert out["frozen"] > 10_000          # the worker's modules, dnspython, uvloop
    assert out["enabled"]
