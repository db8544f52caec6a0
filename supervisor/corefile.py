"""`twindns import-corefile FILE`: a node-local-dns Corefile (CoreDNS server
blocks, as in kubernetes/kubernetes cluster/addons/dns/nodelocaldns) turned
into a twindns.toml, with a note for every line it cannot translate.

What maps: server-block zones and `forward` to `[[upstream]]` (zone, servers,
`force_tcp`; `/etc/resolv.conf` to "resolv.conf"), `bind` to `listen`, the
block's port to `port`, `cache` to `[cache]`, `prometheus` to
`metrics_listen` with `metrics_names = "coredns"`, `health` to
`health_listen`, `reload` to `supervisor.reload_on_change`. `errors` and
`loop` need nothing (twindns logs errors, and refuses its own addresses as
upstreams). The template's placeholders become environment references
(contract/envexpand.py), so the output serves every node of a cluster
(PILLARS below).
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from contract.exits import EX_CONFIG

# The node-local-dns template's placeholders, and what stands for each on a node.
PILLARS = {
    "__PILLAR__LOCAL__DNS__": "169.254.20.10",
    "__PILLAR__DNS__SERVER__": "${KUBE_DNS_SERVICE_HOST}",
    "__PILLAR__CLUSTER__DNS__": "${KUBE_DNS_UPSTREAM_SERVICE_HOST}",
    "__PILLAR__UPSTREAM__SERVERS__": "resolv.conf",
    "__PILLAR__DNS__DOMAIN__": "${CLUSTER_DOMAIN:-cluster.local}",
}
QUIET = ("errors", "loop")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}]|[^\s{}"#]+')


class CorefileError(ValueError):
    """The Corefile cannot be read or its braces do not balance."""


@dataclass
class Directive:
    name: str
    args: list[str]
    line: int
    block: list["Directive"] = field(default_factory=list)


@dataclass
class ServerBlock:
    keys: list[str]
    line: int
    directives: list[Directive]


def _tokens(text: str) -> list[tuple[str, int, bool]]:
    """(token, line, first on its line) for every token outside comments."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        first = True
        for m in _TOKEN.finditer(line.split("#", 1)[0] if '"' not in line else line):
            tok = m.group(0)
            out.append((tok.strip('"'), number, first))
            first = False
    return out


def parse(text: str) -> list[ServerBlock]:
    """The server blocks of a Corefile (one directive a line, `{ }` nesting)."""
    toks = _tokens(text)
    blocks: list[ServerBlock] = []
    i = 0

    def directives(i: int, opened: int) -> tuple[list[Directive], int]:
        out: list[Directive] = []
        while i < len(toks):
            tok, line, _ = toks[i]
            if tok == "}":
                return out, i + 1
            d = Directive(tok, [], line)
            i += 1
            while i < len(toks) and toks[i][1] == line and toks[i][0] not in "{}":
                d.args.append(toks[i][0])
                i += 1
            if i < len(toks) and toks[i][0] == "{":
                d.block, i = directives(i + 1, toks[i][1])
            out.append(d)
        raise CorefileError(f"line {opened}: '{{' is never closed")

    while i < len(toks):
        keys, line = [], toks[i][1]
        while i < len(toks) and toks[i][0] != "{":
            if toks[i][0] == "}":
                raise CorefileError(f"line {toks[i][1]}: '}}' without a '{{'")
            keys.append(toks[i][0])
            i += 1
        if i == len(toks):
            raise CorefileError(f"line {line}: server block {' '.join(keys)} has no '{{'")
        body, i = directives(i + 1, toks[i][1])
        blocks.append(ServerBlock(keys, line, body))
    return blocks


def _pillar(value: str) -> str:
    for pillar, replacement in PILLARS.items():
        value = value.replace(pillar, replacement)
    return value


def _zone_port(key: str) -> tuple[str, int | None]:
    key = key.removeprefix("dns://")
    zone, sep, port = key.rpartition(":") if ":" in key else (key, "", "")
    return (zone or ".", int(port) if sep and port.isdigit() else None)


@dataclass
class Translation:
    top: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    supervisor: dict = field(default_factory=dict)
    upstreams: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def translate(text: str, source: str = "Corefile") -> Translation:
    """A twindns config for the Corefile `text`; notes say what was left out."""
    t = Translation()
    listen: list[str] = []
    for block in parse(text):
        zones = []
        for key in block.keys:
            zone, port = _zone_port(_pillar(key))
            zones.append(zone)
            if port is not None and t.top.setdefault("port", port) != port:
                t.notes.append(f"{source}:{block.line}: port {port}: twindns serves one port "
                               f"({t.top['port']}) on every address; not translated")
        for d in block.directives:
            _directive(t, d, zones, listen, source)
    if listen:
        t.top["listen"] = listen
    return t


