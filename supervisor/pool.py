"""The two worker slots and what happens to their processes: start, respawn
with backoff, kill, stop. The arbiter decides when; this does it. A worker
becoming ready is supervisor/readiness.py, its exit (the crash path)
supervisor/crash.py, which sockets a dead worker leaves behind
supervisor/custody.py; probing, hang detection and stats polling are
supervisor/watch.py; the rolling replacement and the drain are
supervisor/rolling.py.

Runs on the supervisor's event loop. Child exits arrive through a pidfd
per worker (no SIGCHLD handler, no child-watcher thread).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from functools import partial
from typing import Callable

from supervisor import crash, custody, logs, peering, readiness, rolling, watch
from supervisor.channel import ControlChannel
from supervisor.config import Config
from supervisor.probe import Prober
from supervisor.rolling import RestartAborted, WorkerGone   # noqa: F401 (raised through the pool)
from supervisor.slot import Backoff, Runtime, Worker, WorkerSlot
from supervisor.snapshot import SlotRecord, SupervisorRecord
from supervisor.sockets import HeldSockets, SocketSet
from supervisor.workerlog import WorkerLog
from supervisor.spawn import RunAs, SpawnError, WorkerHandles, spawn
from supervisor.states import RestartCause, SlotPhase, SlotState

log = logging.getLogger("twindns.pool")

SLOT_NAMES = ("A", "B")
# Test-only: replace the old worker by closing its sockets and killing it,
# and drop a dead worker's sockets, without steering or hand-over: the
# handover DESIGN.md measures against.
PLAIN_CLOSE_ENV = "TWINDNS_UNSAFE_PLAIN_CLOSE"

def exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


class WorkerPool:
    """`launch(name, adopt)` starts a worker (default: `spawn_worker`, a real
    process); the pool's inputs are its pidfd (`worker_exited`), its probe
    answers (`probe_answered`), `tick()` and the arbiter's calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: Config, run_as: RunAs | None,
                 metrics=None, on_change: Callable[[], None] = lambda: None,
                 launch: Callable[[str, SocketSet | None], Worker] | None = None) -> None:
        self.loop = loop
        self.config = config
        self.run_as = run_as
        self.metrics = metrics
        self.peers_linked: tuple[int, int] | None = None    # pids of the pair peering linked last
        self.on_change = on_change                  # ready count may have changed
        sup = config.supervisor
        self.slots = {n: WorkerSlot(n, Backoff(sup.backoff_initial, sup.backoff_max)) for n in SLOT_NAMES}
        self.generation = 0
        self._launch = launch or self.spawn_worker
        self._tasks: set[asyncio.Task] = set()
        self.plain_close = os.environ.get(PLAIN_CLOSE_ENV) == "1"
        self.stopping = False
        self.held: HeldSockets | None = None        # the service's own sockets, served by every worker
        self.warm_cache: int | None = None          # while starting after a restart: the old workers' cache

    def reconfigure(self, config: Config) -> None:
        """Use `config` from now on (a reload): for every spawn and every timing."""
        self.config = config
        for slot in self.slots.values():
            slot.backoff.initial = config.supervisor.backoff_initial
            slot.backoff.maximum = config.supervisor.backoff_max

    def adopt(self, record: SupervisorRecord) -> None:
        """Take over the serving workers a previous supervisor left running.
        Their fds must be ours already (inherited across the execve)."""
        self.generation = record.generation
        now = time.monotonic()
        for name, snap in record.slots.items():
            slot = self.slots[name]
            slot.restarts.update({RestartCause(c): n for c, n in snap.restarts.items()})
            cur = snap.current
            if cur is None:
                continue
            worker = Worker(slot=name, generation=cur.generation, pid=cur.pid, started_at=now - cur.uptime,
                            state=SlotState(cur.state), handles=WorkerHandles.adopt(cur.pid, cur.fds))
            slot.serve(worker)
            self._attach(worker)
            if worker.state is SlotState.READY:
                worker.runtime.ready.set_result(True)

    def held_named(self) -> list:
        """(fd store name, socket) of every held socket."""
        return self.held.named() if self.held is not None else []

    def snapshot(self) -> tuple[int, dict[str, SlotRecord]]:
        """The last generation spawned and every slot, for a supervisor that takes over."""
        return self.generation, {name: slot.snapshot() for name, slot in self.slots.items()}

    # -- starting ---------------------------------------------------------
    def start(self, name: str, adopt: SocketSet | None = None) -> Worker:
        """Start a worker for slot `name` (adopting `adopt`, a dead one's sockets) and return it."""
        if self.stopping:
            raise SpawnError("supervisor is stopping")
        return self._launch(name, adopt)

    def spawn_worker(self, name: str, adopt: SocketSet | None = None) -> Worker:
        """Spawn a worker process on fresh sockets (plus `adopt`)."""
        self.generation += 1
        sockets = SocketSet.open(self.config.listen_endpoints())
        try:
            handles = spawn(name, self.generation, self.config.raw_text.encode(),
                            [str(ep) for ep in self.config.listen_endpoints()], sockets, adopt, self.run_as,
                            self.held, self.warm_cache)
        except SpawnError:
            sockets.close()
            raise
        worker = Worker(slot=name, generation=self.generation, pid=handles.pid,
                        started_at=time.monotonic(), handles=handles)
        self._attach(worker)
        logs.event(log, "worker_spawned", slot=name, pid=worker.pid, generation=worker.generation,
                   adopted_udp=len(adopt.udp) if adopt else 0)
        return worker

    def _attach(self, worker: Worker) -> None:
        h: WorkerHandles = worker.handles
        worker.runtime = Runtime(
            prober=Prober(h.probe, self.loop, partial(self.probe_answered, worker)),
            channel=ControlChannel(h.control, self.loop, partial(self._on_event, worker)),
            ready=self.loop.create_future(), exited=self.loop.create_future())
        if h.log >= 0:
            worker.runtime.log = WorkerLog(h.log, self.loop, worker.slot)   # h.close() closes it
        self.loop.add_reader(h.pidfd, self._on_pidfd, worker)

    def start_all(self) -> None:
        """Spawn a worker for every slot that has none (adopted ones are kept)."""
        for name in SLOT_NAMES:
            if self.slots[name].current is None:
                self.respawn(name)

    def respawn(self, name: str) -> None:
        """Start slot `name`'s worker again, adopting its orphaned sockets (backs off if it cannot)."""
        slot = self.slots[name]
        adopt, slot.orphans = slot.orphans, None
        try:
            worker = self.start(name, adopt)
        except (SpawnError, OSError) as e:
            slot.orphans = adopt
            delay = max(slot.backoff.next_delay(0.0), slot.backoff.initial)
            slot.change_phase(SlotPhase.BACKOFF, "spawn failed", respawn_at=time.monotonic() + delay)
            logs.event(log, "spawn_failed", logging.ERROR, slot=name, error=str(e), retry_in=f"{delay:.1f}")
            return
        slot.serve(worker)

    # -- events from the worker ------------------------------------------
    def probe_answered(self, worker: Worker, latency: float, text: str) -> None:
        """The worker answered a probe (supervisor/readiness.py)."""
        readiness.probe_answered(self, worker, latency, text)

    def _on_event(self, worker: Worker, msg: dict) -> None:
        if msg.get("event") == "stats" and isinstance(msg.get("stats"), dict):
            worker.stats = msg["stats"]
            worker.final_stats = True

    def _on_pidfd(self, worker: Worker) -> None:
        h: WorkerHandles = worker.handles
        try:
            pid, status = os.waitpid(worker.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = worker.pid, 255 << 8   # reaped elsewhere: treat as a crash
        if pid == 0:
            return
        self.loop.remove_reader(h.pidfd)
        if h.proc is not None:
            h.proc.returncode = exit_code(status)   # keep Popen from waiting on a reaped pid
        self.worker_exited(worker, exit_code(status))

    def worker_exited(self, worker: Worker, code: int) -> None:
        """The worker's process is gone (exit code, or -signal): settle its slot (supervisor/crash.py)."""
        crash.worker_exited(self, worker, code)

    # -- the periodic work, called from the arbiter's main loop ------------
    def tick(self, now: float) -> None:
        self._respawn_due(now)
        watch.time_out_boots(self, now)
        watch.probe(self, now)            # and kill the ones that missed probe_failures in a row
        watch.poll_stats(self, now)
        peering.link_if_due(self)         # the two serving workers act as one cache

    def _respawn_due(self, now: float) -> None:
        for name, slot in self.slots.items():
            if slot.respawn_due(now):
                self.respawn(name)

    def background(self, coro) -> None:
        """Run `coro` as a task of the pool's (kept referenced until done)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)           # a task nobody references may be collected
        task.add_done_callback(self._tasks.discard)

    def kill(self, worker: Worker, cause: RestartCause) -> None:
        """SIGKILL a worker we give up on; its UDP sockets leave the group at once if another
        worker serves (else they stay, queueing, until a replacement is bound)."""
        worker.kill_cause = cause
        h: WorkerHandles = worker.handles
        if custody.steer_when_lost(worker, custody.others_serving(self.slots.values(), worker)):
            h.sockets.steer_away()
        try:
            signal.pidfd_send_signal(h.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # -- rolling replacement and drain (supervisor/rolling.py) ----------------
    async def replace(self, name: str, progress: Callable[[str], None]) -> None:
        """Start a new worker for slot `name`, wait until ready, then retire the old one."""
        await rolling.replace(self, name, progress)

    async def retire(self, worker: Worker) -> None:
        """Drain `worker` and wait until it exits."""
        await rolling.retire(self, worker)

    async def stop_all(self) -> None:
        """Drain every worker at once (shutdown)."""
        self.stopping = True
        for slot in self.slots.values():
            self._cancel_respawn(slot)
            if slot.orphans is not None:
                slot.orphans.close()
                slot.orphans = None
        workers = [w for s in self.slots.values() for w in s.everyone() if w.alive]
        await asyncio.gather(*(self.retire(w) for w in workers))

    def kill_all(self) -> None:
        for slot in self.slots.values():
            self._cancel_respawn(slot)
            for w in slot.everyone():
                if w.alive:
                    if w.state is not SlotState.DRAINING:
                        slot.change_state(w, SlotState.DRAINING, "stopping at once")
                    self.kill(w, RestartCause.ROLLING)

    @staticmethod
    def _cancel_respawn(slot: WorkerSlot) -> None:
        if slot.phase is SlotPhase.BACKOFF:
            slot.change_phase(SlotPhase.EMPTY, "stopping")

    # -- reading ------------------------------------------------------------
    def ready_count(self) -> int:
        return sum(1 for s in self.slots.values() if s.current is not None and s.current.state is SlotState.READY)

    def alive_count(self) -> int:
        """Workers whose exit is not handled yet."""
        return sum(1 for s in self.slots.values() for w in s.everyone() if w.runtime is not None)

    def busy_slots(self) -> list[str]:
        """Slots not serving a READY worker, or in the middle of a replacement or drain."""
        return [s["slot"] for s in self.status()
                if s["state"] != SlotState.READY.value or s["replacing"] or s["draining"]]

    def status(self) -> list[dict]:
        now = time.monotonic()
        return [slot.status(now) for slot in self.slots.values()]
