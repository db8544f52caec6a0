"""Backend choice from what the iptables tools print (iptables-wrappers' order)."""
from __future__ import annotations

import pytest

from netsetup.detect import Evidence, decide

HINT = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"
CANARY = "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"
RULES = lambda n: "*filter\n" + "".join(f"-A INPUT -p tcp --dport {i} -j ACCEPT\n" for i in range(n))  # noqa: E731


@pytest.mark.parametrize("ev, want", [
    (Evidence(HINT, CANARY + RULES(50), RULES(1), "iptables v1.8.9 (legacy)"), "nft"),
    (Evidence(CANARY, "", "", ""), "nft"),
    (Evidence("", HINT + RULES(1), RULES(50), "iptables v1.8.9 (nf_tables)"), "legacy"),
    (Evidence("", RULES(3), RULES(2), "iptables v1.8.9 (nf_tables)"), "legacy"),
    (Evidence("", RULES(2), RULES(3), "iptables v1.8.9 (legacy)"), "nft"),
    (Evidence("", "", "", "iptables v1.8.9 (legacy)"), "legacy"),
    (Evidence("", "", "", "iptables v1.8.9 (nf_tables)"), "nft"),
    (Evidence("", "", "", ""), "nft"),
])
def test_decide_follows_iptables_wrappers(ev, want):
    backend, why = decide(ev)
    assert backend == want and why


def test_a_chain_merely_named_like_the_canary_does_not_count():
    assert decide(Evidence(":KUBE-IPTABLES-HINTX - [0:0]\n", "", "", "iptables v1.8.9 (legacy)"))[0] == "legacy"
