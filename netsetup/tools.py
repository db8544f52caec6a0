"""Running the iptables command-line tools with a deadline and readable errors."""
from __future__ import annotations

import subprocess

from netsetup.errors import BackendUnavailable, NotPermitted

# iptables-nft 1.8.3 can loop forever on some rule sets (the reason
# iptables-wrappers runs it under `timeout 5`).
TOOL_TIMEOUT = 10.0
_DENIED = ("Permission denied", "Operation not permitted", "you must be root")


def run_tool(argv: list[str], stdin: str | None = None, timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess:
    """Run argv; a missing tool is BackendUnavailable, a refusal for lack of privilege NotPermitted.
    Other failures are returned for the caller to judge."""
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise BackendUnavailable(f"{argv[0]} not found: install iptables 1.8 or later") from None
    except subprocess.TimeoutExpired:
        raise BackendUnavailable(f"{argv[0]} did not finish within {timeout:g} s") from None
    if proc.returncode != 0 and any(d in proc.stderr for d in _DENIED):
        raise NotPermitted(f"{argv[0]}: permission denied: run as root or with CAP_NET_ADMIN")
    return proc


def output_or_empty(argv: list[str]) -> str:
    """stdout of argv, or "" when the tool is missing, fails or hangs (best-effort probes)."""
    try:
        proc = run_tool(argv, timeout=5.0)
    except BackendUnavailable:
        return ""
    return proc.stdout if proc.returncode == 0 else ""
