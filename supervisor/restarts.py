"""Restart and reload, the part of the Arbiter (supervisor/arbiter.py) that
changes what runs: the rolling restart of both slots (supervisor/rolling.py
does one), a config reload that rolls onto the new config or back onto the
old one, and the control ops that ask for them (`restart`, `reload`,
`upgrade`). A mixin of Arbiter: it uses the arbiter's pool, config,
network state, notifier and restart lock.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from supervisor import logs, successor, upgrade
from supervisor.config import Config, ConfigError, check_with_worker_async, load, resolve_path
from supervisor.pool import SLOT_NAMES, RestartAborted
from supervisor.spawn import SpawnError, resolve_user
from supervisor.states import SupervisorState

log = logging.getLogger("twindns.arbiter")


def with_socket(config: Config, socket_arg: str | None) -> Config:
    return config if socket_arg is None else dataclasses.replace(config, control_socket=socket_arg)


class RestartAndReload:
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
            added = self._hold_new_addresses(new)
            result = await self._replace_both(progress)
            if not result.get("ok"):
                self._release_held(added)
                # The reply says the reload failed: nothing may go on using the new config
                # (a later crash would respawn on it). A slot replaced before the failure
                # keeps its new worker until the next restart.
                await self._apply_config(old, old_run_as, quiet=True)
                logs.event(log, "reload_rolled_back", logging.WARNING, path=old.path)
                progress(f"reload failed: back on the previous config {old.path}")
            else:
                if self.pool.held is not None:
                    self._release_held(self.pool.held.unlisted(new.listen_endpoints()))
                if config_arg != self.config_arg:
                    self.config_arg = self.disk.config_arg = config_arg
                    logs.event(log, "config_file_changed", path=resolve_path(config_arg))
                self.disk.accepted(new)
                await self._check_config_file()
            return result

    def _hold_new_addresses(self, config: Config) -> list[str]:
        """Under systemd: held sockets for the listen addresses a reload adds,
        in the fd store before a worker is spawned with them, so a later
        `systemctl restart` queues their queries too. Their names."""
        held = self.pool.held
        if held is None:
            return []
        try:
            added = held.add(config.listen_endpoints())
        except OSError as e:        # the new workers' own sockets will say more, or serve without these
            logs.event(log, "held_sockets_failed", logging.WARNING, error=str(e))
            return []
        for name, sock in added:
            self.notifier.store_fds(name, [sock.fileno()])
        if added:
            logs.event(log, "held_sockets_added", names=",".join(name for name, _ in added))
        return [name for name, _ in added]

    def _release_held(self, names: list[str]) -> None:
        """Held sockets of addresses no longer listened on (a reload removed
        them, or failed after adding them): out of the fd store, our copies
        closed. Workers given one serve it until they are replaced."""
        if not names:
            return
        self.pool.held.drop(names)
        for name in names:
            self.notifier.remove_fds(name)
        logs.event(log, "held_sockets_released", names=",".join(names))

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
        self.metrics.set_names(new.metrics_names, new.listen, new.port)
        self.pool.reconfigure(new)
        self.network.config = new
        self.judge.drop_window = new.supervisor.health_drop_window
        await self.network.ensure()
        logs.setup(new.log_level)
        logs.event(log, "config_applied", path=new.path)

    async def _worker_check(self, config: Config) -> None:
        await check_with_worker_async(config)

    # -- control socket ops ------------------------------------------------
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
