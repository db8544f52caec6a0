"""The legacy backend: x_tables rules through `iptables-legacy-restore
--noflush` and `iptables-legacy-save`, as kube-proxy and node-local-dns write
them.

A legacy table is replaced as a whole (read blob, edit, write blob back), so
every writer must hold /run/xtables.lock from read to commit, or it can undo
a concurrent writer's change (kube-proxy's, or ours). iptables-legacy-restore
takes that lock itself (`--wait`, honouring $XTABLES_LOCKFILE like every
iptables tool >= 1.8.5) and applies our -D/-I lines to the table as it is
at that moment; a rule that vanished since our read fails the whole restore,
and we read again.
"""
from __future__ import annotations

from types import MappingProxyType

from netsetup.restore import RestoreBackend
from netsetup.rules import TABLE_CHAINS
from netsetup.tools import TOOL_TIMEOUT

_NAMES_FILE = MappingProxyType({4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"})


def loaded_tables(family: int) -> set[str]:
    """Tables something already instantiated in this netns: reading any
    other legacy table would load its module and create it."""
    try:
        with open(_NAMES_FILE[family]) as f:
            return set(f.read().split())
    except FileNotFoundError:
        return set()


class LegacyBackend(RestoreBackend):
    """iptables rules in the kernel's x_tables, written under the xtables lock."""

    name = "legacy"

    def __init__(self, lock_timeout: float = 10.0) -> None:
        self._lock_timeout = lock_timeout
        self.restore_timeout = TOOL_TIMEOUT + lock_timeout     # waiting for the lock is not hanging

    def readable_tables(self, family: int) -> list[str]:
        loaded = loaded_tables(family)
        return [t for t in TABLE_CHAINS if t in loaded]

    def restore_argv(self, family: int) -> list[str]:
        return [*super().restore_argv(family), f"--wait={max(1, round(self._lock_timeout))}"]
