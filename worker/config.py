"""The worker's configuration: the `[cache]`, `[[upstream]]` and `[[header]]`
sections of the twindns TOML file. Other top-level keys belong to the
supervisor and are ignored here (docs/internals.md, "Config ownership").

Every error is a ConfigError whose message names the file, the dotted key
(tables of an array are counted from 0: `upstream[1]` is the second
`[[upstream]]`), the bad value and what is expected.
"""
from __future__ import annotations

import ipaddress
import os
import sys
import tomllib
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import dns.exception
import dns.name

from contract import envexpand
from contract.endpoint import DNS_PORT, format_server, parse_server  # noqa: F401 (worker.config's API)
from contract import validate
from contract.exits import EX_CONFIG
from worker import resolvconf


class ConfigError(ValueError):
    """A config value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class CacheConfig:
    capacity: int = 10000
    min_ttl: int = 0
    max_ttl: int = 86400
    negative_max_ttl: int = 3600
    servfail_ttl: int = 5
    serve_stale: int = 3600                    # RFC 8767: seconds past expiry; 0 disables
    prefetch: bool = True                      # refresh popular entries before they expire
    stale_client_timeout: float = 1.0          # serve a stale answer after this long waiting upstream; 0: only on failure
    max_udp_size: int = 1232                   # UDP answers beyond this (or the client's size) get TC (DNS flag day 2020)
    max_concurrent: int = 2048                 # distinct misses waiting or upstream; past it SERVFAIL at once
    max_in_flight: int = 128                   # misses asked upstream at once; the rest wait their turn
    unwanted_reply_threshold: int = 10000      # unwanted upstream replies that make in-flight answers uncached; 0 off


@dataclass(frozen=True)
class UpstreamZone:
    zone: str                                  # absolute, lower case: "." or "cluster.local."
    servers: tuple[tuple[str, int], ...]        # (ip, port), resolv.conf already expanded
    force_tcp: bool = False
    timeout: float = 2.0


@dataclass(frozen=True)
class HeaderRule:
    zone: str                                  # absolute, lower case
    set: frozenset[str] = frozenset()          # subset of {"ra", "aa", "rd"}
    clear: frozenset[str] = frozenset()


@dataclass(frozen=True)
class WorkerConfig:
    cache: CacheConfig = field(default_factory=CacheConfig)
    upstreams: tuple[UpstreamZone, ...] = ()
    headers: tuple[HeaderRule, ...] = ()


def zone_labels(zone: str) -> tuple[bytes, ...]:
    """A zone's key for wire.longest_zone(): its lower-case labels, root last."""
    return tuple(label.lower() for label in dns.name.from_text(zone).labels)


RESOLV_CONF_KEYWORD = "resolv.conf"
HEADER_FLAGS = ("aa", "ra", "rd")
# RFC 2181 section 8: TTLs are at most 2**31 - 1.
MAX_TTL = 2**31 - 1

_CACHE_KEYS = ("capacity", "min_ttl", "max_ttl", "negative_max_ttl", "servfail_ttl", "serve_stale", "prefetch",
               "stale_client_timeout", "max_udp_size", "max_concurrent", "max_in_flight",
               "unwanted_reply_threshold")
_UPSTREAM_KEYS = ("zone", "servers", "force_tcp", "timeout")
_HEADER_KEYS = ("zone", "set", "clear")
_DEFAULT_UPSTREAM = UpstreamZone(zone=".", servers=())


# -- public entry points ----------------------------------------------------

def load_file(path: str, listen_ips: Iterable[str] = (), *,
              root_servers: Sequence[str] | None = None,
              resolv_conf: str = resolvconf.RESOLV_CONF) -> WorkerConfig:
    """Read and validate the worker's sections of the TOML file at `path`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        # the supervisor hands its workers the expanded text; a file read here is expanded alike
        text = envexpand.expand(data.decode("utf-8"), os.environ, path)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from e
    except envexpand.EnvExpandError as e:
        raise ConfigError(str(e)) from None
    return load_text(text, path, listen_ips, root_servers=root_servers, resolv_conf=resolv_conf)


def load_bytes(data: bytes, source: str, listen_ips: Iterable[str] = (), *,
               root_servers: Sequence[str] | None = None,
               resolv_conf: str = resolvconf.RESOLV_CONF) -> WorkerConfig:
    """load_text() for raw file bytes (as passed through --config-fd)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not UTF-8 text (bad byte at offset {e.start})") from e
    return load_text(text, source, listen_ips, root_servers=root_servers, resolv_conf=resolv_conf)


