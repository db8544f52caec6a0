"""Choosing the firewall backend object for a NetSpec's `backend` setting."""
from __future__ import annotations

import logging
import os
import shutil

from netsetup.detect import detect
from netsetup.errors import BackendUnavailable, NetsetupError
from netsetup.legacy import LegacyBackend
from netsetup.nft import NftBackend

log = logging.getLogger("twindns.netsetup")


def select(setting: str) -> LegacyBackend | NftBackend:
    """The backend to use: forced by config ("legacy" | "nft") or detected ("auto")."""
    name = setting
    if setting == "auto":
        name, why = detect()
        log.info("firewall backend %s: %s", name, why)
    if name == "nft":
        if shutil.which("iptables-nft-restore") is None:
            raise BackendUnavailable("firewall backend nft: iptables-nft-restore not found; install iptables 1.8+ "
                                     "or set firewall.backend = \"legacy\"")
        return NftBackend()
    return LegacyBackend()


def not_in_use(active: str) -> list[LegacyBackend | NftBackend]:
    """The other backend, when it may hold rules of ours from an earlier run
    (`auto` detection changed its mind, or the config forced the other one).
    Only where looking creates nothing on the host: legacy tables already
    listed in /proc/net, nf_tables loaded or built into the kernel."""
    try:
        if active != "legacy" and any(_nonempty(f"/proc/net/{n}_tables_names") for n in ("ip", "ip6")):
            return [LegacyBackend()]
        if active != "nft" and _nf_tables_present() and shutil.which("iptables-nft-restore"):
            return [NftBackend()]
    except NetsetupError as e:
        log.warning("cannot look for twindns rules outside the %s backend: %s", active, e)
    return []


def _nonempty(path: str) -> bool:
    try:
        with open(path) as f:
            return bool(f.read().strip())
    except OSError:
        return False


def _nf_tables_present() -> bool:
    """Without loading it: listed as loaded, or no module list at all (a
    kernel without loadable modules has it built in, or not at all)."""
    if os.path.exists("/sys/module/nf_tables"):
        return True
    try:
        with open("/proc/modules") as f:
            return any(line.startswith("nf_tables ") for line in f)
    except FileNotFoundError:
        return True
