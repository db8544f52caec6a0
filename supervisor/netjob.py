"""`python -m supervisor.netjob ensure|verify|teardown SPEC_JSON`: run one
netsetup operation in a short-lived child and print its Report as JSON.

Why a child: pyroute2's synchronous API runs an event loop of its own, which
cannot run inside the supervisor's (running) loop, and a thread is not an
option in a process that spawns children. Exit 0 with
{"backend", "changes", "ok", "problems"}, or 2 with {"error": ...}.
"""
from __future__ import annotations

import dataclasses
import json
import sys

OPERATIONS = ("ensure", "verify", "teardown")


def spec_json(spec) -> str:
    return json.dumps(dataclasses.asdict(spec))


def main(argv: list[str]) -> int:
    import netsetup
    if len(argv) != 2 or argv[0] not in OPERATIONS:
        print(json.dumps({"error": f"usage: netjob {'|'.join(OPERATIONS)} SPEC_JSON"}))
        return 2
    try:
        fields = json.loads(argv[1])
        spec = netsetup.NetSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        report = getattr(netsetup, argv[0])(spec)
    except (netsetup.NetsetupError, ValueError, TypeError) as e:
        print(json.dumps({"error": str(e)}))
        return 2
    print(json.dumps(dataclasses.asdict(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
