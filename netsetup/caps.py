"""Whether this process may change network state (CAP_NET_ADMIN)."""
from __future__ import annotations

from netsetup.errors import NotPermitted

CAP_NET_ADMIN = 12


def effective_caps(status_path: str = "/proc/self/status") -> int:
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def require_net_admin(action: str) -> None:
    """Raise NotPermitted, before anything is touched, when CAP_NET_ADMIN is missing."""
    if not effective_caps() >> CAP_NET_ADMIN & 1:
        raise NotPermitted(f"netsetup {action} needs CAP_NET_ADMIN: run it as root "
                           "(or grant the capability) in the network namespace to change")
