"""The two worker slots and what happens to their processes: start, probe,
hang detection, crash path with steering and socket hand-over, backoff,
rolling replacement and drain. The arbiter decides when; this does it.

Runs on the supervisor's event loop. Child exits arrive through a pidfd
per worker (no SIGCHLD handler, no child-watcher thread).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

from supervisor import logs
from supervisor.channel import ChannelClosed, ControlChannel
from supervisor.config import EX_CONFIG, Config
from supervisor.probe import Prober
from supervisor.slot import Backoff, Worker, WorkerSlot
from supervisor.sockets import SocketSet, SocketSetupError, is_bound
from supervisor.spawn import RunAs, SpawnError, WorkerHandles, effective_caps, spawn
from supervisor.states import RestartCause, SlotState

log = logging.getLogger("twindns.pool")

SLOT_NAMES = ("A", "B")
EX_BOOT = 3
STARTING_PROBE_EVERY = 0.05     # readiness is checked often: a restart waits on it
STATS_EVERY = 1.0
DRAIN_GRACE = 2.0               # past drain_timeout before a draining worker is killed
KILL_WAIT = 3.0
MAX_ORPHAN_GENERATIONS = 3      # dead workers' sockets handed to a replacement, at most
# Test-only: replace the old worker by closing its sockets and killing it,
# and drop a dead worker's sockets, without steering or hand-over: the
# handover DESIGN.md measures against.
PLAIN_CLOSE_ENV = "TWINDNS_UNSAFE_PLAIN_CLOSE"


class RestartAborted(RuntimeError):
    """A replacement worker did not become ready; the old one keeps serving."""


class WorkerGone(RuntimeError):
    """The worker exited before it became ready."""


@dataclass
class Runtime:
    """Loop-bound helpers of one live worker."""
    prober: Prober
    channel: ControlChannel
    ready: asyncio.Future
    exited: asyncio.Future
    next_probe: float = 0.0
    next_stats: float = 0.0
    stats_pending: bool = False


def _connected(s: socket.socket) -> bool:
    try:
        s.getpeername()
        return True
    except OSError:
        return False


def exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


class WorkerPool:
    def __init__(self, loop: asyncio.AbstractEventLoop, config: Config, run_as: RunAs | None,
                 metrics=None, on_change: Callable[[], None] = lambda: None) -> None:
        self.loop = loop
        self.config = config
        self.run_as = run_as
        self.metrics = metrics
        self.on_change = on_change                  # ready count may have changed
        sup = config.supervisor
        self.slots = {n: WorkerSlot(n, Backoff(sup.backoff_initial, sup.backoff_max)) for n in SLOT_NAMES}
        self.incoming: dict[str, Worker] = {}       # replacement under a rolling restart, per slot
        self.orphans: dict[str, SocketSet] = {}     # dead worker's UDP sockets awaiting a replacement
        self.generation = 0
        self._runtime: dict[int, Runtime] = {}
        self._tasks: set[asyncio.Task] = set()
        self.plain_close = os.environ.get(PLAIN_CLOSE_ENV) == "1"
        self.stopping = False

    def reconfigure(self, config: Config) -> None:
        """Use `config` from now on (a reload): for every spawn and every timing."""
        self.config = config
        for slot in self.slots.values():
            slot.backoff.initial = config.supervisor.backoff_initial
            slot.backoff.maximum = config.supervisor.backoff_max

    def adopt(self, snapshot: dict) -> None:
        """Take over the serving workers a previous supervisor image left running.
        Their fds must have survived the execve (inheritable)."""
        self.generation = snapshot["generation"]
        now = time.monotonic()
        for name, snap in snapshot["slots"].items():
            slot = self.slots[name]
            slot.restarts.update({RestartCause(c): n for c, n in snap["restarts"].items()})
            cur = snap["current"]
            if cur is None:
                continue
            fds = cur["fds"]
            handles = WorkerHandles(None, cur["pid"], fds["pidfd"],
                                    SocketSet.adopt(fds["udp"], fds["tcp"], fds["steered"]),
                                    SocketSet.adopt(fds["adopted_udp"], [], True) if fds["adopted_udp"] else None,
                                    socket.socket(fileno=fds["control"]), socket.socket(fileno=fds["probe"]))
            handles.control.setblocking(False)
            handles.probe.setblocking(False)
            worker = Worker(slot=name, generation=cur["generation"], pid=cur["pid"],
                            started_at=now - cur["uptime"], state=SlotState(cur["state"]), handles=handles)
            slot.current = worker
            self._attach(worker)
            if worker.state is SlotState.READY:
                self._runtime[worker.pid].ready.set_result(True)

    # -- starting ---------------------------------------------------------
    def start(self, name: str, adopt: SocketSet | None = None) -> Worker:
        """Spawn a worker on fresh sockets (plus `adopt`, a dead one's) and return it."""
        if self.stopping:
            raise SpawnError("supervisor is stopping")
        self.generation += 1
        sockets = SocketSet.open(self.config.listen_endpoints())
        try:
            handles = spawn(name, self.generation, self.config.raw_text.encode(),
                            [str(ep) for ep in self.config.listen_endpoints()], sockets, adopt, self.run_as)
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
        self._runtime[worker.pid] = Runtime(
            prober=Prober(h.probe, self.loop, partial(self._on_probe_answer, worker)),
            channel=ControlChannel(h.control, self.loop, partial(self._on_event, worker)),
            ready=self.loop.create_future(), exited=self.loop.create_future())
        self.loop.add_reader(h.pidfd, self._on_pidfd, worker)

    def start_all(self) -> None:
        """Spawn a worker for every slot that has none (adopted ones are kept)."""
        for name in SLOT_NAMES:
            if self.slots[name].current is None:
                self._respawn(name)

    def _respawn(self, name: str) -> None:
        slot = self.slots[name]
        slot.respawn_at = None
        adopt = self.orphans.pop(name, None)
        try:
            slot.current = self.start(name, adopt)
        except (SpawnError, OSError) as e:
            if adopt is not None:
                self.orphans[name] = adopt
            delay = max(slot.backoff.next_delay(0.0), slot.backoff.initial)
            slot.respawn_at = time.monotonic() + delay
            logs.event(log, "spawn_failed", logging.ERROR, slot=name, error=str(e), retry_in=f"{delay:.1f}")

    # -- events from the worker ------------------------------------------
    def _on_probe_answer(self, worker: Worker, latency: float, text: str) -> None:
        if worker.kill_cause is not None:
            return      # SIGKILLed already (an answer sent before): it must not become READY or bind
        worker.probe_misses = 0
        worker.last_probe_latency = latency
        if worker.state is SlotState.STARTING:
            if self.run_as is not None and not self._unprivileged(worker):
                return
            try:
                worker.handles.sockets.bind_udp()
            except SocketSetupError as e:
                logs.event(log, "bind_failed", logging.ERROR, slot=worker.slot, pid=worker.pid, error=str(e))
                self.kill(worker, RestartCause.BOOT)
                return
            self.slots[worker.slot].change_state(worker, SlotState.READY, f"probe answered: {text}")
            # Its own sockets are in the group now: the dead ones' it drains (and any orphans
            # left in the group while nobody was serving) may leave it. The worker waits for
            # this before it closes its copies.
            for held in self._unserved_sockets():
                held.steer_away()
            worker.handles.release_adopted()     # it holds its own copies and drains them
            rt = self._runtime.get(worker.pid)
            if rt is not None and not rt.ready.done():
                rt.ready.set_result(True)
            logs.event(log, "worker_ready", slot=worker.slot, pid=worker.pid,
                       generation=worker.generation, after=f"{time.monotonic() - worker.started_at:.3f}")
            if self.incoming.get(worker.slot) is not worker and any(self.slots[worker.slot].restarts.values()):
                self._copy_cache_from_sibling(worker)
            self.on_change()

    def _copy_cache_from_sibling(self, worker: Worker) -> None:
        """A respawned worker (after a crash, hang or failed boot) has no
        predecessor to hand it a cache: take a copy of the other slot's, which
        holds the popular names too (clients' source ports spread every name
        over both workers). Rolling replacements get their predecessor's."""
        for slot in self.slots.values():
            other = slot.current
            if (other is not None and other is not worker and other.state is SlotState.READY
                    and other.kill_cause is None and other.alive):
                task = self.loop.create_task(self._hand_over_cache(other, worker))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return

    def _unprivileged(self, worker: Worker) -> bool:
        """A worker must hold no capability; one that does is killed before it counts as ready."""
        try:
            caps = effective_caps(worker.pid)
        except (OSError, SpawnError):
            return False          # already gone: the exit path reports it
        if caps == 0:
            return True
        logs.event(log, "worker_privileged", logging.ERROR, slot=worker.slot, pid=worker.pid, cap_eff=f"{caps:x}")
        self.kill(worker, RestartCause.BOOT)
        return False

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
        self._exited(worker, exit_code(status))

    def _exited(self, worker: Worker, code: int) -> None:
        slot = self.slots[worker.slot]
        rt = self._runtime.pop(worker.pid)
        rt.prober.close()
        rt.channel.close()
        how = f"exit {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        replacement = self.incoming.get(worker.slot) is worker
        if replacement:
            del self.incoming[worker.slot]
        if worker.state is SlotState.DRAINING:
            slot.change_state(worker, SlotState.STOPPED if code == 0 else SlotState.FAILED, how)
            if worker in slot.retiring:
                slot.retiring.remove(worker)
            worker.handles.close()
            logs.event(log, "worker_stopped", slot=worker.slot, pid=worker.pid,
                       generation=worker.generation, how=how)
        elif replacement:
            slot.change_state(worker, SlotState.FAILED, how)
            worker.handles.close()
            logs.event(log, "replacement_failed", logging.ERROR, slot=worker.slot, pid=worker.pid, how=how)
        else:
            self._crash(slot, worker, code, how)
        if self.metrics is not None:
            self.metrics.worker_exited(worker.slot, worker.generation,
                                       worker.stats if worker.final_stats else None)
        if not rt.ready.done():
            rt.ready.set_exception(WorkerGone(how))
            rt.ready.exception()    # retrieved: nobody may be waiting for it
        rt.exited.set_result(code)
        self.on_change()

    def _crash(self, slot: WorkerSlot, worker: Worker, code: int, how: str) -> None:
        """The crash path: steer its sockets away (if another worker serves), respawn (after
        backoff) with them adopted."""
        h: WorkerHandles = worker.handles
        if self.plain_close:
            h.sockets.close()       # the control: what dies with the worker is lost
        elif not h.sockets.steered and self._other_serving(worker):
            h.sockets.steer_away()
        # else: nobody else serves. Connecting ours too would leave no socket in the group and
        # clients would be refused; left there, queries queue for the replacement instead.
        cause = worker.kill_cause or (RestartCause.BOOT if code == EX_BOOT or worker.state is SlotState.STARTING
                                      else RestartCause.CRASH)
        slot.change_state(worker, SlotState.FAILED, f"{how} ({cause.value})")
        slot.restarts[cause] += 1
        if self.metrics is not None:
            self.metrics.inc_worker_restart(cause.value)
        h.sockets.close_tcp()
        # Only bound sockets can hold queries (a worker that never got ready had none bound).
        # A crash loop would pile them up; keep the newest generations' (older ones held the least).
        held = [s for s in (h.adopted.udp if h.adopted else []) + h.sockets.udp if is_bound(s)]
        keep = MAX_ORPHAN_GENERATIONS * len(self.config.listen)
        leftover = SocketSet(udp=held[-keep:], steered=all(_connected(s) for s in held[-keep:]))
        for stale in [s for s in (h.adopted.udp if h.adopted else []) + h.sockets.udp if s not in leftover.udp]:
            stale.close()
        h.sockets.udp, h.adopted = [], None      # moved to `leftover` or closed
        h.close()
        slot.current = None
        if code == EX_CONFIG:
            leftover.close()
            slot.given_up = (f"worker pid {worker.pid} exited {EX_CONFIG} (configuration error); "
                             "not respawned until a reload succeeds")
            logs.event(log, "slot_given_up", logging.ERROR, slot=slot.name, reason=slot.given_up)
            return
        uptime = time.monotonic() - worker.started_at
        delay = slot.backoff.next_delay(uptime)
        self.orphans[slot.name] = leftover
        logs.event(log, "worker_failed", logging.WARNING, slot=slot.name, pid=worker.pid,
                   generation=worker.generation, how=how, cause=cause.value,
                   uptime=f"{uptime:.1f}", respawn_in=f"{delay:.1f}")
        if delay == 0:
            self._respawn(slot.name)
        else:
            slot.respawn_at = time.monotonic() + delay

    # -- the periodic work, called from the arbiter's main loop ------------
    def tick(self, now: float) -> None:
        sup = self.config.supervisor
        for name, slot in self.slots.items():
            if slot.respawn_at is not None and now >= slot.respawn_at and slot.current is None:
                self._respawn(name)
            for worker in (slot.current, self.incoming.get(name)):
                if worker is None or worker.pid not in self._runtime:
                    continue
                rt = self._runtime[worker.pid]
                if worker.kill_cause is not None:
                    continue            # SIGKILLed; its exit is on its way
                if worker.state is SlotState.STARTING:
                    if now - worker.started_at > sup.ready_timeout:
                        self.kill(worker, RestartCause.BOOT)
                    elif now >= rt.next_probe:
                        rt.prober.tick()
                        rt.next_probe = now + STARTING_PROBE_EVERY
                elif worker.state is SlotState.READY:
                    if now >= rt.next_probe:
                        if rt.prober.tick():
                            worker.probe_misses += 1
                        rt.next_probe = now + sup.probe_interval
                        if worker.probe_misses >= sup.probe_failures:
                            logs.event(log, "worker_hung", logging.WARNING, slot=name, pid=worker.pid,
                                       missed=worker.probe_misses)
                            self.kill(worker, RestartCause.HANG)
                            continue
                    if now >= rt.next_stats and not rt.stats_pending:
                        rt.next_stats = now + STATS_EVERY
                        rt.stats_pending = True
                        task = self.loop.create_task(self._poll_stats(worker, rt))
                        self._tasks.add(task)           # a task nobody references may be collected
                        task.add_done_callback(self._tasks.discard)

    async def _poll_stats(self, worker: Worker, rt: Runtime) -> None:
        try:
            reply = await rt.channel.request("stats", self.config.supervisor.probe_interval)
        except (ChannelClosed, TimeoutError):
            return
        finally:
            rt.stats_pending = False
        stats = reply.get("stats")
        if isinstance(stats, dict):
            worker.stats = stats
            if self.metrics is not None:
                try:
                    self.metrics.update_worker(worker.slot, worker.generation, stats)
                except ValueError as e:
                    logs.event(log, "bad_stats", logging.WARNING, slot=worker.slot, error=str(e))

    def kill(self, worker: Worker, cause: RestartCause) -> None:
        """SIGKILL a worker we give up on; its UDP sockets leave the group at once if another
        worker serves (else they stay, queueing, until a replacement is bound)."""
        worker.kill_cause = cause
        h: WorkerHandles = worker.handles
        if worker.state is not SlotState.DRAINING and not h.sockets.steered and self._other_serving(worker):
            h.sockets.steer_away()      # else left in the group until a replacement binds (see _crash)
        try:
            signal.pidfd_send_signal(h.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _unserved_sockets(self) -> list[SocketSet]:
        """Dead workers' UDP sockets, awaiting a replacement or being drained by one."""
        held = list(self.orphans.values())
        for slot in self.slots.values():
            for w in (slot.current, self.incoming.get(slot.name)):
                if w is None or w.handles is None:
                    continue
                if w.handles.adopted is not None:
                    held.append(w.handles.adopted)
                if w.kill_cause is not None and w.state is not SlotState.DRAINING:
                    held.append(w.handles.sockets)      # killed, exit not handled yet
        return held

    def _other_serving(self, worker: Worker) -> bool:
        """Whether a READY worker other than `worker` (not one we are killing) is in the group."""
        for slot in self.slots.values():
            for w in (slot.current, self.incoming.get(slot.name)):
                if (w is not None and w is not worker and w.state is SlotState.READY
                        and w.kill_cause is None):
                    return True
        return False

    # -- rolling replacement and drain -------------------------------------
    async def replace(self, name: str, progress: Callable[[str], None]) -> None:
        """Start a new worker for slot `name`, wait until ready, then retire the old one."""
        slot = self.slots[name]
        slot.given_up = None
        new = self.start(name)
        self.incoming[name] = new
        rt = self._runtime[new.pid]
        progress(f"slot {name}: started pid {new.pid} generation {new.generation}")
        try:
            await asyncio.wait_for(asyncio.shield(rt.ready), self.config.supervisor.ready_timeout + 1.0)
        except (TimeoutError, WorkerGone) as e:
            if new.alive:
                self.kill(new, RestartCause.BOOT)
                await asyncio.shield(rt.exited)
            raise RestartAborted(f"slot {name}: new worker pid {new.pid} did not become ready "
                                 f"({e or 'timeout'}); the old worker keeps serving") from None
        if not new.alive or new.kill_cause is not None:
            # Ready, then gone (or being killed) before we got here: _exited already took it
            # out of `incoming`, or is about to.
            if new.alive:
                await asyncio.shield(rt.exited)
            self.incoming.pop(name, None)
            raise RestartAborted(f"slot {name}: new worker pid {new.pid} exited after it became ready; "
                                 "the old worker keeps serving")
        old = slot.current
        self.incoming.pop(name, None)
        slot.current = new
        slot.respawn_at = None
        adopt = self.orphans.pop(name, None)
        if adopt is not None:
            adopt.close()   # nothing left to hand over: the new worker is serving
        slot.restarts[RestartCause.ROLLING] += 1
        self.on_change()
        if old is not None and old.alive:
            if not self.plain_close:
                await self._hand_over_cache(old, new)
            progress(f"slot {name}: draining pid {old.pid} generation {old.generation}")
            await self.retire(old)
        progress(f"slot {name}: done, pid {new.pid} generation {new.generation} serving")

    async def _hand_over_cache(self, old: Worker, new: Worker) -> None:
        """Give `new` a pipe to read `old`'s cache from (docs/internals.md,
        cache_send / cache_receive); the workers stream it while `old` goes
        on (serving, or draining). Best effort: without it `new` starts cold."""
        old_rt, new_rt = self._runtime.get(old.pid), self._runtime.get(new.pid)
        if old_rt is None or new_rt is None:
            return
        read_end, write_end = os.pipe()
        error = None
        try:
            for rt, op, fd in ((new_rt, "cache_receive", read_end), (old_rt, "cache_send", write_end)):
                reply = await rt.channel.request(op, 1.0, fds=(fd,))
                if not reply.get("ok"):
                    error = f"{op}: {reply.get('error')}"     # e.g. a worker older than the op
                    break
        except (ChannelClosed, TimeoutError) as e:
            error = str(e) or "timeout"
        finally:
            os.close(read_end)
            os.close(write_end)
        if error is None:
            logs.event(log, "cache_handoff", slot=new.slot, from_pid=old.pid, to_pid=new.pid)
        else:
            logs.event(log, "cache_handoff_failed", logging.WARNING, slot=new.slot, from_pid=old.pid,
                       to_pid=new.pid, error=error)

    async def retire(self, worker: Worker) -> None:
        """Drain `worker` (steer away, tell it, wait) and wait until it exits."""
        slot = self.slots[worker.slot]
        rt = self._runtime.get(worker.pid)
        if rt is None:
            return
        if worker.state is not SlotState.DRAINING:
            slot.change_state(worker, SlotState.DRAINING, "replaced" if slot.current is not worker else "stopping")
        if slot.current is worker:
            slot.current = None
        if worker not in slot.retiring:
            slot.retiring.append(worker)
        h: WorkerHandles = worker.handles
        drain_timeout = self.config.supervisor.drain_timeout
        if self.plain_close:
            h.sockets.close()
            self.kill(worker, RestartCause.ROLLING)
        else:
            if not h.sockets.steered:
                h.sockets.steer_away()
            h.sockets.close_tcp()
            try:
                await rt.channel.request("drain", 1.0, timeout=drain_timeout)
            except (ChannelClosed, TimeoutError) as e:
                logs.event(log, "drain_request_failed", logging.WARNING, slot=worker.slot, pid=worker.pid,
                           error=str(e) or "timeout")
        try:
            await asyncio.wait_for(asyncio.shield(rt.exited), drain_timeout + DRAIN_GRACE)
        except TimeoutError:
            logs.event(log, "drain_overrun", logging.WARNING, slot=worker.slot, pid=worker.pid)
            self.kill(worker, RestartCause.ROLLING)
            try:
                await asyncio.wait_for(asyncio.shield(rt.exited), KILL_WAIT)
            except TimeoutError:
                pass

    async def stop_all(self) -> None:
        """Drain every worker at once (shutdown)."""
        self.stopping = True
        for slot in self.slots.values():
            slot.respawn_at = None
        for orphan in self.orphans.values():
            orphan.close()
        self.orphans.clear()
        workers = [w for s in self.slots.values() for w in s.workers() if w.alive]
        workers += [w for w in self.incoming.values() if w.alive]
        await asyncio.gather(*(self.retire(w) for w in workers))

    def kill_all(self) -> None:
        for slot in self.slots.values():
            slot.respawn_at = None
            for w in slot.workers() + [self.incoming.get(slot.name)]:
                if w is not None and w.alive:
                    if w.state is not SlotState.DRAINING:
                        slot.change_state(w, SlotState.DRAINING, "stopping at once")
                    self.kill(w, RestartCause.ROLLING)

    # -- reading ------------------------------------------------------------
    def ready_count(self) -> int:
        return sum(1 for s in self.slots.values() if s.current is not None and s.current.state is SlotState.READY)

    def alive_count(self) -> int:
        return len(self._runtime)

    def status(self) -> list[dict]:
        now = time.monotonic()
        out = []
        for name, slot in self.slots.items():
            w = slot.current
            stats = w.stats if w else {}
            hits, misses = stats.get("cache_hits", 0), stats.get("cache_misses", 0)
            out.append({
                "slot": name,
                "pid": w.pid if w else None,
                "state": slot.state.value,
                "generation": w.generation if w else None,
                "uptime": round(now - w.started_at, 3) if w else None,
                "restarts": sum(slot.restarts.values()),
                "restarts_by_cause": {c.value: n for c, n in slot.restarts.items()},
                "last_probe_latency": w.last_probe_latency if w else None,
                "queries": stats.get("queries_total", 0),
                "cache_entries": stats.get("cache_entries", 0),
                "version": stats.get("version"),
                "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
                "respawn_in": round(slot.respawn_at - now, 3) if slot.respawn_at is not None else None,
                "given_up": slot.given_up,
                "replacing": self.incoming[name].pid if name in self.incoming else None,
                "draining": [r.pid for r in slot.retiring],
            })
        return out
