"""The nft backend: rules written with `iptables-nft-restore --noflush`, read
back with `iptables-nft-save`.

Why iptables-nft-restore and not the `nft` tool: on an iptables-nft host the
tables `ip raw` / `ip filter` belong to the iptables compatibility layer that
kube-proxy, kubelet and Docker write through. Rules added there in native nft
syntax are ones iptables-nft-save cannot print back ("table is incompatible"),
which breaks every agent that saves and restores those tables, and hides our
rules from operators who use `iptables -S`. Going through iptables-nft-restore
writes xtables-compatible rules, and each restore is a single nftables
transaction: all changes to one family land together or not at all, with no
lock file needed. --noflush keeps everyone else's rules.
"""
from __future__ import annotations

import re

from netsetup.errors import FirewallFailed
from netsetup.rules import TABLE_CHAINS, Plan, Rule, parse_save, plan
from netsetup.tools import run_tool

# A concurrent writer can delete a rule between our save and our restore;
# the transaction then fails as a whole and we read again.
ATTEMPTS = 3
_PLAIN = re.compile(r"[\w.:/,!+=@%-]+")


def _tool(family: int, verb: str) -> str:
    return f"{'ip6tables' if family == 6 else 'iptables'}-nft-{verb}"


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


class NftBackend:
    """iptables rules kept in nftables through the iptables-nft tools."""

    name = "nft"

    def read(self, family: int) -> list[Rule]:
        text = []
        for table in TABLE_CHAINS:
            argv = [_tool(family, "save"), "-t", table]
            proc = run_tool(argv)
            if proc.returncode != 0 and "does not exist" in proc.stderr:
                continue  # older iptables-nft: a table nobody created yet holds none of our rules
            if proc.returncode != 0:
                raise FirewallFailed(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.returncode}")
            text.append(proc.stdout)
        return parse_save("".join(text), family)

    def sync(self, family: int, desired: list[Rule]) -> Plan:
        """Make the kernel hold exactly `desired` of our rules for this family; return what was done."""
        error = ""
        for _ in range(ATTEMPTS):
            p = plan(desired, self.read(family))
            if not p.delete and not p.add:
                return p
            proc = run_tool([_tool(family, "restore"), "--noflush"], stdin=restore_script(p))
            if proc.returncode == 0:
                return p
            error = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise FirewallFailed(f"{_tool(family, 'restore')} refused our rules: {error[0]}")
