"""What can go wrong while setting up the node's network state.

Every message is one line an operator can act on; callers print str(exc)
and never a traceback.
"""
from __future__ import annotations


class NetsetupError(Exception):
    """The node's network state could not be read or changed."""


class InvalidSpec(NetsetupError, ValueError):
    """A NetSpec field holds a value netsetup cannot use."""


class NotPermitted(NetsetupError):
    """The process lacks CAP_NET_ADMIN (or another privilege the kernel asked for)."""


class AddressConflict(NetsetupError):
    """A listen IP is already configured on an interface that is not ours."""


class BackendUnavailable(NetsetupError):
    """The requested iptables backend (legacy or nft) cannot be used on this host."""


class FirewallBusy(NetsetupError):
    """Another program held the xtables lock for longer than we wait."""


class FirewallFailed(NetsetupError):
    """The firewall backend refused a change."""


class InterfaceFailed(NetsetupError):
    """The kernel refused a change to the interface or its addresses."""