def load_text(text: str, source: str, listen_ips: Iterable[str] = (), *,
              root_servers: Sequence[str] | None = None,
              resolv_conf: str = resolvconf.RESOLV_CONF) -> WorkerConfig:
    """Validate TOML `text` (named `source` in errors).

    `listen_ips` ("IP" or "IP:PORT") are our own addresses: they are removed
    from resolv.conf's nameservers and may not be upstreams. `root_servers`
    (the command line's --upstream) replaces the servers of zone ".".
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from e
    return _build(doc, source, listen_ips, root_servers, resolv_conf)


def default_config(listen_ips: Iterable[str], *,
                   root_servers: Sequence[str] | None = None,
                   resolv_conf: str = resolvconf.RESOLV_CONF) -> WorkerConfig:
    """The embedded default: zone "." forwarded to resolv.conf's nameservers
    minus our listen IPs (or to `root_servers`)."""
    return _build({}, "default config", listen_ips, root_servers, resolv_conf)


def check_config_main(path: str | None, listen: list[str]) -> int:
    """`python -m worker --check-config`: 0 when valid, EX_CONFIG (78) with
    the error on stderr otherwise."""
    try:
        config = load_file(path, listen) if path else default_config(listen)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EX_CONFIG
    zones = ", ".join(f"{z.zone} -> {' '.join(format_server(s) for s in z.servers)}"
                      for z in config.upstreams)
    print(f"{path or 'default config'}: ok ({zones})")
    return 0


def zone_name(text: str) -> str:
    """A zone as stored in the config: absolute, lower case. ValueError if bad."""
    if not text:
        raise ValueError("empty")
    try:
        return dns.name.from_text(text).to_text().lower()
    except dns.exception.DNSException as e:
        raise ValueError(str(e)) from e


# -- validation ---------------------------------------------------------------

def _fail(source: str, key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(validate.bad_value(source, key, value, expected))


def _table(doc: dict, name: str, source: str) -> dict:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise _fail(source, name, value, f"a table ([{name}])")
    return value


def _tables(doc: dict, name: str, source: str) -> list[dict]:
    value = doc.get(name, [])
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise _fail(source, name, value, f"an array of tables ([[{name}]])")
    return value


def _check_keys(table: dict, allowed: Sequence[str], prefix: str, source: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(validate.unknown_key(source, f"{prefix}.{key}", allowed))


def _value(check, table: dict, key: str, default: Any, prefix: str, source: str, *args, **kw) -> Any:
    """table[key] (or `default`) through a contract.validate check."""
    value = table.get(key, default)
    try:
        return check(value, *args, **kw)
    except validate.Invalid as e:
        raise _fail(source, f"{prefix}.{key}", value, str(e)) from None


def _integer(table: dict, key: str, default: int, low: int, high: int,
             prefix: str, source: str) -> int:
    return _value(validate.integer, table, key, default, prefix, source, low, high)


def _seconds(table: dict, key: str, default: float, prefix: str, source: str, zero: bool = False) -> float:
    return _value(validate.seconds, table, key, default, prefix, source, zero=zero)


def _boolean(table: dict, key: str, default: bool, prefix: str, source: str) -> bool:
    return _value(validate.boolean, table, key, default, prefix, source)


def _zone(table: dict, prefix: str, source: str) -> str:
    value = table.get("zone", ".")
    if not isinstance(value, str):
        raise _fail(source, f"{prefix}.zone", value, 'a domain name such as "." or "cluster.local"')
    try:
        return zone_name(value)
    except ValueError as e:
        raise _fail(source, f"{prefix}.zone", value, f"a valid domain name ({e})") from None


def _strings(table: dict, key: str, default: list, prefix: str, source: str) -> list[str]:
    return _value(validate.strings, table, key, default, prefix, source)


def _cache(doc: dict, source: str) -> CacheConfig:
    table = _table(doc, "cache", source)
    _check_keys(table, _CACHE_KEYS, "cache", source)
    d = CacheConfig()
    cache = CacheConfig(
        capacity=_integer(table, "capacity", d.capacity, 1, 100_000_000, "cache", source),
        min_ttl=_integer(table, "min_ttl", d.min_ttl, 0, MAX_TTL, "cache", source),
        max_ttl=_integer(table, "max_ttl", d.max_ttl, 0, MAX_TTL, "cache", source),
        negative_max_ttl=_integer(table, "negative_max_ttl", d.negative_max_ttl, 0, MAX_TTL,
                                  "cache", source),
        servfail_ttl=_integer(table, "servfail_ttl", d.servfail_ttl, 0, MAX_TTL, "cache", source),
        serve_stale=_integer(table, "serve_stale", d.serve_stale, 0, MAX_TTL, "cache", source),
        prefetch=_boolean(table, "prefetch", d.prefetch, "cache", source),
        stale_client_timeout=_seconds(table, "stale_client_timeout", d.stale_client_timeout, "cache", source,
                                      zero=True),
        max_udp_size=_integer(table, "max_udp_size", d.max_udp_size, 512, 65535, "cache", source),
        max_concurrent=_integer(table, "max_concurrent", d.max_concurrent, 1, 1_000_000, "cache", source),
        max_in_flight=_integer(table, "max_in_flight", d.max_in_flight, 1, 65536, "cache", source),
        unwanted_reply_threshold=_integer(table, "unwanted_reply_threshold", d.unwanted_reply_threshold,
                                          0, 2**31 - 1, "cache", source),
    )
    if cache.min_ttl > cache.max_ttl:
        raise _fail(source, "cache.min_ttl", cache.min_ttl,
                    f"at most cache.max_ttl ({cache.max_ttl})")
    return cache


@dataclass(frozen=True)
class _Ours:
    """Our own listen addresses, to keep upstreams from pointing back at us."""
    addresses: frozenset[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]

    @classmethod
    def parse(cls, listen: Iterable[str]) -> "_Ours":
        addresses = set()
        for text in listen:
            try:
                ip, port = parse_server(text)
            except ValueError as e:
                raise ConfigError(f"listen address {text!r}: {e}") from None
            addresses.add((ipaddress.ip_address(ip), port))
        return cls(frozenset(addresses))

    def has_ip(self, ip: str) -> bool:
        return any(a == ipaddress.ip_address(ip) for a, _ in self.addresses)

    def has(self, server: tuple[str, int]) -> bool:
        ip, port = ipaddress.ip_address(server[0]), server[1]
        # A wildcard listener also answers on every loopback address.
        return any(p == port and (a == ip or (a.is_unspecified and ip.is_loopback))
                   for a, p in self.addresses)

    def describe(self) -> str:
        return ", ".join(format_server((str(a), p)) for a, p in sorted(self.addresses, key=str)) \
            or "none"


def _servers(texts: list[str], key: str, ours: _Ours, resolv_conf: str,
             source: str) -> tuple[tuple[str, int], ...]:
    if not texts:
        raise _fail(source, key, texts, f'at least one server (IP, IP:PORT, [IPv6]:PORT or "{RESOLV_CONF_KEYWORD}")')
    servers: list[tuple[str, int]] = []
    for i, text in enumerate(texts):
        if text == RESOLV_CONF_KEYWORD:
            for server in _resolv_conf_servers(key, ours, resolv_conf, source):
                if server not in servers:
                    servers.append(server)
            continue
        try:
            server = parse_server(text)
        except ValueError as e:
            raise _fail(source, f"{key}[{i}]", text, str(e).removeprefix("expected ")) from None
        if ours.has(server):
            raise _fail(source, f"{key}[{i}]", text,
                        f"a server other than our own listen addresses ({ours.describe()}): "
                        "forwarding to ourselves would loop")
        if server in servers:
            raise _fail(source, f"{key}[{i}]", text, "each server listed once")
        servers.append(server)
    return tuple(servers)


def _resolv_conf_servers(key: str, ours: _Ours, resolv_conf: str,
                         source: str) -> list[tuple[str, int]]:
    try:
        found = resolvconf.nameservers(resolv_conf)
    except resolvconf.ResolvConfError as e:
        raise _fail(source, key, RESOLV_CONF_KEYWORD, f"a readable resolv.conf ({e})") from None
    # resolv.conf has no ports: a nameserver on one of our IPs is taken to be us.
    usable = [(ip, DNS_PORT) for ip in found if not (ours.has_ip(ip) or ours.has((ip, DNS_PORT)))]
    if not usable:
        raise _fail(source, key, [RESOLV_CONF_KEYWORD],
                    f"at least one nameserver in {resolv_conf} that is not one of our listen "
                    f"addresses ({ours.describe()}); found: {', '.join(found) or 'none'}")
    return usable


def _upstreams(doc: dict, source: str, ours: _Ours, root_servers: Sequence[str] | None,
               resolv_conf: str) -> tuple[UpstreamZone, ...]:
    tables = _tables(doc, "upstream", source)
    zones: list[UpstreamZone] = []
    seen: dict[str, int] = {}
    # The root zone always exists: unless configured, it goes to resolv.conf.
    explicit = len(tables)
    if not any(_zone(t, f"upstream[{i}]", source) == "." for i, t in enumerate(tables)):
        tables = [*tables, {}]
    for i, table in enumerate(tables):
        prefix = f"upstream[{i}]" if i < explicit else 'upstream (default zone ".")'
        _check_keys(table, _UPSTREAM_KEYS, prefix, source)
        zone = _zone(table, prefix, source)
        if zone in seen:
            raise _fail(source, f"{prefix}.zone", table.get("zone", "."),
                        f"a zone not already configured in upstream[{seen[zone]}]")
        seen[zone] = i
        texts = _strings(table, "servers", [RESOLV_CONF_KEYWORD], prefix, source)
        key = f"{prefix}.servers"
        if zone == "." and root_servers is not None:
            texts, key = list(root_servers), "--upstream"
        zones.append(UpstreamZone(
            zone=zone,
            servers=_servers(texts, key, ours, resolv_conf, source),
            force_tcp=_boolean(table, "force_tcp", _DEFAULT_UPSTREAM.force_tcp, prefix, source),
            timeout=_seconds(table, "timeout", _DEFAULT_UPSTREAM.timeout, prefix, source),
        ))
    return tuple(zones)


def _headers(doc: dict, source: str) -> tuple[HeaderRule, ...]:
    rules: list[HeaderRule] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(_tables(doc, "header", source)):
        prefix = f"header[{i}]"
        _check_keys(table, _HEADER_KEYS, prefix, source)
        zone = _zone(table, prefix, source)
        if zone in seen:
            raise _fail(source, f"{prefix}.zone", table.get("zone", "."),
                        f"a zone not already configured in header[{seen[zone]}]")
        seen[zone] = i
        flags = {}
        for key in ("set", "clear"):
            value = _strings(table, key, [], prefix, source)
            lowered = [v.lower() for v in value]
            if any(v not in HEADER_FLAGS for v in lowered) or len(set(lowered)) != len(lowered):
                raise _fail(source, f"{prefix}.{key}", value,
                            f"distinct flags among {', '.join(HEADER_FLAGS)}")
            flags[key] = frozenset(lowered)
        both = flags["set"] & flags["clear"]
        if both:
            raise _fail(source, f"{prefix}.clear", table["clear"],
                        f"flags not also in {prefix}.set ({', '.join(sorted(both))})")
        rules.append(HeaderRule(zone=zone, set=flags["set"], clear=flags["clear"]))
    return tuple(rules)


def _build(doc: dict, source: str, listen_ips: Iterable[str],
           root_servers: Sequence[str] | None, resolv_conf: str) -> WorkerConfig:
    ours = _Ours.parse(listen_ips)
    return WorkerConfig(
        cache=_cache(doc, source),
        upstreams=_upstreams(doc, source, ours, root_servers, resolv_conf),
        headers=_headers(doc, source),
    )