def _directive(t: Translation, d: Directive, zones: list[str], listen: list[str], source: str) -> None:
    where = f"{source}:{d.line}"
    args = [_pillar(a) for a in d.args]
    if d.name == "bind":
        listen.extend(a for a in args if a not in listen)
    elif d.name == "forward" and len(args) >= 2:
        servers = ["resolv.conf" if a in ("/etc/resolv.conf", "resolv.conf") else a.removeprefix("dns://")
                   for a in args[1:]]
        if args[0] != ".":
            t.notes.append(f"{where}: forward {args[0]}: only '.' (the whole block) is translated")
        for zone in zones:
            up = {"zone": zone, "servers": servers}
            for option in d.block:
                if option.name == "force_tcp":
                    up["force_tcp"] = True
                elif option.name != "prefer_udp":         # prefer_udp is what twindns does
                    t.notes.append(f"{source}:{option.line}: forward option {option.name}: not translated "
                                   "(twindns races its upstreams and retries on its own)")
            t.upstreams.append(up)
    elif d.name == "cache":
        _cache(t, d, args, where)
    elif d.name == "prometheus":
        t.top["metrics_listen"] = _endpoint(args[0] if args else ":9153")
        t.top["metrics_names"] = "coredns"
    elif d.name == "health":
        t.top["health_listen"] = _endpoint(args[0] if args else ":8080")
    elif d.name == "reload":
        t.supervisor["reload_on_change"] = True
    elif d.name not in QUIET:
        t.notes.append(f"{where}: {' '.join([d.name, *d.args])}: no twindns equivalent; not translated")


def _endpoint(text: str) -> str:
    host, _, port = text.rpartition(":")
    return f"{host or '0.0.0.0'}:{port}"


def _cache(t: Translation, d: Directive, args: list[str], where: str) -> None:
    policy: dict = {}
    if args and args[0].isdigit():
        policy["max_ttl"] = policy["negative_max_ttl"] = int(args[0])
    capacity = 0
    for option in d.block:
        if option.name in ("success", "denial") and option.args and option.args[0].isdigit():
            capacity += int(option.args[0])
            if len(option.args) > 1 and option.args[1].isdigit():
                policy["max_ttl" if option.name == "success" else "negative_max_ttl"] = int(option.args[1])
        elif option.name == "prefetch":
            policy["prefetch"] = True
        elif option.name == "serve_stale":
            policy["serve_stale"] = 3600
        else:
            t.notes.append(f"{where}: cache option {option.name}: not translated")
    if capacity:
        policy["capacity"] = capacity
    for key, value in policy.items():
        if t.cache.setdefault(key, value) != value:
            t.notes.append(f"{where}: cache {key} {value}: twindns has one cache for every zone; "
                           f"kept {t.cache[key]} from an earlier block")


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def render(t: Translation, source: str) -> str:
    lines = [f"# twindns.toml translated from {source} by `twindns import-corefile`.",
             "# ${NAME} is the pod's environment (docs/config.md, \"Environment references\")."]
    lines += [f"{k} = {_toml(v)}" for k, v in t.top.items()]
    for name, table in (("cache", t.cache), ("supervisor", t.supervisor)):
        if table:
            lines += ["", f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in table.items())]
    for up in t.upstreams:
        lines += ["", "[[upstream]]", *(f"{k} = {_toml(v)}" for k, v in up.items())]
    if t.notes:
        lines += ["", "# Not translated:", *(f"#   {n}" for n in t.notes)]
    return "\n".join(lines) + "\n"


def main(args) -> int:
    """`twindns import-corefile FILE [-o OUT]`: the config on stdout (or OUT), notes on stderr."""
    try:
        text = Path(args.corefile).read_text()
        t = translate(text, args.corefile)
    except OSError as e:
        print(f"twindns: {args.corefile}: cannot read: {e.strerror}", file=sys.stderr)
        return EX_CONFIG
    except (CorefileError, UnicodeDecodeError) as e:
        print(f"twindns: {args.corefile}: {e}", file=sys.stderr)
        return EX_CONFIG
    out = render(t, args.corefile)
    if args.output:
        Path(args.output).write_text(out)
    else:
        sys.stdout.write(out)
    for note in t.notes:
        print(f"twindns: not translated: {note}", file=sys.stderr)
    return 0
