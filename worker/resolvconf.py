"""The host's nameservers, read from /etc/resolv.conf.

Only `nameserver` lines matter here. dnspython's reader is not used because it
rejects the whole file for one odd `domain` or `nameserver` line (and accepts
URLs as nameservers), while a node cache must keep working from the lines it
can use.
"""
from __future__ import annotations

import ipaddress

RESOLV_CONF = "/etc/resolv.conf"


class ResolvConfError(OSError):
    """resolv.conf could not be read."""


def nameservers(path: str = RESOLV_CONF) -> list[str]:
    """The IP addresses of the `nameserver` lines in `path`, in file order,
    without duplicates; lines whose address is not an IP are skipped (glibc
    skips them too)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise ResolvConfError(f"{path}: cannot read: {e.strerror or e}") from e
    return parse(text)


def parse(text: str) -> list[str]:
    """The nameserver addresses in resolv.conf `text` (see nameservers())."""
    found: list[str] = []
    for line in text.splitlines():
        tokens = line.split()
        if len(tokens) < 2 or tokens[0] != "nameserver":
            continue
        address = tokens[1]
        try:
            # A scope ("fe80::1%eth0") is kept: the socket layer needs it.
            ipaddress.ip_address(address)
        except ValueError:
            continue
        if address not in found:
            found.append(address)
    return found
