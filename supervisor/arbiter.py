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
import logging
import os
import signal
import socket
import sys
import time
from functools import partial

from supervisor import accepted, logs, restartcache, restartconns, successor, upgrade, version
from supervisor.config import Config, ConfigError, EX_CONFIG, check_with_worker, parse
from supervisor.control import ControlServer, ControlSocketBusy
from supervisor.health import HealthJudge
from supervisor.http import HttpServer, bind_listener, plan
from supervisor.metrics import MetricsAggregator
from supervisor.netstate import NetworkError, NetworkState
from supervisor.observe import Observation
from supervisor.pool import WorkerPool
from supervisor.restarts import RestartAndReload, with_socket
from supervisor.sdnotify import Notifier
from supervisor.listenfds import CACHE_FDNAME, take_listen_fds
from supervisor.snapshot import SupervisorRecord, SupervisorSnapshot
from supervisor.sockets import HeldSockets, check_kernel
from supervisor.spawn import SpawnError
from supervisor.states import SupervisorState

log = logging.getLogger("twindns.arbiter")

TICK = 0.05                    # main loop period: bounds how late a probe or respawn can be
KILL_REAP_WAIT = 2.0
CONFIG_CHECK_EVERY = 2.0       # the config file is re-read this often (one small read; validated if changed)
TERMINATING = (signal.SIGTERM, signal.SIGINT)


class Arbiter(RestartAndReload, Observation):
    """Services and the main loop; restarts: supervisor/restarts.py, reporting: supervisor/observe.py."""
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
        self.cache_fd = self.listen_fds.pop(CACHE_FDNAME, None)   # the previous workers' cache
        self.kept_connections = restartconns.take_connections(self.listen_fds)     # and their TCP clients
        self.metrics = MetricsAggregator(version())
        self.metrics.set_names(config.metrics_names, config.listen, config.port)
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
            try:
                await successor.check_same_service(self.config.control_socket, self.config, e.pid)
            except successor.TakeoverFailed as refused:
                logs.event(log, "startup_failed", logging.ERROR, error=str(refused))
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
            self.pool.held = held_sockets(self.config, self.listen_fds, self.notifier)
        except OSError as e:
            logs.event(log, "startup_failed", logging.ERROR, error=f"held sockets: {e}")
            return False
        if self.snapshot_in is not None:
            self.pool.adopt(self.snapshot_in)
        if self.handoff is not None:
            self.metrics.restore(self.handoff.metrics)
        self.pool.warm_cache = self.cache_fd
        self.pool.start_all()
        if self.cache_fd is not None:
            restartcache.handed_out(self.notifier, self.cache_fd)
            self.pool.warm_cache = self.cache_fd = None
        if self.kept_connections:
            self._spawn_task(restartconns.hand_out(self.pool, self.notifier, self.kept_connections))
        self.kept_connections = []
        return True

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
        verdict = await self.disk.refresh()
        self.metrics.set_config_state(self.disk.verdict.valid, self.disk.on_fallback)
        if self.state is SupervisorState.RUNNING and self.disk.new_version_to_roll_onto(verdict):
            self._spawn_task(self._reload(lambda text: logs.event(log, "reload_progress", detail=text)))

    async def _resync(self) -> None:
        repairs = self.network.repairs
        await self.network.ensure()
        if self.network.repairs != repairs:
            self.metrics.inc_netsetup_repair()

    def _spawn_task(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(partial(_task_done, self._tasks))
        return task

    # -- stopping -----------------------------------------------------------
    async def _stop(self) -> None:
        self.notifier.stopping("draining workers")
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        try:
            await restartcache.stop_all_leaving_state(self.pool, self.notifier)
        finally:
            self.change_state(SupervisorState.STOPPED)

    async def _stop_now(self) -> None:
        self.pool.kill_all()
        deadline = time.monotonic() + KILL_REAP_WAIT
        while self.pool.alive_count() and time.monotonic() < deadline:
            await asyncio.sleep(TICK)
        self.change_state(SupervisorState.STOPPED)


def _task_done(tasks: set[asyncio.Task], task: asyncio.Task) -> None:
    tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("internal error in %s: %r", task.get_coro().__qualname__, exc, exc_info=exc)


def held_sockets(config: Config, listen_fds: dict, notifier: Notifier) -> HeldSockets | None:
    """Under systemd: the service's own sockets, from the fd store after a restart, else
    made now and put there (HeldSockets). Elsewhere none: nothing would keep them."""
    if not listen_fds and not notifier.enabled:
        return None
    endpoints = config.listen_endpoints()
    inherited = set(listen_fds)
    held = HeldSockets.open(endpoints, listen_fds)
    for name, sock in held.named():
        if name not in inherited:
            notifier.store_fds(name, [sock.fileno()])
    for name in inherited - {name for name, _ in held.named()}:
        notifier.remove_fds(name)     # an address no longer listened on: out of the group
    logs.event(log, "held_sockets", inherited=len(inherited), endpoints=len(endpoints))
    return held


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
        if handoff:
            config = parse(handoff.config_text, handoff.config_path)
            check_with_worker(config)
        else:       # checked by the worker already (each check is a Python start: ~0.3 s)
            config = accepted.load_for_start(args.config, accepted.state_dir(state_dir))
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
