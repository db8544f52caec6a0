"""The proof in the kernel: DNS traffic to a listen IP leaves no conntrack
entry, while the same traffic to an address without our rules does.

A client in a second namespace reaches the listen IP over veth (raw
PREROUTING), and a client on the server's own network stack does too (raw
OUTPUT, then loopback). unbound answers on the listen IP and on the veth
address, which has no rules and serves as the control.

CT --notrack alone does not switch conntrack on in a namespace, so the test
first adds what every real node has (kube-proxy, a host firewall): a rule
that uses connection tracking. Without it the control would see no entries
either and the test would prove nothing.
"""
from __future__ import annotations

import pytest

from helpers.firewall import BACKENDS, api, iptables
from helpers.netns import Netns, VethPair
from helpers.unbound import Unbound

pytestmark = pytest.mark.netns

LISTEN = "169.254.20.10"
SERVER_VETH, CLIENT_VETH = "169.254.100.1", "169.254.100.2"  # the control: no rules for it


def _dig(ns, server: str, tcp: bool) -> str:
    argv = ["dig", "+short", "+time=2", "+tries=1", f"@{server}", "a.test", "A"] + (["+tcp"] if tcp else [])
    return ns.run(argv).stdout.strip()


def _entries(ns) -> list[str]:
    out = ns.run(["conntrack", "-L"])
    return [l for l in out.stdout.splitlines() if "src=" in l]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_conntrack_entries_for_dns_to_the_listen_ip(netns, tmp_path, backend):
    iptables(netns, backend, 4, "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
    report = api(netns, "ensure", {"addresses": [LISTEN], "health_ports": [8080], "backend": backend})
    assert report["backend"] == backend
    with Netns() as client:
        VethPair(netns, SERVER_VETH, client, CLIENT_VETH)
        client.run(["ip", "route", "add", f"{LISTEN}/32", "via", SERVER_VETH])
        dns = Unbound(tmp_path / "unbound", addr=LISTEN, netns=netns, extra=[f"interface: {SERVER_VETH}@53"])
        try:
            netns.run(["conntrack", "-F"], check=False)
            for ns in (client, netns):
                for tcp in (False, True):
                    for server in (LISTEN, SERVER_VETH):
                        assert _dig(ns, server, tcp) == "192.0.2.10", (ns.name, server, tcp)
            entries = _entries(netns)
        finally:
            dns.stop()

    # (The bridge's own IGMP reports from the listen IP are tracked; they are not DNS.)
    ours = [e for e in entries if f"={LISTEN} " in e and e.split()[0] in ("udp", "tcp")]
    assert ours == [], "conntrack tracked DNS to the listen IP:\n" + "\n".join(ours)
    control = [e for e in entries if f"dst={SERVER_VETH} " in e and "dport=53 " in e]
    for proto in ("udp", "tcp"):
        for src in (CLIENT_VETH, SERVER_VETH):  # over veth, and from the host side (loopback)
            assert any(e.startswith(proto) and f"src={src} " in e for e in control), \
                f"no {proto} entry from {src} for the control address:\n" + "\n".join(entries)
