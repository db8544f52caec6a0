"""sd_notify(3) for the supervisor: tell systemd we are ready, alive,
reloading or stopping, over the datagram socket named by $NOTIFY_SOCKET.

Without $NOTIFY_SOCKET (not under systemd, or Type= is not notify) every
call is a no-op, so the arbiter calls these unconditionally:

    notifier = Notifier.from_environ()
    notifier.status("starting workers")
    notifier.ready()                       # once both workers answered their probe
    interval = notifier.watchdog_interval()  # seconds or None
    ... every interval / 2 from the main loop: notifier.watchdog()
    notifier.reloading(); ...; notifier.ready()   # around a rolling restart
    notifier.stopping()

No send ever blocks the main loop: the socket is non-blocking. When the
receiver's queue is full (the kernel default `net.unix.max_dgram_qlen` is
10; a busy systemd lags), a STATUS-only line is dropped and counted, and a
state change (READY, RELOADING, STOPPING, WATCHDOG) is held and sent again
by `flush()`, which the main loop calls every tick, in the order it was made.

The environment is left as it is: after `twindns upgrade` the re-executed
supervisor (same pid) needs it again. Workers must not inherit it
(supervisor.spawn scrubs it from their environment).
"""
from __future__ import annotations

import array
import collections
import logging
import os
import socket
import time
from typing import Mapping

log = logging.getLogger("twindns.sdnotify")

HELD_MAX = 32          # state changes kept while the queue is full; far more than one reload makes


class NotifySocketError(ValueError):
    """$NOTIFY_SOCKET names no usable unix socket address."""


def socket_address(value: str) -> str | bytes:
    """The address to sendto(): a path, or an abstract name for "@name"."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    raise NotifySocketError(f"NOTIFY_SOCKET={value!r}: expected an absolute path or @abstract name")


class Notifier:
    """Sends state lines to systemd; silent when there is no notify socket."""

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._held: collections.deque[bytes] = collections.deque(maxlen=HELD_MAX)
        self.dropped = 0               # STATUS-only lines lost to a full queue
        self._held_fds: collections.deque[tuple[str, list[int]]] = collections.deque()   # FDSTORE= to retry
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                       | socket.SOCK_NONBLOCK)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ, pid: int | None = None) -> "Notifier":
        """A notifier for $NOTIFY_SOCKET; the watchdog applies only if
        $WATCHDOG_PID is unset or names this process (`pid`, default ours)."""
        raw = environ.get("NOTIFY_SOCKET")
        address = socket_address(raw) if raw else None
        return cls(address, _watchdog_usec(environ, os.getpid() if pid is None else pid))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def watchdog_interval(self) -> float | None:
        """WatchdogSec in seconds (ping at half of it), or None when off."""
        if self._sock is None or not self._watchdog_usec:
            return None
        return self._watchdog_usec / 1_000_000

    def notify(self, *lines: str) -> bool:
        """Send one datagram of `KEY=value` lines without blocking; False if
        it was not delivered now (a state change is then held for flush())."""
        if self._sock is None:
            return False
        data = "\n".join(lines).encode()
        if not self._held:
            try:
                if self._send(data):
                    return True
            except OSError as exc:
                # systemd gone or the socket unusable: never let that take the service down.
                log.warning("sd_notify failed: %s", exc)
                return False
        if all(line.startswith("STATUS=") for line in lines):
            self.dropped += 1
        elif not (data == b"WATCHDOG=1" and data in self._held):
            if not self._held:
                log.warning("sd_notify: systemd's notify queue is full; holding state changes, "
                            "dropping STATUS lines until it drains")
            self._held.append(data)
        self.flush()
        return False

    def flush(self) -> None:
        """Send held state changes, oldest first, until the queue is full again."""
        self._flush_fds()
        while self._held and self._sock is not None:
            try:
                if not self._send(self._held[0]):
                    return
            except OSError as exc:
                log.warning("sd_notify failed: %s", exc)
            self._held.popleft()
            if not self._held:
                log.info("sd_notify: notify queue drained, held state changes delivered")

    def _send(self, data: bytes) -> bool:
        """True when sent, False when the receiver's queue is full."""
        try:
            self._sock.sendto(data, self._address)
            return True
        except BlockingIOError:
            return False

    def store_fds(self, name: str, fds: list[int]) -> bool:
        """Put `fds` into the service's fd store under FDNAME=name (systemd
        hands them back as $LISTEN_FDS to the next process of the service,
        and closes them when the service is stopped)."""
        if self._sock is None or not fds:
            return False
        try:
            # not socket.send_fds(): it drops its address argument (Python 3.11)
            self._sock.sendmsg([f"FDSTORE=1\nFDNAME={name}".encode()],
                               [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))], 0, self._address)
            return True
        except BlockingIOError:
            # systemd's queue is full: hold copies and retry from flush(), like a state change
            self._held_fds.append((name, [os.dup(fd) for fd in fds]))
            return False
        except OSError as exc:
            log.warning("sd_notify FDSTORE failed: %s", exc)
            return False

    def _flush_fds(self) -> None:
        while self._held_fds and self._sock is not None:
            name, fds = self._held_fds[0]
            try:
                self._sock.sendmsg([f"FDSTORE=1\nFDNAME={name}".encode()],
                                   [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))], 0, self._address)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("sd_notify FDSTORE failed: %s", exc)
            self._held_fds.popleft()
            for fd in fds:
                os.close(fd)

    def held_fd_count(self) -> int:
        """FDSTORE= messages not yet delivered (systemd's queue was full)."""
        return len(self._held_fds)

    def remove_fds(self, name: str) -> bool:
        """Close what the fd store holds under FDNAME=name."""
        return self.notify("FDSTOREREMOVE=1", f"FDNAME={name}")

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1"] + ([f"STATUS={_one_line(status)}"] if status else [])
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        # systemd >= 253 wants the CLOCK_MONOTONIC time of the reload start;
        # older versions ignore the extra field.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        lines = ["RELOADING=1", f"MONOTONIC_USEC={usec}"]
        return self.notify(*lines, *([f"STATUS={_one_line(status)}"] if status else []))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return text.replace("\n", " ")


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != pid:
                return None
        except ValueError:
            return None
    return usec
