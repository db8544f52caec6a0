"""Addresses as the config file, the command lines and status write them:
"IP:PORT", "[IPv6]:PORT", and for upstream servers a bare IP (port 53)."""
from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass

DNS_PORT = 53


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return format_server((self.host, self.port))


def format_server(server: tuple[str, int]) -> str:
    ip, port = server
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def parse_endpoint(text: str) -> Endpoint:
    """"IP:PORT" or "[IPv6]:PORT" (the port is required). ValueError if not."""
    if ":" not in text:
        raise ValueError("no port")
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    ip, p = str(ipaddress.ip_address(host)), int(port)
    if not 1 <= p <= 65535:
        raise ValueError(f"port {p} is not 1-65535")
    return Endpoint(ip, p)


def parse_server(text: str, default_port: int = DNS_PORT) -> tuple[str, int]:
    """"IP", "IP:PORT", "[IPv6]:PORT" or a bare IPv6 address -> (ip, port).
    Raises ValueError saying what is expected."""
    expected = "expected IP, IP:PORT or [IPv6]:PORT"
    host, port = text, default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(expected)
        if rest:
            port = _parse_port(rest[1:], expected)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _parse_port(port_text, expected)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ValueError(expected) from None


def _parse_port(text: str, expected: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(expected + " (port 1-65535)")
    return int(text)


# connect() to an address that is no longer on this host (a reload removed it).
ADDRESS_GONE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL})


def steer_away(sock: socket.socket) -> None:
    """connect() a bound UDP listening socket to its own address: the kernel
    stops choosing it for new datagrams (it leaves the reuseport group) and
    keeps the queued ones readable. A socket whose address has left the host
    (a reload that removes a listen address takes it off the interface
    before the old workers are replaced) gets nothing new anyway: done."""
    try:
        sock.connect(sock.getsockname())
    except OSError as e:
        if e.errno not in ADDRESS_GONE:
            raise
