"""`twindns run`: the supervisor's main loop.

One event loop. Signal handlers only enqueue the signal number; the main
loop does the work: it ticks the worker pool (probes, respawns), resyncs the
network state, samples health, pings the systemd watchdog, and runs
restarts / reloads / shutdown as serialised tasks. Slots, sockets, spawning
and network state each live in their own module; this one coordinates.

`Arbiter(config, snapshot=...)` adopts the workers a previous supervisor image
left running (`twindns upgrade` re-executes in place); `snapshot()` is the
supervisor/snapshot.py record of everything it needs.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import time

from supervisor import accepted, logs, successor, upgrade, version, watch
from supervisor.config import Config, ConfigError, EX_CONFIG, check_with_worker, check_with_worker_async, load, \
    parse, resolve_path
from supervisor.control import ControlServer, ControlSocketBusy
from supervisor.health import HealthJudge, socket_inode, udp_drops
from supervisor.http import HttpServer, bind_listener, plan, text_response
from supervisor.metrics import MetricsAggregator
from supervisor.netstate import NetworkError, NetworkState
from supervisor.pool import SLOT_NAMES, RestartAborted, WorkerPool
from supervisor.sdnotify import Notifier
from supervisor.listenfds import take_listen_fds
from supervisor.snapshot import HeldRecord, ListenerRecord, SupervisorRecord, SupervisorSnapshot
from supervisor.sockets import HeldSockets, check_kernel
from supervisor.spawn import SpawnError, resolve_user
from supervisor.states import SlotState, SupervisorState

log = logging.getLogger("twindns.arbiter")

TICK = 0.05                    # main loop period: bounds how late a probe or respawn can be
KILL_REAP_WAIT = 2.0
CONFIG_CHECK_EVERY = 2.0       # the config file is re-read this often (one small read; validated if changed)
TERMINATING = (signal.SIGTERM, signal.SIGINT)


class Arbiter:
    def __init__(self, config: Config, config_arg: str | None = None, socket_arg: str | None = None,
                 snapshot: SupervisorRecord | None = None, handoff: SupervisorSnapshot | None = None,
                 state_dir: str | None = None,
                 listen_fds: dict | None = None, keep_network: bool = False, takeover: bool = False) -> None:
        self.config = config
        self.config_arg = config_arg          # what `reload` re-reads (None: the default lookup)
        self.disk = accepted.DiskConfig(config_arg, config, accepted.state_dir(state_dir))
        self.state_dir_arg = state_dir
        self.socket_arg = socket_arg          # --socket overrides control_socket, also after reloads
        self.snapshot_in = snapshot
        self.handoff = handoff                # from the previous image, after `twindns upgrade`
        self.state = SupervisorState.STARTING
        self.started_at = time.monotonic() - (snapshot.uptime if snapshot else 0.0)
        self.network = NetworkState(config, keep=keep_network)
        self.keep_network = keep_network
        self.takeover = takeover              # --takeover: replace a running supervisor
        self.predecessor: int | None = None   # pid of the supervisor we are taking over from
        self.listen_fds = dict(listen_fds or {})   # FDNAME -> socket, from systemd's fd store
        self.metrics = MetricsAggregator(version())
        self.notifier = Notifier.from_environ()
        self.judge = HealthJudge(config.supervisor.health_drop_window)
        self.verdict = None
        self.pool: WorkerPool | None = None
        self.control: ControlServer | None = None
        self.http: list[HttpServer] = []
        self._signals: asyncio.Queue[int] | None = None
        self._restart_lock: asyncio.Lock | None = None
        self._stop_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._told_ready = False
        self._next_health = 0.0
        self._next_watchdog = 0.0
        self._next_config_check = 0.0
        self._config_check: asyncio.Task | None = None
        self.exit_code = 0

    def change_state(self, target: SupervisorState) -> None:
        logs.event(log, "supervisor_state", old=self.state.value, new=target.value)
        self.state = target

    # -- the main loop ----------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._signals = asyncio.Queue()
        self._restart_lock = asyncio.Lock()
        for sig in (*TERMINATING, signal.SIGHUP):
            loop.add_signal_handler(sig, self._signals.put_nowait, sig)
        upgrade.unblock_signals()             # blocked across an upgrade's exec; handlers are in place now
        warning = check_kernel()
        if warning:
            logs.event(log, "kernel_warning", logging.WARNING, detail=warning)
        try:
            run_as = self._resolve_user(self.config.user)
        except SpawnError as e:
            logs.event(log, "startup_failed", logging.ERROR, error=str(e))
            return 1
        try:
            if not await self._start_services(run_as):
                return 1
            self.change_state(SupervisorState.RUNNING)
            self.disk.accepted(self.config)
            self.notifier.status("starting workers")
            if self.handoff is not None:
                self._spawn_task(upgrade.finish(self, self.handoff))
            while self.state is not SupervisorState.STOPPED:
                try:
                    signum = await asyncio.wait_for(self._signals.get(), TICK)
                except TimeoutError:
                    signum = None
                if signum is not None:
                    self._on_signal(signum)
                self._periodic(time.monotonic())
        finally:
            if self.pool is not None and self.pool.alive_count():
                await self._stop_now()      # only after an unexpected error: no worker outlives us
            await self._close_services()
        logs.event(log, "supervisor_exit", code=self.exit_code)
        return self.exit_code

    async def _start_services(self, run_as) -> bool:
        # The control socket first: a second supervisor must stop before it
        # touches (and on its way out tears down) the first one's network state.
        orphans = successor.orphan_pids()     # workers of a supervisor that died, still serving
        try:
            await self.start_control()
        except ControlSocketBusy as e:
            self.control = None
            if not self.takeover or e.pid is None:
                logs.event(log, "startup_failed", logging.ERROR, error=str(e))
                return False
            # It owns the address and rules until it has handed them over (successor.py).
            self.predecessor, self.network.keep = e.pid, True
            logs.event(log, "taking_over", pid=e.pid)
        except OSError as e:
            self.control = None
            logs.event(log, "startup_failed", logging.ERROR, error=str(e))
            return False
        # After a `systemctl restart` the network unit still holds the address and rules, and
        # every query waits in the held sockets until a worker reads them: workers first.
        early = bool(self.listen_fds) and self.network.keep
        if early and not self._start_pool(run_as):
            return False
        try:
            await self.network.ensure()
            if self.predecessor is None:
                await self._start_http()        # else: once the predecessor is gone
        except (NetworkError, OSError) as e:
            logs.event(log, "startup_failed", logging.ERROR, error=f"{e}")
            return False
        if not (early or self._start_pool(run_as)):
            return False
        if self.predecessor is not None or orphans:
            self._spawn_task(successor.succeed(self, orphans))
        return True

    async def start_control(self) -> None:
        self.control = ControlServer({"status": self._op_status, "restart": self._op_restart,
                                      "reload": self._op_reload, "upgrade": self._op_upgrade,
                                      "step_down": self._op_step_down})
        await self.control.start(self.config.control_socket)

    async def claim_services(self) -> None:
        """After a takeover: the control socket and HTTP listeners the predecessor left,
        and the network state it handed over."""
        await self.start_control()
        await self._start_http()
        self.network.keep = self.keep_network

    def begin_stop(self, code: int = 0) -> None:
        if self.state is SupervisorState.RUNNING:
            self.exit_code = code
            self.change_state(SupervisorState.STOPPING)
            self._stop_task = self._spawn_task(self._stop())

    def _start_pool(self, run_as) -> bool:
        self.pool = WorkerPool(asyncio.get_running_loop(), self.config, run_as, self.metrics, self._on_workers_changed)
        try:
            self.pool.held = self._held_sockets()
        except OSError as e:
            logs.event(log, "startup_failed", logging.ERROR, error=f"held sockets: {e}")
            return False
        if self.snapshot_in is not None:
            self.pool.adopt(self.snapshot_in)
        if self.handoff is not None:
            self.metrics.restore(self.handoff.metrics)
        self.pool.start_all()
        return True

    def _held_sockets(self) -> HeldSockets | None:
        """Under systemd: the service's own sockets, from the fd store after a restart, else
        made now and put there (HeldSockets). Elsewhere none: nothing would keep them."""
        if not self.listen_fds and not self.notifier.enabled:
            return None
        endpoints = self.config.listen_endpoints()
        inherited = set(self.listen_fds)
        held = HeldSockets.open(endpoints, self.listen_fds)
        for name, sock in held.named(endpoints):
            if name not in inherited:
                self.notifier.store_fds(name, [sock.fileno()])
        for name in inherited - {name for name, _ in held.named(endpoints)}:
            self.notifier.remove_fds(name)     # an address no longer listened on: out of the group
        logs.event(log, "held_sockets", inherited=len(inherited), endpoints=len(endpoints))
        return held

    async def _start_http(self) -> None:
        routes = {"/health": self._health_response, "/metrics": self._metrics_response}
        for endpoint, paths in plan(self.config.health_listen, self.config.metrics_listen):
            server = HttpServer({p: routes[p] for p in paths})
            await server.start(upgrade.inherited_listener(self.handoff, endpoint) or bind_listener(endpoint))
            self.http.append(server)
        upgrade.unclaimed_listeners(self.handoff, [server.sock for server in self.http])

    async def _close_services(self) -> None:
        for server in self.http:
            await server.close()
        if self.control is not None:
            await self.control.close()
        await self.network.teardown()
        if self.pool is not None and self.pool.held is not None:
            self.pool.held.close()      # our copies; the fd store keeps its own until the service stops
        self.notifier.close()

    def _on_signal(self, signum: int) -> None:
        logs.event(log, "signal_received", signal=signal.Signals(signum).name)
        if signum == signal.SIGHUP:
            self._spawn_task(self._reload(lambda text: logs.event(log, "reload_progress", detail=text)))
        elif self.state is SupervisorState.STOPPING:
            logs.event(log, "stopping_at_once", logging.WARNING)
            if self._stop_task is not None:
                self._stop_task.cancel()
            self._spawn_task(self._stop_now())
        elif self.state is SupervisorState.RUNNING:
            self.begin_stop()

    def _periodic(self, now: float) -> None:
        if self.state is SupervisorState.RUNNING:
            self.pool.tick(now)
            if self.network.due(now):
                self._spawn_task(self._resync())
            if now >= self._next_config_check and (self._config_check is None or self._config_check.done()):
                self._next_config_check = now + CONFIG_CHECK_EVERY
                self._config_check = self._spawn_task(self._check_config_file())
        if now >= self._next_health:
            self._next_health = now + self.config.supervisor.probe_interval
            self._sample_health(now)
        self.notifier.flush()
        interval = self.notifier.watchdog_interval()
        if interval and now >= self._next_watchdog:
            self._next_watchdog = now + interval / 2
            self.notifier.watchdog()

    async def _check_config_file(self) -> None:
        await self.disk.refresh()
        self.metrics.set_config_state(self.disk.verdict.valid, self.disk.on_fallback)

    async def _resync(self) -> None:
        repairs = self.network.repairs
        await self.network.ensure()
        if self.network.repairs != repairs:
            self.metrics.inc_netsetup_repair()

    def _spawn_task(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("internal error in %s: %r", task.get_coro().__qualname__, exc, exc_info=exc)

    # -- stopping -----------------------------------------------------------
    async def _stop(self) -> None:
        self.notifier.stopping("draining workers")
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        try:
            await self.pool.stop_all()
        finally:
            self.change_state(SupervisorState.STOPPED)

    async def _stop_now(self) -> None:
        self.pool.kill_all()
        deadline = time.monotonic() + KILL_REAP_WAIT
        while self.pool.alive_count() and time.monotonic() < deadline:
            await asyncio.sleep(TICK)
        self.change_state(SupervisorState.STOPPED)

    # -- restart and reload ---------------------------------------------------
    async def rolling_restart(self, progress) -> dict:
        """Replace slot A then slot B; serialised with every other restart or reload."""
        async with self._restart_lock:
            return await self._replace_both(progress)

    async def _replace_both(self, progress) -> dict:
        if self.state is not SupervisorState.RUNNING:
            return {"ok": False, "error": f"supervisor is {self.state.value}"}
        self.notifier.reloading("rolling restart")
        try:
            for name in SLOT_NAMES:
                await self.pool.replace(name, progress)
        except (RestartAborted, SpawnError, OSError) as e:
            logs.event(log, "restart_aborted", logging.ERROR, error=str(e))
            return {"ok": False, "error": str(e)}
        finally:
            self.notifier.ready(self._status_line())
        self.metrics.inc_rolling_restart()
        logs.event(log, "rolling_restart_done")
        return {"ok": True}

    async def _reload(self, progress, config_arg: str | None = None) -> dict:
        """Re-read the config file (or move onto `config_arg`) and roll onto it if valid."""
        config_arg = config_arg or self.config_arg
        try:
            new = with_socket(load(config_arg), self.socket_arg)
            await self._worker_check(new)
            run_as = self.pool.run_as if new.user == self.config.user else self._resolve_user(new.user)
        except (ConfigError, SpawnError) as e:
            logs.event(log, "reload_refused", logging.ERROR, error=str(e))
            if config_arg == self.config_arg:
                await self._check_config_file()
            return {"ok": False, "error": str(e)}
        async with self._restart_lock:
            old, old_run_as = self.config, self.pool.run_as
            await self._apply_config(new, run_as)
            progress(f"config {new.path} accepted")
            result = await self._replace_both(progress)
            if not result.get("ok"):
                # The reply says the reload failed: nothing may go on using the new config
                # (a later crash would respawn on it). A slot replaced before the failure
                # keeps its new worker until the next restart.
                await self._apply_config(old, old_run_as, quiet=True)
                logs.event(log, "reload_rolled_back", logging.WARNING, path=old.path)
                progress(f"reload failed: back on the previous config {old.path}")
            else:
                if config_arg != self.config_arg:
                    self.config_arg = self.disk.config_arg = config_arg
                    logs.event(log, "config_file_changed", path=resolve_path(config_arg))
                self.disk.accepted(new)
                await self._check_config_file()
            return result

    @staticmethod
    def _resolve_user(name: str):
        run_as, notice = resolve_user(name)
        if notice:
            logs.event(log, "worker_user", logging.WARNING, detail=notice)
        return run_as

    async def _apply_config(self, new: Config, run_as, quiet: bool = False) -> None:
        for key in ("control_socket", "health_listen", "metrics_listen"):
            if not quiet and getattr(new, key) != getattr(self.config, key):
                logs.event(log, "reload_deferred", logging.WARNING, key=key,
                           detail="takes effect when the supervisor is restarted")
        self.pool.run_as = run_as
        self.config = new
        self.pool.reconfigure(new)
        self.network.config = new
        self.judge.drop_window = new.supervisor.health_drop_window
        await self.network.ensure()
        logs.setup(new.log_level)
        logs.event(log, "config_applied", path=new.path)

    async def _worker_check(self, config: Config) -> None:
        await check_with_worker_async(config)

    # -- control socket ops ------------------------------------------------
    async def _op_status(self, request, progress) -> dict:
        # Asked now, answered now: the rules and the config file as they are at this moment.
        await asyncio.gather(self.network.verify(), self._check_config_file(), watch.fresh_stats(self.pool))
        self._sample_health(time.monotonic())
        return {"ok": True, **self.status()}

    async def _op_restart(self, request, progress) -> dict:
        return await self.rolling_restart(progress)

    async def _op_reload(self, request, progress) -> dict:
        path = request.get("config")
        if path is not None and not (isinstance(path, str) and os.path.isabs(path)):
            return {"ok": False, "error": f"reload: config = {path!r}: expected an absolute path"}
        return await self._reload(progress, path)

    async def _op_step_down(self, request, progress) -> dict:
        return await successor.step_down(self, request, progress)

    async def _op_upgrade(self, request, progress) -> dict:
        async with self._restart_lock:
            return await upgrade.begin(self, progress)     # returns only if nothing changed

    # -- observation ---------------------------------------------------------
    def _on_workers_changed(self) -> None:
        ready = self.pool.ready_count()
        self.metrics.set_workers_ready(ready)
        self._sample_health(time.monotonic())
        if not self._told_ready and ready == len(SLOT_NAMES):
            self._told_ready = True
            self.notifier.ready(self._status_line())
            logs.event(log, "supervisor_ready", workers=ready)
        else:
            self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        parts = [f"{s['slot']}:{s['state']}" + (f" gen {s['generation']}" if s["generation"] else "")
                 for s in self.pool.status()]
        return f"{self.pool.ready_count()}/{len(SLOT_NAMES)} workers ready ({', '.join(parts)})"

    def _sample_health(self, now: float) -> None:
        drops = {}
        if self.pool is not None:
            for slot in self.pool.slots.values():
                w = slot.current
                if w is None or w.handles is None:
                    continue
                inodes = [socket_inode(s) for s in w.handles.sockets.udp if s.fileno() >= 0]
                total = sum(udp_drops(inodes).values())
                drops[f"{slot.name}{w.generation}"] = total
                self.metrics.set_dropped(slot.name, w.generation, total)
        ready = self.pool.ready_count() if self.pool is not None else 0
        self.verdict = self.judge.observe(now, ready, self.network.problems, drops, self.disk.problems())

    def _health_response(self):
        if self.verdict is None:
            return text_response(503, "starting\n")
        return text_response(self.verdict.status, self.verdict.body)

    async def _metrics_response(self):
        if self.pool is not None:
            await watch.fresh_stats(self.pool)
        body, ctype = self.metrics.render()
        return 200, ctype, body

    def status(self) -> dict:
        workers = self.pool.status() if self.pool is not None else []
        ready = sum(1 for w in workers if w["state"] == SlotState.READY.value)
        network = self.network.status()
        return {
            "healthy": ready == len(SLOT_NAMES) and not network["problems"] and not self.disk.degraded,
            "ready_workers": ready,
            "state": self.state.value,
            "version": version(),
            "supervisor": {"pid": os.getpid(), "uptime": round(time.monotonic() - self.started_at, 3),
                           "config": self.config.path},
            "workers": workers,
            "network": network,
            "config": self.disk.status(),
            "health": self.verdict.body if self.verdict is not None else "starting\n",
        }

    def busy_slots(self) -> list[str]:
        return self.pool.busy_slots()

    def snapshot(self) -> SupervisorSnapshot:
        """What a supervisor taking over needs to adopt the running workers."""
        generation, slots = self.pool.snapshot()
        return SupervisorSnapshot(
            SupervisorRecord(os.getpid(), generation, time.monotonic() - self.started_at,
                             self.config_arg, self.socket_arg, slots),
            from_version=version(), config_text=self.config.raw_text, config_path=self.config.path,
            metrics=self.metrics.snapshot(),
            listeners=tuple(ListenerRecord.of(s.sock) for s in self.http if s.sock is not None),
            held=tuple(HeldRecord(name, sock.fileno()) for name, sock in self.pool.held_named()))


def with_socket(config: Config, socket_arg: str | None) -> Config:
    return config if socket_arg is None else dataclasses.replace(config, control_socket=socket_arg)


def run_main(args) -> int:
    """`twindns run [--config F]`."""
    import uvloop
    listen_fds = take_listen_fds()
    try:
        handoff = upgrade.take_handoff()
    except upgrade.UpgradeHandoffError as e:
        print(f"twindns: {e}", file=sys.stderr)
        return 1
    state_dir = getattr(args, "state_dir", None)
    if handoff is not None:     # the held sockets crossed the exec (still in the fd store too)
        listen_fds.update((h.name, socket.socket(fileno=h.fd)) for h in handoff.held)
    try:
        # after an upgrade: the config the previous image accepted, not the file as edited since
        config = (parse(handoff.config_text, handoff.config_path) if handoff
                  else accepted.load_for_start(args.config, accepted.state_dir(state_dir)))
        check_with_worker(config)
    except ConfigError as e:
        print(f"twindns: {e}", file=sys.stderr)
        return EX_CONFIG
    config = with_socket(config, args.socket)
    logs.setup(config.log_level)
    logs.event(log, "starting", version=version(), config=config.path, pid=os.getpid())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        # after `reload --config F` and an upgrade, F is still the file reloads re-read
        config_arg = handoff.supervisor.config_arg if handoff else args.config
        return runner.run(Arbiter(config, config_arg=config_arg, socket_arg=args.socket,
                                  snapshot=handoff.supervisor if handoff else None, handoff=handoff,
                                  state_dir=state_dir, listen_fds=listen_fds,
                                  keep_network=args.keep_network, takeover=args.takeover).run())
