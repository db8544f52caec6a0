"""The nft backend: rules written with `iptables-nft-restore --noflush`, read
back with `iptables-nft-save`.

Why iptables-nft-restore and not the `nft` tool: on an iptables-nft host the
tables `ip raw` / `ip filter` belong to the iptables compatibility layer that
kube-proxy, kubelet and Docker write through. Rules added there in native nft
syntax are ones iptables-nft-save cannot print back ("table is incompatible"),
which breaks every agent that saves and restores those tables, and hides our
rules from operators who use `iptables -S`. Each restore is a single
nftables transaction, with no lock file needed.
"""
from __future__ import annotations

from netsetup.restore import RestoreBackend


class NftBackend(RestoreBackend):
    """iptables rules kept in nftables through the iptables-nft tools."""

    name = "nft"
