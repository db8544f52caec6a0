"""What netsetup is asked to put in place (NetSpec) and what it reports (Report)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from netsetup.errors import InvalidSpec

BACKENDS = ("auto", "legacy", "nft")
IFNAMSIZ = 16  # kernel limit, including the trailing NUL


def _port(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise InvalidSpec(f"{name} = {value!r}: expected a port number 1-65535")
    return value


def _address(value: object) -> str:
    try:
        return ipaddress.ip_address(value).compressed  # type: ignore[arg-type]
    except ValueError:
        raise InvalidSpec(f"addresses: {value!r} is not an IPv4 or IPv6 address") from None


@dataclass(frozen=True)
class NetSpec:
    """The node's DNS network state: listen IPs on one interface, plus firewall rules for them."""

    addresses: tuple[str, ...] = ("169.254.20.10",)
    port: int = 53
    health_ports: tuple[int, ...] = (8080, 9253)
    interface: str = "nodelocaldns"
    manage_interface: bool = True
    manage_firewall: bool = True
    backend: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.addresses, str) or not self.addresses:
            raise InvalidSpec(f"addresses = {self.addresses!r}: expected a non-empty list of IP addresses")
        addrs = tuple(dict.fromkeys(_address(a) for a in self.addresses))
        object.__setattr__(self, "addresses", addrs)
        _port("port", self.port)
        object.__setattr__(self, "health_ports", tuple(_port("health_ports", p) for p in self.health_ports))
        name = self.interface
        if (not isinstance(name, str) or not name or len(name) >= IFNAMSIZ
                or any(c in name for c in "/: \t\n") or name in (".", "..")):
            raise InvalidSpec(f"interface = {name!r}: expected a link name of 1-15 characters without '/', ':' or spaces")
        if self.backend not in BACKENDS:
            raise InvalidSpec(f"backend = {self.backend!r}: expected one of {', '.join(BACKENDS)}")

    def addresses_of(self, family: int) -> tuple[str, ...]:
        return tuple(a for a in self.addresses if ipaddress.ip_address(a).version == family)


@dataclass
class Report:
    """Outcome of ensure/verify/teardown. backend is None when the firewall is not managed."""

    backend: str | None
    changes: list[str] = field(default_factory=list)
    ok: bool = True
    problems: list[str] = field(default_factory=list)
