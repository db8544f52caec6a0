"""The firewall rules twindns owns, as values, and how to converge on them.

A rule is ours when it carries the comment COMMENT: that mark lives in the
kernel with the rule, so a later run (or `twindns net teardown` after a
SIGKILLed supervisor) finds exactly our rules without any state file, and
foreign rules in the same chains are never touched.

Both backends turn what the kernel holds into iptables-save style argument
lists and hand them to parse_args(); comparison is on the parsed value, never
on text, and never through `iptables -C` (whose comment handling differs
between iptables releases).
"""
from __future__ import annotations

import ipaddress
import shlex
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType

COMMENT = "twindns"
NOTRACK = ("CT", "--notrack")
ACCEPT = ("ACCEPT",)
TABLE_CHAINS = MappingProxyType({"raw": ("PREROUTING", "OUTPUT"), "filter": ("INPUT", "OUTPUT")})
MAX_ARGS = 64  # a rule line longer than this is not one of ours; stop reading it


@dataclass(frozen=True)
class Rule:
    """One iptables rule in a built-in chain, reduced to the fields twindns uses."""

    family: int
    table: str
    chain: str
    target: tuple[str, ...]
    proto: str | None = None
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    comment: str | None = None
    unknown: tuple[str, ...] = ()  # anything else the rule matches on
    # The arguments exactly as the kernel listing gave them: deleting by this
    # form removes that very rule even if it matches on things we do not model.
    seen_as: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def ours(self) -> bool:
        return self.comment == COMMENT

    def args(self) -> list[str]:
        """Arguments after `-A CHAIN`, in the order iptables-save prints them."""
        out: list[str] = []
        if self.src:
            out += ["-s", self.src]
        if self.dst:
            out += ["-d", self.dst]
        if self.proto:
            out += ["-p", self.proto]
            ports = (["--sport", str(self.sport)] if self.sport else []) + \
                    (["--dport", str(self.dport)] if self.dport else [])
            if ports:
                out += ["-m", self.proto, *ports]
        out += list(self.unknown)
        if self.comment is not None:
            out += ["-m", "comment", "--comment", self.comment]
        return out + ["-j", *self.target]

    def __str__(self) -> str:
        tool = "ip6tables" if self.family == 6 else "iptables"
        return f"{tool} -t {self.table} -A {self.chain} {shlex.join(self.args())}"


def _network(value: str, family: int) -> str | None:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        return None
    return net.compressed if net.version == family else None


def parse_args(family: int, table: str, chain: str, args: list[str]) -> Rule:
    """The Rule an iptables argument list (as iptables-save prints it) describes."""
    fields: dict = {}
    unknown: list[str] = []
    target: tuple[str, ...] = ()
    seen_as = tuple(args)
    args = args[:MAX_ARGS + 1]
    if len(args) > MAX_ARGS:
        unknown.append("...")
    i = 0
    while i < len(args):
        tok = args[i]
        val = args[i + 1] if i + 1 < len(args) else None
        if tok in ("-j", "-g"):
            target = tuple(args[i + 1:]) if tok == "-j" else tuple(args[i:])
            break
        if tok in ("-s", "-d") and val is not None and _network(val, family):
            fields["src" if tok == "-s" else "dst"] = _network(val, family)
        elif tok == "-p" and val is not None:
            fields["proto"] = val
        elif tok in ("--sport", "--dport") and val is not None and val.isdigit() and fields.get("proto"):
            fields[tok[2:]] = int(val)
        elif tok == "--comment" and val is not None:
            fields["comment"] = val
        elif tok == "-m" and val in ("comment", fields.get("proto")):
            pass
        else:
            unknown.append(tok)
            i += 1
            continue
        i += 2
    return Rule(family, table, chain, target, unknown=tuple(unknown), seen_as=seen_as, **fields)


def parse_save(text: str, family: int) -> list[Rule]:
    """Rules of the built-in chains twindns uses, from iptables-save output."""
    rules: list[Rule] = []
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        if table not in TABLE_CHAINS or not line.startswith("-A "):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        if len(words) > 1 and words[1] in TABLE_CHAINS[table]:
            rules.append(parse_args(family, table, words[1], words[2:]))
    return rules


def desired_rules(addresses: tuple[str, ...], port: int, health_ports: tuple[int, ...]) -> list[Rule]:
    """node-cache's rule set for each listen IP, UDP and TCP, plus health-port NOTRACK."""
    rules: list[Rule] = []
    for addr in addresses:
        ip = ipaddress.ip_address(addr)
        fam, net = ip.version, ipaddress.ip_network(ip).compressed
        for proto in ("udp", "tcp"):
            rules += [
                Rule(fam, "raw", "PREROUTING", NOTRACK, proto, dst=net, dport=port, comment=COMMENT),
                Rule(fam, "raw", "OUTPUT", NOTRACK, proto, src=net, sport=port, comment=COMMENT),
                Rule(fam, "raw", "OUTPUT", NOTRACK, proto, dst=net, dport=port, comment=COMMENT),
                Rule(fam, "filter", "INPUT", ACCEPT, proto, dst=net, dport=port, comment=COMMENT),
                Rule(fam, "filter", "OUTPUT", ACCEPT, proto, src=net, sport=port, comment=COMMENT),
            ]
        for hport in health_ports:
            rules += [
                Rule(fam, "raw", "PREROUTING", NOTRACK, "tcp", dst=net, dport=hport, comment=COMMENT),
                Rule(fam, "raw", "OUTPUT", NOTRACK, "tcp", src=net, sport=hport, comment=COMMENT),
            ]
    return list(dict.fromkeys(rules))


@dataclass(frozen=True)
class Plan:
    """What to delete and add so the kernel holds exactly the desired rules of
    ours, and what is wrong until then."""

    delete: tuple[Rule, ...]
    add: tuple[Rule, ...]
    problems: tuple[str, ...]

    def changes(self) -> list[str]:
        return [f"removed rule: {r}" for r in self.delete] + [f"added rule: {r}" for r in self.add]


def plan(desired: list[Rule], current: list[Rule]) -> Plan:
    """Converge: one copy of each desired rule, none of our other rules; foreign
    rules untouched. `delete` holds the very instances found in `current`."""
    copies: Counter = Counter()
    delete: list[Rule] = []
    for rule in current:
        if rule.ours:
            copies[rule] += 1
            if copies[rule] > 1 or rule not in desired:
                delete.append(rule)
    problems = [f"duplicated ({n} copies): {r}" for r, n in copies.items() if n > 1 and r in desired]
    problems += [f"not wanted (ours, stale or altered): {r}" for r in copies if r not in desired]
    add = [r for r in desired if r not in copies]
    problems += [f"missing: {r}" for r in add]
    return Plan(tuple(delete), tuple(add), tuple(problems))
