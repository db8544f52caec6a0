"""The interface that carries the listen IPs, and the addresses on it (pyroute2).

Ownership marks live in the kernel, in the namespace they describe, so a
run that was SIGKILLed leaves enough behind for teardown to remove exactly
what it made, and two namespaces on one host never share a state file:

* a link twindns created carries LINK_ALIAS as its ifalias; a link without it
  was adopted (an operator made it) and teardown leaves it in place;
* every address twindns adds carries ADDR_PROTO in IFA_PROTO (Linux >= 6.1);
  on older kernels, where the mark is not kept, teardown falls back to the
  spec's listen IPs on the spec's interface.
"""
from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netsetup.errors import AddressConflict, InterfaceFailed, NotPermitted
from netsetup.spec import NetSpec

log = logging.getLogger("twindns.netsetup")

LINK_ALIAS = "twindns: created by twindns, removed by twindns net teardown"
ADDR_PROTO = 53  # any IFA_PROTO value the kernel does not assign itself (it uses 0-3)
IFA_F_NODAD = 0x02  # usable at once: DAD on a port-less link would leave it tentative
IFF_UP = 0x1


@dataclass(frozen=True)
class Addr:
    """An address as the kernel lists it."""

    index: int
    address: str
    prefixlen: int
    proto: int


@contextlib.contextmanager
def _netlink(what: str) -> Iterator[None]:
    try:
        yield
    except NetlinkError as exc:
        if exc.code == errno.EPERM:
            raise NotPermitted(f"{what}: operation not permitted: run as root or with CAP_NET_ADMIN") from None
        raise InterfaceFailed(f"{what}: {os.strerror(exc.code)}") from None


def _find_link(ipr: IPRoute, name: str):
    for link in ipr.get_links():
        if link.get_attr("IFLA_IFNAME") == name:
            return link
    return None


def _addresses(ipr: IPRoute) -> list[Addr]:
    return [Addr(a["index"], ipaddress.ip_address(a.get_attr("IFA_ADDRESS")).compressed,
                 a["prefixlen"], a.get_attr("IFA_PROTO") or 0)
            for a in ipr.get_addr()]


def _prefixlen(address: str) -> int:
    return 128 if ipaddress.ip_address(address).version == 6 else 32


def _names(ipr: IPRoute) -> dict[int, str]:
    return {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def _conflicts(ipr: IPRoute, spec: NetSpec, our_index: int | None) -> list[str]:
    names = _names(ipr)
    return [f"{a.address} is already on interface {names.get(a.index, a.index)}"
            for a in _addresses(ipr) if a.address in spec.addresses and a.index != our_index]


def _create(ipr: IPRoute, name: str) -> tuple[int, str]:
    with _netlink(f"creating interface {name}"):
        try:
            ipr.link("add", ifname=name, kind="dummy")
            kind = "dummy"
        except NetlinkError as exc:
            if exc.code != errno.EOPNOTSUPP:
                raise
            log.warning("kernel has no dummy link driver; creating %s as a bridge without ports", name)
            ipr.link("add", ifname=name, kind="bridge")
            kind = "bridge: the kernel has no dummy driver"
        index = ipr.link_lookup(ifname=name)[0]
        # The kernel ignores IFLA_IFALIAS in RTM_NEWLINK, hence a second step.
        ipr.link("set", index=index, ifalias=LINK_ALIAS)
    return index, kind


def ensure_link(spec: NetSpec) -> list[str]:
    """Create or adopt the interface, bring it up, put every listen IP on it; the changes made."""
    changes: list[str] = []
    with IPRoute() as ipr:
        link = _find_link(ipr, spec.interface)
        conflicts = _conflicts(ipr, spec, link["index"] if link else None)
        if conflicts:
            raise AddressConflict(f"{conflicts[0]}; remove it there or choose another listen address")
        if link is None:
            index, kind = _create(ipr, spec.interface)
            changes.append(f"created interface {spec.interface} ({kind})")
        else:
            index = link["index"]
            if link.get_attr("IFLA_IFALIAS") != LINK_ALIAS:
                log.debug("adopting existing interface %s (it stays on teardown)", spec.interface)
        with _netlink(f"configuring interface {spec.interface}"):
            if link is None or not link["flags"] & IFF_UP:
                ipr.link("set", index=index, state="up")
                changes.append(f"set {spec.interface} up")
            present = _addresses(ipr)
            on_link = {a.address for a in present if a.index == index}
            for address in spec.addresses:
                if address not in on_link:
                    v6 = ipaddress.ip_address(address).version == 6
                    ipr.addr("add", index=index, address=address, prefixlen=_prefixlen(address),
                             proto=ADDR_PROTO, **({"flags": IFA_F_NODAD} if v6 else {}))
                    changes.append(f"added {address}/{_prefixlen(address)} to {spec.interface}")
            changes += _delete_addresses(ipr, [a for a in present if a.proto == ADDR_PROTO
                                               and a.address not in spec.addresses])
    return changes


def _delete_addresses(ipr: IPRoute, addrs: list[Addr]) -> list[str]:
    names = _names(ipr)
    changes = []
    for a in addrs:
        try:
            ipr.addr("del", index=a.index, address=a.address, prefixlen=a.prefixlen)
        except NetlinkError as exc:
            if exc.code == errno.EADDRNOTAVAIL:  # gone meanwhile: fine
                continue
            raise
        changes.append(f"removed {a.address}/{a.prefixlen} from {names.get(a.index, a.index)}")
    return changes


def link_problems(spec: NetSpec) -> list[str]:
    """What differs from the spec: missing or down interface, missing or stray addresses, conflicts."""
    with IPRoute() as ipr:
        link = _find_link(ipr, spec.interface)
        problems = _conflicts(ipr, spec, link["index"] if link else None)
        if link is None:
            return problems + [f"interface {spec.interface} is missing"]
        if not link["flags"] & IFF_UP:
            problems.append(f"interface {spec.interface} is down")
        present = _addresses(ipr)
        names = _names(ipr)
        on_link = {a.address for a in present if a.index == link["index"]}
        problems += [f"address {a}/{_prefixlen(a)} is missing on {spec.interface}"
                     for a in spec.addresses if a not in on_link]
        problems += [f"stray address of ours: {a.address}/{a.prefixlen} on {names.get(a.index, a.index)}"
                     for a in present if a.proto == ADDR_PROTO and a.address not in spec.addresses]
    return problems


def teardown_link(spec: NetSpec) -> list[str]:
    """Delete links we created; from adopted links remove only our addresses."""
    changes: list[str] = []
    with IPRoute() as ipr, _netlink("removing twindns interfaces and addresses"):
        for link in ipr.get_links():
            if link.get_attr("IFLA_IFALIAS") == LINK_ALIAS:
                ipr.link("del", index=link["index"])
                changes.append(f"deleted interface {link.get_attr('IFLA_IFNAME')}")
        # Without the kernel's address marks, the spec's IPs on the spec's
        # interface are the best guess at ours; with them, an address without
        # the mark was put there by someone else and stays.
        adopted = None if kernel_keeps_address_marks() else _find_link(ipr, spec.interface)
        changes += _delete_addresses(ipr, [
            a for a in _addresses(ipr)
            if a.proto == ADDR_PROTO or (adopted and a.index == adopted["index"] and a.address in spec.addresses)])
    return changes


def kernel_keeps_address_marks(release: str | None = None) -> bool:
    """IFA_PROTO on addresses is kept from Linux 6.1 on."""
    numbers = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return numbers is not None and (int(numbers.group(1)), int(numbers.group(2))) >= (6, 1)
