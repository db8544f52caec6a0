#!/usr/bin/env python3
"""Instructions per cache miss, counted by callgrind: a figure the noisy
CPU time of a shared machine cannot blur (identical runs of
bench/micro_miss.py vary by 30% there).

    python3 bench/miss_instructions.py [--small 1000] [--large 5000] [micro_miss options ...]

Runs bench/micro_miss.py under valgrind --tool=callgrind twice, with
--small and --large misses, and prints (large - small) / (large - small
misses): start-up, imports and the warm-up cancel out. The upstream
responder is a child process and is not counted; the worker package is
this tree's, not whichever is installed. Needs valgrind (Debian:
apt install valgrind); ~1 minute.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

MICRO = Path(__file__).with_name("micro_miss.py")
# This tree's worker package, whatever the interpreter has installed.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(MICRO.parent.parent),
                                                              os.environ.get("PYTHONPATH")]))}


def instructions(misses: int, extra: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, str(MICRO), "--misses", str(misses), *extra],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        if found is None:
            raise SystemExit(f"no instruction total in {out}")
        return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=5000)
    args, extra = ap.parse_known_args()
    small, large = instructions(args.small, extra), instructions(args.large, extra)
    per_miss = (large - small) / (args.large - args.small)
    print(f"{per_miss:,.0f} instructions per miss ({args.small}: {small:,}, {args.large}: {large:,}"
          f"{', ' + ' '.join(extra) if extra else ''})")


if __name__ == "__main__":
    main()
