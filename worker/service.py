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

from contract import stats as keys
from worker import logfmt
from worker.answer import Answerer
from worker.cache import Cache
from worker.channel import DEFAULT_DRAIN_TIMEOUT, ControlChannel
from worker.claims import CLAIMS, WHY as CLAIMS_WHY, ClaimTable
from worker.config import WorkerConfig
from worker.handoff import ConfigMismatch, CacheStreamError, fingerprint, receive_cache, send_cache
from worker.orphan import Orphanage
from worker.peer import SLOTS, PeerLink
from worker.resolver import LocalAnswers, Resolver
from worker.server import ProbeServer, UdpServer, udp_server
from worker.tcp_server import TcpLimits, TcpServer
from worker.states import WorkerState
from worker.tcp_handoff import TcpHandoff
from worker.stats import Stats
from worker.upstream import Forwarder

log = logging.getLogger(__name__)

# How long a cache left by the previous supervisor's workers may hold up serving: the
# queries that queued in the held sockets during a `systemctl restart` must find it
# (or they all become misses at once), but a huge one finishes loading while we serve.
WARM_CACHE_WAIT = 1.0
# An adopted socket is left in the reuseport group until the supervisor steers it away
# (right after our own sockets are bound); past this we steer it ourselves.
ADOPTED_STEER_WAIT = 60.0
ADOPTED_STEER_POLL = 0.01


@dataclass
class Sockets:
    """What the worker serves, however the sockets were made."""
    udp: list[socket.socket]
    tcp: list[socket.socket]
    adopt_udp: list[socket.socket] = field(default_factory=list)
    # Held by the supervisor (and systemd's fd store) for the whole service, in the reuseport
    # group across a `systemctl restart`: served like ours, but never steered away or shut down.
    shared_udp: list[socket.socket] = field(default_factory=list)
    shared_tcp: list[socket.socket] = field(default_factory=list)
    probe: socket.socket | None = None
    control: socket.socket | None = None


def listen_ips(sockets: list[socket.socket]) -> list[str]:
    """The addresses `sockets` are bound to."""
    ips = set()
    for sock in sockets:
        try:
            ips.add(sock.getsockname()[0])
        except OSError:
            continue
    return sorted(ips)


@dataclass(frozen=True)
class Identity:
    slot: str
    generation: int
    version: str

    def stats_fields(self) -> dict:
        return {keys.SLOT: self.slot, keys.GENERATION: self.generation, keys.VERSION: self.version}

    def probe_text(self) -> str:
        return f"slot={self.slot} gen={self.generation} pid={os.getpid()} version={self.version}"


@dataclass(frozen=True)
class Options:
    per_query_stats: bool = True
    tcp: TcpLimits = TcpLimits()
    cache_fd: int | None = None     # a cache file to load before serving (supervisor/restartcache.py)


