"""twindns network state: the interface carrying the listen IPs, their
addresses, net.ipv4.tcp_migrate_req and the NOTRACK/ACCEPT rules, on legacy
or nft iptables hosts. Imports neither supervisor nor worker.

    from netsetup import NetSpec, ensure, verify, teardown, NetsetupError
"""
from netsetup.errors import (AddressConflict, BackendUnavailable, FirewallBusy, FirewallFailed,
                             InterfaceFailed, InvalidSpec, NetsetupError, NotPermitted)
from netsetup.ops import ensure, teardown, verify
from netsetup.spec import NetSpec, Report

__all__ = ["NetSpec", "Report", "ensure", "verify", "teardown", "NetsetupError", "NotPermitted",
           "AddressConflict", "BackendUnavailable", "FirewallBusy", "FirewallFailed",
           "InterfaceFailed", "InvalidSpec"]
