"""The pair's claim table as the supervisor makes it and both workers map
it (worker/claims.py says what it holds and why)."""
from __future__ import annotations

import fcntl
import os

# Slots of 8 bytes (128 KiB). Misses in flight at once are bounded by
# max_concurrent per worker (2,048 by default), so the default pair fills at
# most a quarter of it; keys whose slots are all taken fall back to the
# crc32 rule.
TABLE_SLOTS = 1 << 14
TABLE_BYTES = 8 * TABLE_SLOTS


def make_table_fd() -> int:
    """A new, zeroed table: a sealed memfd neither worker can shrink under
    the other (a mapped page cut off is SIGBUS)."""
    fd = os.memfd_create("twindns-claims", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, TABLE_BYTES)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd
