"""The legacy backend: x_tables rules through python-iptables (libiptc).

libiptc replaces a whole table at commit, so every change holds the xtables
lock from the moment the table is read until it is committed: a concurrent
iptables/kube-proxy writer then waits instead of being overwritten.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import MappingProxyType

from netsetup.errors import BackendUnavailable, FirewallFailed, NotPermitted
from netsetup.rules import TABLE_CHAINS, Plan, Rule, parse_args, plan
from netsetup.xtlock import xtables_lock

_NAMES_FILE = MappingProxyType({4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"})
_FLAG_OPTIONS = MappingProxyType({"fragment": "-f"})
_RULE_OPTIONS = MappingProxyType({"src": "-s", "dst": "-d", "protocol": "-p",
                                  "in-interface": "-i", "out-interface": "-o"})


def _iptc():
    try:
        import iptc
        import iptc.easy
    except (ImportError, OSError) as exc:  # python-iptables loads libip4tc/libxtables at import
        raise BackendUnavailable(f"legacy iptables unavailable (python-iptables: {exc})") from None
    return iptc


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    iptc = _iptc()
    try:
        yield
    except (iptc.IPTCError, iptc.errors.XTablesError) as exc:
        text = str(exc)
        if "Permission denied" in text or "must be root" in text or "not permitted" in text:
            raise NotPermitted(f"{what}: permission denied: run as root or with CAP_NET_ADMIN") from None
        if "insmod" in text or "does not exist" in text:
            raise BackendUnavailable(f"{what}: the kernel has no legacy iptables support ({text})") from None
        raise FirewallFailed(f"{what}: {text}") from None


def _loaded_tables(family: int) -> set[str]:
    # Only tables something already instantiated in this netns; opening one
    # through libiptc would load the module and create it.
    try:
        with open(_NAMES_FILE[family]) as f:
            return set(f.read().split())
    except FileNotFoundError:
        return set()


def _decoded_args(decoded: dict) -> list[str]:
    """python-iptables' rule dict as iptables-save arguments."""
    args: list[str] = []
    for key, value in decoded.items():
        if key == "counters":
            continue
        if key in _RULE_OPTIONS:
            args += [_RULE_OPTIONS[key], str(value)]
        elif key in _FLAG_OPTIONS:
            args.append(_FLAG_OPTIONS[key])
        elif key == "target":
            name, params = next(iter(value.items())) if isinstance(value, dict) else (value, {})
            args += ["-g", params] if name == "goto" else ["-j", name] + _params(params)
        else:
            for params in value if isinstance(value, list) else [value]:
                args += ["-m", key] + _params(params if isinstance(params, dict) else {key: params})
    return args


def _params(params: dict) -> list[str]:
    out: list[str] = []
    for name, value in params.items():
        values = value if isinstance(value, list) else [value]
        out += [f"--{name}", *(str(v) for v in values if v != "")]
    return out


class LegacyBackend:
    """iptables rules in the kernel's x_tables, written by python-iptables under the xtables lock."""

    name = "legacy"

    def __init__(self, lock_timeout: float = 10.0) -> None:
        self._iptc = _iptc()
        self._lock_timeout = lock_timeout

    def _table(self, family: int, name: str):
        cls = self._iptc.Table6 if family == 6 else self._iptc.Table
        with _translated(f"{'ip6tables' if family == 6 else 'iptables'}-legacy table {name}"):
            table = cls(name)
            table.autocommit = False
            table.refresh()
        return table

    def _snapshot(self, family: int, tables: set[str]) -> tuple[dict, list[tuple[Rule, object]]]:
        opened, found = {}, []
        for name in TABLE_CHAINS:
            if name not in tables:
                continue
            table = opened[name] = self._table(family, name)
            for chain in TABLE_CHAINS[name]:
                for entry in self._iptc.Chain(table, chain).rules:
                    try:
                        decoded = self._iptc.easy.decode_iptc_rule(entry, family == 6)
                    except (self._iptc.errors.XTablesError, self._iptc.IPTCError, ValueError):
                        # Another agent's rule using an extension this host's
                        # libxtables cannot decode: never ours (ours always decode),
                        # so it is left alone and not read.
                        continue
                    found.append((parse_args(family, name, chain, _decoded_args(decoded)), entry))
        return opened, found

    def read(self, family: int) -> list[Rule]:
        _, found = self._snapshot(family, _loaded_tables(family) & set(TABLE_CHAINS))
        return [rule for rule, _ in found]

    def _entry(self, rule: Rule):
        iptc = self._iptc
        entry = iptc.Rule6() if rule.family == 6 else iptc.Rule()
        if rule.src:
            entry.src = rule.src
        if rule.dst:
            entry.dst = rule.dst
        if rule.proto:
            entry.protocol = rule.proto
            if rule.sport or rule.dport:
                match = entry.create_match(rule.proto)
                if rule.sport:
                    match.sport = str(rule.sport)
                if rule.dport:
                    match.dport = str(rule.dport)
        if rule.comment is not None:
            entry.create_match("comment").comment = rule.comment
        target = entry.create_target(rule.target[0])
        for option in rule.target[1:]:
            target.set_parameter(option.lstrip("-"), "")
        return entry

    def sync(self, family: int, desired: list[Rule]) -> Plan:
        """Make the kernel hold exactly `desired` of our rules for this family; return what was done."""
        what = f"{'ip6tables' if family == 6 else 'iptables'}-legacy"
        with xtables_lock(self._lock_timeout):
            wanted_tables = {r.table for r in desired}
            opened, found = self._snapshot(family, (_loaded_tables(family) & set(TABLE_CHAINS)) | wanted_tables)
            p = plan(desired, [rule for rule, _ in found])
            entries = {id(rule): entry for rule, entry in found}
            with _translated(what):
                for rule in p.delete:
                    self._iptc.Chain(opened[rule.table], rule.chain).delete_rule(entries[id(rule)])
                for rule in reversed(p.add):
                    self._iptc.Chain(opened[rule.table], rule.chain).insert_rule(self._entry(rule))
                for name in {r.table for r in p.delete + p.add}:
                    opened[name].commit()
                    opened[name].refresh()
        return p
