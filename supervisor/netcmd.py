"""`twindns net ensure|verify|teardown [--config FILE]`: the operator's door to
the node's network state, without a running supervisor.

Exit status: 0 done / all in place, 1 verify found problems, 2 netsetup
could not do it (message on stderr), 78 the config is invalid.
"""
from __future__ import annotations

import logging
import sys

from contract.exits import EX_CONFIG

EXIT_PROBLEMS = 1
EXIT_FAILED = 2


def _describe(spec) -> str:
    parts = []
    if spec.manage_interface:
        parts.append(f"interface {spec.interface} with {', '.join(spec.addresses)}")
    if spec.manage_firewall:
        parts.append(f"rules for port {spec.port}" +
                     (f" and health ports {', '.join(map(str, spec.health_ports))}" if spec.health_ports else ""))
    return "; ".join(parts) or "nothing (interface.manage and firewall.manage are both false)"


def main(args) -> int:
    # Imported here: `twindns status` and friends must not pay for pyroute2.
    import netsetup
    from supervisor.config import ConfigError, load

    logging.basicConfig(format="twindns net: %(message)s", level=logging.WARNING, stream=sys.stderr)
    action = args.action
    try:
        config = load(args.config)
        spec = config.net_spec()
    except (ConfigError, netsetup.InvalidSpec) as exc:
        print(f"twindns net {action}: {exc}", file=sys.stderr)
        return EX_CONFIG
    if action == "release":
        # twindns-net.service's ExecStop: what a supervisor does on exit, honouring the config.
        if not config.interface.teardown:
            print("release: kept (interface.teardown = false)")
            return 0
        action = "teardown"
    operation = {"ensure": netsetup.ensure, "verify": netsetup.verify, "teardown": netsetup.teardown}[action]
    try:
        report = operation(spec)
    except netsetup.NetsetupError as exc:
        print(f"twindns net {action}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if report.backend:
        print(f"firewall backend: {report.backend}")
    for line in report.changes:
        print(line)
    for line in report.problems:
        print(f"problem: {line}")
    if action == "verify":
        print(f"verify: {'ok' if report.ok else f'{len(report.problems)} problem(s)'}: {_describe(spec)}")
        return 0 if report.ok else EXIT_PROBLEMS
    if action == "ensure":
        done = f"{len(report.changes)} change(s)" if report.changes else "nothing to change"
        print(f"ensure: {done}; in place: {_describe(spec)}")
    else:
        done = f"removed {len(report.changes)} item(s)" if report.changes else "nothing of twindns's was in place"
        print(f"teardown: {done}")
    return 0
