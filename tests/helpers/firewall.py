"""Reading and poking iptables state inside a test namespace, per backend
("legacy" = the iptables-legacy tools, "nft" = the iptables-nft tools), and
running `twindns net` / the netsetup API there as subprocesses."""
from __future__ import annotations

import json
import sys
from pathlib import Path

BACKENDS = ("legacy", "nft")
OUR_COMMENT = "--comment twindns "

# Runs one netsetup operation n times in the namespace and prints the last Report as JSON.
API_DRIVER = """
import dataclasses, json, sys, netsetup
op, spec, n = sys.argv[1], netsetup.NetSpec(**json.loads(sys.argv[2])), int(sys.argv[3])
for _ in range(n):
    report = getattr(netsetup, op)(spec)
print(json.dumps(dataclasses.asdict(report)))
"""


def tool(backend: str, family: int, verb: str = "") -> str:
    return f"{'ip6tables' if family == 6 else 'iptables'}-{backend}{'-' + verb if verb else ''}"


def save(ns, backend: str, family: int = 4) -> str:
    return ns.run([tool(backend, family, "save")]).stdout


def rule_lines(ns, backend: str) -> list[str]:
    """Every `-A` line of both families, as the backend's save tool prints them."""
    return [l for fam in (4, 6) for l in save(ns, backend, fam).splitlines() if l.startswith("-A ")]


def our_lines(ns, backend: str) -> list[str]:
    return [l for l in rule_lines(ns, backend) if OUR_COMMENT in l + " "]


def iptables(ns, backend: str, family: int, *args: str) -> None:
    ns.run([tool(backend, family), *args])


def expected_lines(ip: str, port: int = 53, health_ports=(8080,)) -> list[str]:
    """The rule set DESIGN.md asks for, spelled as iptables-save prints it."""
    net = f"{ip}/{128 if ':' in ip else 32}"
    c = "-m comment --comment twindns"
    out = []
    for p in ("udp", "tcp"):
        out += [f"-A PREROUTING -d {net} -p {p} -m {p} --dport {port} {c} -j CT --notrack",
                f"-A OUTPUT -s {net} -p {p} -m {p} --sport {port} {c} -j CT --notrack",
                f"-A OUTPUT -d {net} -p {p} -m {p} --dport {port} {c} -j CT --notrack",
                f"-A INPUT -d {net} -p {p} -m {p} --dport {port} {c} -j ACCEPT",
                f"-A OUTPUT -s {net} -p {p} -m {p} --sport {port} {c} -j ACCEPT"]
    for h in health_ports:
        out += [f"-A PREROUTING -d {net} -p tcp -m tcp --dport {h} {c} -j CT --notrack",
                f"-A OUTPUT -s {net} -p tcp -m tcp --sport {h} {c} -j CT --notrack"]
    return out


def api(ns, op: str, spec: dict, times: int = 1, check: bool = True):
    """Run netsetup.<op>(NetSpec(**spec)) `times` times in ns; the last Report as a dict
    (or the CompletedProcess when check is False)."""
    proc = ns.run([sys.executable, "-c", API_DRIVER, op, json.dumps(spec), str(times)], check=False)
    if not check:
        return proc
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def write_config(path: Path, backend: str, listen=("169.254.20.10", "fd00::10"), extra: str = "") -> str:
    listen_toml = ", ".join(f'"{a}"' for a in listen)
    path.write_text(f'listen = [{listen_toml}]\nhealth_listen = "{listen[0]}:8080"\n'
                    f'metrics_listen = "{listen[0]}:9253"\n[firewall]\nbackend = "{backend}"\n{extra}')
    return str(path)


def twindns_net(ns, action: str, config: str | None, prefix: list[str] | None = None):
    argv = [sys.executable, "-m", "supervisor", "net", action] + (["--config", config] if config else [])
    return ns.run((prefix or []) + argv, check=False)


def links(ns) -> dict[str, list[str]]:
    """{link name: [address/prefix, ...]} in ns."""
    out = json.loads(ns.run(["ip", "-j", "addr", "show"]).stdout)
    return {l["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in l.get("addr_info", [])] for l in out}