class Service:
    """One worker: its cache, upstreams and serving sockets."""

    def __init__(self, config: WorkerConfig, sockets: Sockets, identity: Identity, options: Options) -> None:
        self.config, self.sockets, self.identity, self.options = config, sockets, identity, options
        self.state = WorkerState.STARTING
        self.events: list[tuple[float, WorkerState, WorkerState]] = []
        self.drain_timeout: float | None = None
        self.stop_requested = asyncio.Event()
        self.counters = Stats(per_query=options.per_query_stats)
        self.cache = Cache(config.cache.capacity, config.cache.serve_stale)
        # Built in _start(), inside the event loop:
        self.forwarder: Forwarder | None = None
        self.udp: list[UdpServer] = []
        self.tcp: list[TcpServer] = []
        self.adopted: list[UdpServer] = []
        self.shared_udp: list[UdpServer] = []
        self.shared_tcp: list[TcpServer] = []
        self.adopting: asyncio.Task | None = None
        self.probe: ProbeServer | None = None
        self.control: ControlChannel | None = None
        self.orphanage: Orphanage | None = None        # while our supervisor is gone
        self.handoffs: set[asyncio.Task] = set()       # cache streams to or from a sibling worker
        self.tcp_handoff = TcpHandoff(lambda: self.tcp + self.shared_tcp, lambda: self.state is WorkerState.SERVING)
        self.resolver: Resolver | None = None
        self.peer: PeerLink | None = None             # the other worker of the pair, when linked
        self.config_print = fingerprint(config)        # what a handed-over cache must have been made under

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

    def cache_pipe(self, direction: str, fd: int) -> asyncio.Task:
        """Called from the control channel with a pipe end from the supervisor:
        stream our cache into it ("send") or load the one in it ("receive")."""
        coro = (send_cache(self.cache, fd, self.config_print) if direction == "send"
                else receive_cache(self.cache, fd, self.config_print))
        task = asyncio.get_running_loop().create_task(self._hand_over(direction, coro))
        self.handoffs.add(task)
        task.add_done_callback(self.handoffs.discard)
        return task

    @staticmethod
    async def _hand_over(direction: str, coro) -> None:
        started = time.monotonic()
        try:
            count = await coro
        except (ConfigMismatch, BrokenPipeError) as e:
            # Expected after a reload that changed the cache policy: the receiver
            # discards the stream (ConfigMismatch), so the sender's pipe breaks.
            log.info("cache handoff (%s) not made: %s", direction, e)
            return
        except (CacheStreamError, OSError) as e:
            # Best effort: a worker without the old cache only has more misses.
            log.warning("cache handoff (%s) stopped: %s", direction, e)
            return
        log.info("cache handoff: %s %d entries in %.3f s", "sent" if direction == "send" else "stored",
                 count, time.monotonic() - started)

    def _control_on(self, sock: socket.socket) -> None:
        self.control = ControlChannel(sock, self.stats, self.request_drain, self.cache_pipe, self._supervisor_lost,
                                      self.link_peer, self.tcp_handoff.pipe)
        self.control.start()

    def _supervisor_lost(self) -> None:
        """The control channel closed without a drain request: the supervisor died.
        Serve on and wait for a successor (worker/orphan.py) instead of leaving the
        node without DNS."""
        if self.stop_requested.is_set():
            return
        if self.probe is not None:
            self.probe.stop()       # its peer is gone too; a successor does not probe us
        old = self.control.sock if self.control is not None else None
        self.control = None
        if old is not None:
            old.close()
        logfmt.to_syslog()          # our stderr pipe had the supervisor at its other end
        self.orphanage = Orphanage(self._control_on, lambda: self.request_drain(DEFAULT_DRAIN_TIMEOUT),
                                   listen_ips(self.sockets.udp + self.sockets.shared_udp))

    def link_peer(self, fd: int, table_fd: int | None = None) -> None:
        """Called from the control channel with our end of a socketpair to
        the other serving worker (worker/peer.py) and the pair's claim table
        (worker/claims.py); replaces any older link."""
        sock = socket.socket(fileno=fd)
        claims = ClaimTable.open(table_fd, SLOTS.index(self.identity.slot))
        if self.resolver is None or self.state is not WorkerState.SERVING:
            sock.close()
            return          # (claims: unmapped when dropped)
        if self.peer is not None:
            self.peer.close()
        resolver = self.resolver
        self.peer = PeerLink(sock, self.identity.slot, self.config_print, resolver.peer_asks, resolver.peer_told,
                             self._peer_closed, resolver.peer_counts, claims)
        resolver.peer = self.peer
        self.peer.start()
        log.info("peer link to the other worker up (misses split by %s)", "the claim table" if claims else
                 f"the crc32 owner rule: {CLAIMS_WHY if CLAIMS is None else 'no usable claim table came with it'}")

    def _peer_closed(self, link: PeerLink) -> None:
        if self.peer is link:
            self.peer = None
            self.resolver.peer_gone()
            log.info("peer link closed: resolving every key ourselves")

    def stats(self) -> dict:
        counts = self.resolver.counts() if self.resolver is not None else None
        return self.counters.snapshot(self.identity.stats_fields(), self.cache, self.forwarder, counts)

    async def run(self) -> int:
        await self._start()
        self.change_state(WorkerState.SERVING)
        await self.stop_requested.wait()
        self.change_state(WorkerState.DRAINING)
        await self._drain(time.monotonic() + (self.drain_timeout or 0.0))
        # Drained: a repeated SIGTERM has nothing left to stop, and must not
        # kill the process while the loop closes (exit status must stay 0).
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        self.change_state(WorkerState.STOPPED)
        return 0

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self.forwarder = Forwarder(self.config.upstreams, self.config.cache.unwanted_reply_threshold)
        resolver = self.resolver = Resolver(self.forwarder, self.cache, self.config.cache, self.config.headers,
                                            LocalAnswers(self.identity.probe_text()), self.config.cache.max_concurrent)
        answerer = Answerer(self.cache, resolver, self.counters, self.config.cache.prefetch,
                            self.config.cache.max_udp_size)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_drain, DEFAULT_DRAIN_TIMEOUT)
        if self.options.cache_fd is not None:
            await asyncio.wait({self.cache_pipe("receive", self.options.cache_fd)}, timeout=WARM_CACHE_WAIT)
        self.udp = [udp_server(s, answerer) for s in self.sockets.udp]
        self.tcp = [TcpServer(s, answerer, self.options.tcp) for s in self.sockets.tcp]
        for server in self.udp:
            server.start()
        for server in self.tcp:
            await server.start()
        self.shared_udp = [udp_server(s, answerer) for s in self.sockets.shared_udp]
        self.shared_tcp = [TcpServer(s, answerer, self.options.tcp) for s in self.sockets.shared_tcp]
        for server in self.shared_udp:
            server.start()
        for server in self.shared_tcp:
            await server.start()
        self.adopted = [udp_server(s, answerer) for s in self.sockets.adopt_udp]
        if self.adopted:
            self.adopting = loop.create_task(self._finish_adopted(self.adopted))
        if self.sockets.probe is not None:
            # Same answer path, but its own counters: probes are not client
            # queries, and must not show up in metrics as TXT traffic.
            probe_answerer = Answerer(self.cache, resolver, Stats(per_query=False))
            self.probe = ProbeServer(self.sockets.probe, probe_answerer)
            self.probe.start()
        if self.sockets.control is not None:
            self._control_on(self.sockets.control)

    async def _drain(self, deadline: float) -> None:
        """Leave the reuseport groups, answer what is queued and in flight
        (TCP and UDP, bounded by `deadline`), then close everything."""
        if self.peer is not None:
            self.peer.close()           # what it owns for us we ask upstream ourselves while draining
        for server in self.udp:
            server.steer_away()
        for server in self.tcp:
            server.close_listener()
        for server in self.udp:
            server.drain_queue()
        await asyncio.gather(*(server.finish(deadline) for server in self.tcp),
                             self._wait_answered(self.udp + self.adopted, deadline))
        # The shared sockets stay in their groups and were served until now; from here on
        # what arrives on them waits in their queue for the other worker, or for the next
        # supervisor's workers (a `systemctl restart`).
        for server in self.shared_udp:
            server.stop()
        for server in self.shared_tcp:
            server.stop_accepting()
        await asyncio.gather(*(server.finish(deadline) for server in self.shared_tcp),
                             self._wait_answered(self.shared_udp, deadline))
        self.tcp_handoff.close()        # our replacement's receiver sees the end of what we hand over
        if self.handoffs:
            # Our cache is still on its way to our successor.
            _done, late = await asyncio.wait(self.handoffs, timeout=max(0.0, deadline - time.monotonic()))
            for task in late:
                task.cancel()
        if self.adopting is not None:
            self.adopting.cancel()
        for server in self.udp + self.adopted + self.shared_udp:
            server.close()
        if self.probe:
            self.probe.stop()
        await self.forwarder.close()
        if self.orphanage is not None:
            self.orphanage.close()
        if self.control:
            self.control.send_final_stats()

    async def _finish_adopted(self, adopted: list[UdpServer]) -> None:
        """A crashed predecessor's sockets: answer what is queued, then close.

        When no other worker was serving, the supervisor left them in the
        reuseport group (queries queue there instead of being refused) and
        steers them away only once our own sockets are bound. Until then they
        are served like ours: closing one still in the group would lose its share."""
        for server in adopted:
            if not await self._steered_by_supervisor(server):
                server.steer_away()     # fallback: the supervisor never did
            server.drain_queue()
        await self._wait_answered(adopted, time.monotonic() + DEFAULT_DRAIN_TIMEOUT)
        for server in adopted:
            server.close()
        log.info("adopted %d socket(s): queue answered, closed", len(adopted))

    @staticmethod
    async def _steered_by_supervisor(server: UdpServer) -> bool:
        deadline = time.monotonic() + ADOPTED_STEER_WAIT
        started = False
        try:
            while True:
                try:
                    server.sock.getpeername()
                    return True
                except OSError:
                    pass        # not connected: still in the group
                if time.monotonic() >= deadline:
                    return False
                if not started:
                    server.start()
                    started = True
                await asyncio.sleep(ADOPTED_STEER_POLL)
        finally:
            if started:
                server.stop()

    @staticmethod
    async def _wait_answered(servers: list[UdpServer], deadline: float) -> None:
        while any(s.inflight for s in servers) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
