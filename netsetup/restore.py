"""Firewall rules through the iptables tools: read with `*-save -t TABLE`,
changed with `*-restore --noflush`, for both the nft and legacy backends.

Why the tools and not a library: they are what kube-proxy, kubelet and
node-local-dns use, so twindns writes exactly what those agents and
operators read back (`iptables -S`); they ship with every iptables package,
so installing twindns needs no C compiler (python-iptables builds from
source); and one restore is one commit per table: all our changes to a
table land together or not at all. --noflush keeps everyone else's rules.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from netsetup.errors import BackendUnavailable, FirewallBusy, FirewallFailed
from netsetup.rules import TABLE_CHAINS, Plan, parse_save, plan, Rule
from netsetup.tools import TOOL_TIMEOUT, run_tool

# A concurrent writer can delete a rule between our save and our restore;
# the restore then fails as a whole and we read again.
ATTEMPTS = 3
_PLAIN = re.compile(r"[\w.:/,!+=@%-]+")
_LOCK_HELD = "holding the xtables lock"
_NO_KERNEL = ("insmod", "Table does not exist", "Protocol not supported")


def _quote(arg: str) -> str:
    # iptables-restore splits on blanks and understands double quotes only.
    if _PLAIN.fullmatch(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def restore_script(p: Plan) -> str:
    """iptables-restore input applying plan p: deletions by the listed form, additions at the top."""
    lines: list[str] = []
    for table in TABLE_CHAINS:
        dels = [r for r in p.delete if r.table == table]
        adds = [r for r in p.add if r.table == table]
        if not dels and not adds:
            continue
        lines.append(f"*{table}")
        lines += [f"-D {r.chain} " + " ".join(map(_quote, r.seen_as or r.args())) for r in dels]
        # Inserted in reverse at position 1, so they end up in desired order
        # and ahead of rules that could shadow them (a host firewall's DROP).
        lines += [f"-I {r.chain} 1 " + " ".join(map(_quote, r.args())) for r in reversed(adds)]
        lines.append("COMMIT")
    return "".join(f"{line}\n" for line in lines)


class RestoreBackend:
    """Our rules in one iptables flavour ("nft" or "legacy"), through its save/restore tools."""

    name = ""
    restore_timeout = TOOL_TIMEOUT

    def tool(self, family: int, verb: str) -> str:
        return f"{'ip6tables' if family == 6 else 'iptables'}-{self.name}-{verb}"

    def readable_tables(self, family: int) -> Iterable[str]:
        """The tables to read; a subclass leaves out those reading would create."""
        return TABLE_CHAINS

    def restore_argv(self, family: int) -> list[str]:
        return [self.tool(family, "restore"), "--noflush"]

    def read(self, family: int) -> list[Rule]:
        text = []
        for table in self.readable_tables(family):
            argv = [self.tool(family, "save"), "-t", table]
            proc = run_tool(argv)
            if proc.returncode != 0 and "does not exist" in proc.stderr:
                continue  # a table nobody created yet holds none of our rules
            if proc.returncode != 0:
                raise FirewallFailed(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.returncode}")
            text.append(proc.stdout)
        return parse_save("".join(text), family)

    def sync(self, family: int, desired: list[Rule]) -> Plan:
        """Make the kernel hold exactly `desired` of our rules for this family; return what was done."""
        error = ""
        argv = self.restore_argv(family)
        for _ in range(ATTEMPTS):
            p = plan(desired, self.read(family))
            if not p.delete and not p.add:
                return p
            proc = run_tool(argv, stdin=restore_script(p), timeout=self.restore_timeout)
            if proc.returncode == 0:
                return p
            error = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            if _LOCK_HELD in proc.stderr:
                raise FirewallBusy(f"{argv[0]}: /run/xtables.lock is held by another program "
                                   f"(iptables, kube-proxy?): {error}")
            if any(marker in proc.stderr for marker in _NO_KERNEL):
                raise BackendUnavailable(f"{argv[0]}: the kernel has no {self.name} iptables support ({error})")
        raise FirewallFailed(f"{argv[0]} refused our rules: {error}")
