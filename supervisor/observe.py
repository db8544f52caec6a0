"""Observation, the part of the Arbiter (supervisor/arbiter.py) that reports:
the ready count told to systemd and metrics, the health verdict behind
/health, /metrics, `twindns status` (the control op and its reply), and the
snapshot a supervisor taking over adopts. A mixin of Arbiter: it reads the
arbiter's pool, network state, config file state and metrics.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

from supervisor import logs, version, watch
from supervisor.health import socket_drops
from supervisor.http import text_response
from supervisor.pool import SLOT_NAMES
from supervisor.snapshot import HeldRecord, ListenerRecord, SupervisorRecord, SupervisorSnapshot
from supervisor.states import SlotState

log = logging.getLogger("twindns.arbiter")


class Observation:
    async def _op_status(self, request, progress) -> dict:
        # Asked now, answered now: the rules and the config file as they are at this moment.
        await asyncio.gather(self.network.verify(), self._check_config_file(), watch.fresh_stats(self.pool))
        self._sample_health(time.monotonic())
        return {"ok": True, **self.status()}

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
                total = sum(d for s in w.handles.sockets.udp if s.fileno() >= 0 and (d := socket_drops(s)) is not None)
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
