"""Choosing the firewall backend object for a NetSpec's `backend` setting."""
from __future__ import annotations

import logging
import shutil

from netsetup.detect import detect
from netsetup.errors import BackendUnavailable
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
