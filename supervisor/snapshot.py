"""The supervisor's state as one typed record: its workers (pids,
generations, states, restart history), their sockets and channels, the
metrics that must not go backwards and the HTTP listeners. Written by one
supervisor, read by the one that takes over: today the re-executed image of
`twindns upgrade` (supervisor/upgrade.py), through a memfd.

Portable and process-local fields. Everything here means the same to any
supervisor on the host except the fd numbers, which name entries of the
writer's fd table: `WorkerFds` (every field but `steered`), `ListenerRecord.fd`
`HeldRecord.fd` and `SupervisorSnapshot.reply_fd`. They stay valid across execve (upgrade:
same process). To hand the state to another process, send the fds in
`fds()` order with SCM_RIGHTS and let the receiver map them to its own
numbers with `renumbered()`.

The JSON is the shape releases before this module wrote and read, plus
`format`: readers ignore keys they do not know; a change an older reader
would misread takes a new format number.
"""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field, replace
from typing import Any

FORMAT = 1


class SnapshotError(ValueError):
    """A snapshot's JSON is not the shape this release reads."""


@dataclass(frozen=True)
class WorkerFds:
    """Process-local: our ends of one worker's fds (docs/internals.md)."""
    pidfd: int
    control: int
    probe: int
    udp: tuple[int, ...] = ()
    tcp: tuple[int, ...] = ()
    adopted_udp: tuple[int, ...] = ()      # a dead predecessor's sockets it drains
    steered: bool = False                  # portable: its UDP sockets are steered away
    log: int = -1                          # read end of its stdout/stderr pipe; -1: none (an older image's)

    def fds(self) -> list[int]:
        return [self.pidfd, self.control, self.probe, *self.udp, *self.tcp, *self.adopted_udp,
                *((self.log,) if self.log >= 0 else ())]

    def renumbered(self, new: dict[int, int]) -> "WorkerFds":
        return WorkerFds(new[self.pidfd], new[self.control], new[self.probe],
                         tuple(new[f] for f in self.udp), tuple(new[f] for f in self.tcp),
                         tuple(new[f] for f in self.adopted_udp), self.steered,
                         new[self.log] if self.log >= 0 else -1)

    def as_dict(self) -> dict:
        return {"pidfd": self.pidfd, "udp": list(self.udp), "tcp": list(self.tcp),
                "adopted_udp": list(self.adopted_udp), "steered": self.steered,
                "control": self.control, "probe": self.probe, **({"log": self.log} if self.log >= 0 else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "WorkerFds":
        return cls(int(d["pidfd"]), int(d["control"]), int(d["probe"]), _ints(d["udp"]), _ints(d["tcp"]),
                   _ints(d["adopted_udp"]), bool(d.get("steered", False)), int(d.get("log", -1)))


@dataclass(frozen=True)
class WorkerRecord:
    slot: str
    generation: int
    pid: int
    state: str                              # a SlotState value
    uptime: float                           # seconds, when the snapshot was taken
    fds: WorkerFds | None = None

    def as_dict(self) -> dict:
        return {"slot": self.slot, "generation": self.generation, "pid": self.pid, "state": self.state,
                "uptime": self.uptime, "fds": self.fds.as_dict() if self.fds is not None else {}}

    @classmethod
    def from_dict(cls, d: dict) -> "WorkerRecord":
        fds = d.get("fds") or None
        return cls(str(d.get("slot", "")), int(d.get("generation", 0)), int(d["pid"]), str(d.get("state", "")),
                   float(d.get("uptime", 0.0)), WorkerFds.from_dict(fds) if fds else None)


@dataclass(frozen=True)
class SlotRecord:
    name: str
    current: WorkerRecord | None = None
    retiring: tuple[WorkerRecord, ...] = ()
    restarts: dict[str, int] = field(default_factory=dict)   # RestartCause value -> count
    backoff_failures: int = 0
    given_up: str | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "current": self.current.as_dict() if self.current else None,
                "retiring": [w.as_dict() for w in self.retiring], "restarts": dict(self.restarts),
                "backoff_failures": self.backoff_failures, "given_up": self.given_up}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "SlotRecord":
        cur = d.get("current")
        return cls(str(d.get("name", name)), WorkerRecord.from_dict(cur) if cur else None,
                   tuple(WorkerRecord.from_dict(w) for w in d.get("retiring", [])),
                   {str(c): int(n) for c, n in d.get("restarts", {}).items()},
                   int(d.get("backoff_failures", 0)), d.get("given_up"))


@dataclass(frozen=True)
class SupervisorRecord:
    """The process and its pool (JSON key "arbiter")."""
    pid: int
    generation: int                         # the last worker generation spawned
    uptime: float
    config_arg: str | None = None           # what `reload` re-reads
    socket_arg: str | None = None           # --socket
    slots: dict[str, SlotRecord] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"pid": self.pid, "generation": self.generation, "uptime": self.uptime,
                "config_arg": self.config_arg, "socket_arg": self.socket_arg,
                "slots": {n: s.as_dict() for n, s in self.slots.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "SupervisorRecord":
        return cls(int(d.get("pid", 0)), int(d.get("generation", 0)), float(d.get("uptime", 0.0)),
                   d.get("config_arg"), d.get("socket_arg"),
                   {n: SlotRecord.from_dict(n, s) for n, s in d["slots"].items()})


@dataclass(frozen=True)
class ListenerRecord:
    host: str
    port: int
    fd: int                                 # process-local

    @classmethod
    def of(cls, sock: socket.socket) -> "ListenerRecord":
        host, port = sock.getsockname()[:2]
        return cls(host, port, sock.fileno())


@dataclass(frozen=True)
class HeldRecord:
    """One of the service's held sockets (supervisor/sockets.py HeldSockets), by its fd store name."""
    name: str
    fd: int                                 # process-local


@dataclass(frozen=True)
class SupervisorSnapshot:
    supervisor: SupervisorRecord
    from_version: str = ""
    to_version: str | None = None
    config_text: str = ""                   # the config that runs (the file may have been edited since)
    config_path: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)    # MetricsAggregator.snapshot()
    listeners: tuple[ListenerRecord, ...] = ()
    reply_fd: int | None = None             # process-local: the `twindns upgrade` client's connection
    held: tuple[HeldRecord, ...] = ()
    format: int = FORMAT

    def fds(self) -> list[int]:
        """Every process-local fd, in a fixed order (what must survive an exec, or be sent)."""
        out: list[int] = []
        for slot in self.supervisor.slots.values():
            if slot.current is not None and slot.current.fds is not None:
                out += slot.current.fds.fds()
        out += [h.fd for h in self.listeners]
        out += [h.fd for h in self.held]
        if self.reply_fd is not None:
            out.append(self.reply_fd)
        return out

    def renumbered(self, new: dict[int, int]) -> "SupervisorSnapshot":
        """The same state with every process-local fd `f` replaced by `new[f]`."""
        slots = {n: s if s.current is None or s.current.fds is None else
                 replace(s, current=replace(s.current, fds=s.current.fds.renumbered(new)))
                 for n, s in self.supervisor.slots.items()}
        return replace(self, supervisor=replace(self.supervisor, slots=slots),
                       listeners=tuple(replace(h, fd=new[h.fd]) for h in self.listeners),
                       held=tuple(replace(h, fd=new[h.fd]) for h in self.held),
                       reply_fd=new[self.reply_fd] if self.reply_fd is not None else None)

    def workers(self) -> list[WorkerRecord]:
        return [s.current for s in self.supervisor.slots.values() if s.current is not None]

    def to_json(self) -> bytes:
        held = {"held": [{"name": h.name, "fd": h.fd} for h in self.held]} if self.held else {}
        return json.dumps({
            **held, "format": self.format, "from_version": self.from_version, "to_version": self.to_version,
            "config_text": self.config_text, "config_path": self.config_path,
            "arbiter": self.supervisor.as_dict(), "metrics": self.metrics,
            "http": [{"host": h.host, "port": h.port, "fd": h.fd} for h in self.listeners],
            "reply_fd": self.reply_fd}).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> "SupervisorSnapshot":
        try:
            d = json.loads(data)
            return cls(supervisor=SupervisorRecord.from_dict(d["arbiter"]),
                       from_version=str(d.get("from_version", "")), to_version=d.get("to_version"),
                       config_text=str(d.get("config_text", "")), config_path=str(d.get("config_path", "")),
                       metrics=dict(d.get("metrics") or {}),
                       listeners=tuple(ListenerRecord(str(h["host"]), int(h["port"]), int(h["fd"]))
                                       for h in d.get("http", [])),
                       reply_fd=None if d.get("reply_fd") is None else int(d["reply_fd"]),
                       held=tuple(HeldRecord(str(h["name"]), int(h["fd"])) for h in d.get("held", [])),
                       format=int(d.get("format", FORMAT)))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SnapshotError(f"{type(e).__name__}: {e}") from None


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)
