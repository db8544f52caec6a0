"""Which iptables backend the host uses, decided as kubernetes-sigs/iptables-wrappers does.

1. kubelet's hint/canary chain in `iptables-nft-save -t mangle` (IPv4 or IPv6): nft;
2. the same chain anywhere in `iptables-legacy-save` (no `-t`: asking a legacy
   table by name would create it): legacy;
3. otherwise whichever holds more rules;
4. otherwise what `iptables` itself is (`iptables --version` says legacy or nf_tables).

Our own rules count in step 3, so once twindns has written to a backend the
choice stays put instead of flapping between runs.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass

from netsetup.errors import BackendUnavailable
from netsetup.tools import output_or_empty

KUBE_CHAINS = re.compile(r"^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY)\b", re.M)
RULE_LINE = re.compile(r"^-", re.M)


@dataclass(frozen=True)
class Evidence:
    """What the iptables tools printed; empty strings where a tool is missing or failed."""

    nft_mangle: str
    legacy_all: str
    nft_all: str
    iptables_version: str


def decide(ev: Evidence) -> tuple[str, str]:
    """(backend, why) from the evidence, in iptables-wrappers' order."""
    if KUBE_CHAINS.search(ev.nft_mangle):
        return "nft", "kubelet's canary chain is in iptables-nft's mangle table"
    if KUBE_CHAINS.search(ev.legacy_all):
        return "legacy", "kubelet's canary chain is in the legacy tables"
    legacy, nft = len(RULE_LINE.findall(ev.legacy_all)), len(RULE_LINE.findall(ev.nft_all))
    if legacy != nft:
        return ("legacy" if legacy > nft else "nft"), f"legacy tables hold {legacy} rules, nft {nft}"
    if "(legacy)" in ev.iptables_version:
        return "legacy", "no rules anywhere; `iptables` is iptables-legacy"
    return "nft", "no rules anywhere; `iptables` is iptables-nft (or absent)"


def _both(tool: str, *args: str) -> str:
    return output_or_empty([f"iptables-{tool}", *args]) + output_or_empty([f"ip6tables-{tool}", *args])


def gather() -> Evidence:
    """Ask the tools, stopping as soon as the answer is settled (the nft tools can be slow)."""
    nft_mangle = _both("nft-save", "-t", "mangle")
    if KUBE_CHAINS.search(nft_mangle):
        return Evidence(nft_mangle, "", "", "")
    legacy_all = _both("legacy-save")
    if KUBE_CHAINS.search(legacy_all):
        return Evidence(nft_mangle, legacy_all, "", "")
    return Evidence(nft_mangle, legacy_all, _both("nft-save"), output_or_empty(["iptables", "--version"]))


def detect() -> tuple[str, str]:
    """(backend, why) for this host."""
    if shutil.which("iptables-nft-restore") is None and shutil.which("iptables-legacy-save") is None:
        raise BackendUnavailable("neither iptables-nft nor iptables-legacy is installed: install iptables 1.8+")
    return decide(gather())
