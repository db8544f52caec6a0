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

# family: (listen IP, server veth = the control, client veth, veth prefix length)
ADDRS = {4: ("169.254.20.10", "169.254.100.1", "169.254.100.2", 24),
         6: ("fd00::10", "fd01::1", "fd01::2", 64)}


def _dig(ns, server: str, tcp: bool) -> str:
    argv = ["dig", "+short", "+time=2", "+tries=1", f"@{server}", "a.test", "A"] + (["+tcp"] if tcp else [])
    return ns.run(argv).stdout.strip()


def _entries(ns, family: int) -> list[str]:
    out = ns.run(["conntrack", "-L", "-f", "ipv6" if family == 6 else "ipv4"])
    return [l for l in out.stdout.splitlines() if "src=" in l]


def _veth(server, client, family: int) -> None:
    listen, server_ip, client_ip, plen = ADDRS[family]
    if family == 4:
        VethPair(server, server_ip, client, client_ip, prefix=plen)
        client.run(["ip", "route", "add", f"{listen}/32", "via", server_ip])
        return
    pair = VethPair(server, "169.254.100.1", client, "169.254.100.2")
    server.run(["ip", "addr", "add", f"{server_ip}/{plen}", "dev", pair.a_if, "nodad"])
    client.run(["ip", "addr", "add", f"{client_ip}/{plen}", "dev", pair.b_if, "nodad"])
    client.run(["ip", "-6", "route", "add", f"{listen}/128", "via", server_ip])


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_conntrack_entries_for_dns_to_the_listen_ip(netns, tmp_path, backend, family):
    listen, control, client_ip, _ = ADDRS[family]
    iptables(netns, backend, family, "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
    report = api(netns, "ensure", {"addresses": [listen], "health_ports": [8080], "backend": backend})
    assert report["backend"] == backend
    with Netns() as client:
        _veth(netns, client, family)
        dns = Unbound(tmp_path / "unbound", addr=listen, netns=netns,
                      extra=[f"interface: {control}@53", "do-ip6: yes"])
        try:
            netns.run(["conntrack", "-F"], check=False)
            netns.run(["conntrack", "-F", "-f", "ipv6"], check=False)
            for ns in (client, netns):
                for tcp in (False, True):
                    for server in (listen, control):
                        assert _dig(ns, server, tcp) == "192.0.2.10", (ns.name, server, tcp)
            entries = _entries(netns, family)
        finally:
            dns.stop()

    # (The bridge's own IGMP/MLD reports from the listen IP are tracked; they are not DNS.)
    ours = [e for e in entries if f"={listen} " in e and e.split()[0] in ("udp", "tcp")]
    assert ours == [], "conntrack tracked DNS to the listen IP:\n" + "\n".join(ours)
    to_control = [e for e in entries if f"dst={control} " in e and "dport=53 " in e]
    for proto in ("udp", "tcp"):
        for src in (client_ip, control):  # over veth, and from the host side (loopback)
            assert any(e.startswith(proto) and f"src={src} " in e for e in to_control), \
                f"no {proto} entry from {src} for the control address:\n" + "\n".join(entries)
