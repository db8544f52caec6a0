"""Everything after socket creation, shared by standalone and supervised
mode: build the cache and its servers, serve until asked to stop, drain."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field

from worker.answer import Answerer
from worker.cache import Cache
from worker.channel import DEFAULT_DRAIN_TIMEOUT, ControlChannel
from worker.config import WorkerConfig
from worker.resolver import LocalAnswers, Resolver
from worker.server import ProbeServer, TcpLimits, TcpServer, UdpServer
from worker.states import WorkerState
from worker.stats import Stats
from worker.upstream import Forwarder

log = logging.getLogger(__name__)


@dataclass
class Sockets:
    """What the worker serves, however the sockets were made."""
    udp: list[socket.socket]
    tcp: list[socket.socket]
    adopt_udp: list[socket.socket] = field(default_factory=list)
    probe: socket.socket | None = None
    control: socket.socket | None = None


@dataclass(frozen=True)
class Identity:
    slot: str
    generation: int
    version: str

    def stats_fields(self) -> dict:
        return {"slot": self.slot, "generation": self.generation, "version": self.version}

    def probe_text(self) -> str:
        return f"slot={self.slot} gen={self.generation} pid={os.getpid()} version={self.version}"


@dataclass(frozen=True)
class Options:
    per_query_stats: bool = True
    tcp: TcpLimits = TcpLimits()


class Service:
    """One worker: its cache, upstreams and serving sockets."""

    def __init__(self, config: WorkerConfig, sockets: Sockets, identity: Identity, options: Options) -> None:
        self.config, self.sockets, self.identity, self.options = config, sockets, identity, options
        self.state = WorkerState.STARTING
        self.events: list[tuple[float, WorkerState, WorkerState]] = []
        self.drain_timeout: float | None = None
        self.stop_requested: asyncio.Event | None = None

    def change_state(self, new: WorkerState) -> None:
        if not self.state.may_become(new):
            raise RuntimeError(f"worker state {self.state.name} cannot become {new.name}")
        self.events.append((time.monotonic(), self.state, new))
        log.info("worker %s -> %s", self.state.value, new.value)
        self.state = new

    def request_drain(self, timeout: float) -> None:
        """Called from signal handlers and the control channel: records the
        request; run() does the draining."""
        if self.drain_timeout is None:
            self.drain_timeout = timeout
        self.stop_requested.set()

    def stats(self) -> dict:
        return self.stats_.snapshot(self.identity.stats_fields(), self.cache, self.forwarder)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop_requested = asyncio.Event()
        self.stats_ = Stats(per_query=self.options.per_query_stats)
        self.cache = Cache(self.config.cache.capacity, self.stats_.retire)
        self.forwarder = Forwarder(self.config.upstreams)
        resolver = Resolver(self.forwarder, self.cache, self.config.cache, self.config.headers,
                            LocalAnswers(self.identity.probe_text()))
        answerer = Answerer(self.cache, resolver, self.stats_)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_drain, DEFAULT_DRAIN_TIMEOUT)
        udp = [UdpServer(s, answerer) for s in self.sockets.udp]
        tcp = [TcpServer(s, answerer, self.options.tcp) for s in self.sockets.tcp]
        for server in udp:
            server.start()
        for server in tcp:
            await server.start()
        adopted = [UdpServer(s, answerer) for s in self.sockets.adopt_udp]
        adopting = loop.create_task(self._finish_adopted(adopted)) if adopted else None
        probe = ProbeServer(self.sockets.probe, answerer) if self.sockets.probe else None
        if probe:
            probe.start()
        control = None
        if self.sockets.control is not None:
            control = ControlChannel(self.sockets.control, self.stats, self.request_drain)
            control.start()
        self.change_state(WorkerState.SERVING)
        await self.stop_requested.wait()

        self.change_state(WorkerState.DRAINING)
        deadline = time.monotonic() + (self.drain_timeout or 0.0)
        for server in udp:
            server.steer_away()
        for server in tcp:
            server.close_listener()
        for server in udp:
            server.drain_queue()
        await asyncio.gather(*(server.finish(deadline) for server in tcp),
                             self._wait_answered(udp + adopted, deadline))
        if adopting is not None:
            adopting.cancel()
        for server in udp + adopted:
            server.close()
        if probe:
            probe.stop()
        await self.forwarder.close()
        if control:
            control.send_final_stats()
        self.change_state(WorkerState.STOPPED)
        return 0

    async def _finish_adopted(self, adopted: list[UdpServer]) -> None:
        """A crashed predecessor's sockets: answer what is queued, then close."""
        for server in adopted:
            server.steer_away()
            server.drain_queue()
        await self._wait_answered(adopted, time.monotonic() + DEFAULT_DRAIN_TIMEOUT)
        for server in adopted:
            server.close()
        log.info("adopted %d socket(s): queue answered, closed", len(adopted))

    @staticmethod
    async def _wait_answered(servers: list[UdpServer], deadline: float) -> None:
        while any(s.inflight for s in servers) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
