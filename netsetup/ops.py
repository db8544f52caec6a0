"""ensure / verify / teardown: the three things callers do with the node's network state."""
from __future__ import annotations

import logging

from netsetup.backend import not_in_use, select
from netsetup.caps import require_net_admin
from netsetup.errors import NetsetupError
from netsetup.link import ensure_link, link_problems, teardown_link
from netsetup.rules import desired_rules, plan
from netsetup.spec import NetSpec, Report
from netsetup.sysctl import ensure_tcp_migrate_req, tcp_migrate_req_problems

FAMILIES = (4, 6)
log = logging.getLogger("twindns.netsetup")


def _desired(spec: NetSpec, family: int):
    return desired_rules(spec.addresses_of(family), spec.port, spec.health_ports)


def _backend(action: str, spec: NetSpec):
    """Check privilege and choose the backend before anything is touched, so
    a missing capability or an unusable backend leaves nothing half done."""
    require_net_admin(action)
    return select(spec.backend) if spec.manage_firewall else None


def ensure(spec: NetSpec) -> Report:
    """Put the spec's interface, addresses, sysctl and rules in place; idempotent.
    Families without listen IPs get their stale rules of ours removed."""
    backend = _backend("ensure", spec)
    changes: list[str] = []
    if spec.manage_interface:
        changes += ensure_link(spec)
    changes += ensure_tcp_migrate_req()
    if backend is not None:
        for family in FAMILIES:
            changes += backend.sync(family, _desired(spec, family)).changes()
        changes += _remove_strays(backend.name)
    return Report(backend.name if backend else None, changes)


def _remove_strays(active: str) -> list[str]:
    """Our rules in the backend not in use are removed: one copy, in one place."""
    changes: list[str] = []
    for other in not_in_use(active):
        for family in FAMILIES:
            try:
                changes += [f"{c} ({other.name}, not in use)" for c in other.sync(family, []).changes()]
            except NetsetupError as e:
                # The backend in use is right; this is tidying, and a backend
                # this host cannot read holds nothing we wrote.
                log.warning("cannot look for rules of ours in %s: %s", other.name, e)
    return changes


def verify(spec: NetSpec) -> Report:
    """Read the kernel back; ok is False and problems say why when anything differs from the spec."""
    backend = _backend("verify", spec)
    problems: list[str] = []
    if spec.manage_interface:
        problems += link_problems(spec)
    problems += tcp_migrate_req_problems()
    if backend is not None:
        for family in FAMILIES:
            problems += plan(_desired(spec, family), backend.read(family)).problems
        for other in not_in_use(backend.name):
            for family in FAMILIES:
                try:
                    stray = plan([], other.read(family)).delete
                except NetsetupError as e:
                    log.warning("cannot look for rules of ours in %s: %s", other.name, e)
                    continue
                if stray:
                    problems.append(f"{len(stray)} IPv{family} rule(s) of ours in {other.name}, "
                                    f"which is not in use (the next ensure removes them)")
    return Report(backend.name if backend else None, [], not problems, problems)


def teardown(spec: NetSpec) -> Report:
    """Remove every rule, address and interface of ours, including a killed run's; nothing else."""
    backend = _backend("teardown", spec)
    changes: list[str] = []
    if backend is not None:
        for family in FAMILIES:
            changes += backend.sync(family, []).changes()
        changes += _remove_strays(backend.name)
    if spec.manage_interface:
        changes += teardown_link(spec)
    return Report(backend.name if backend else None, changes)
