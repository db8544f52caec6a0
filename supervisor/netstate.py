"""The node's network state as the supervisor keeps it: netsetup.ensure() at
start and every resync_interval (a repair is logged), teardown on stop, and
what status shows about it. Each netsetup call runs in a child process
(supervisor/netjob.py explains why), awaited on the supervisor's loop."""
from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

from contract import child
from contract.child import ChildTimeout
from supervisor import logs
from supervisor.config import Config
from supervisor.netjob import spec_json

log = logging.getLogger("twindns.netstate")

NETJOB_TIMEOUT = 60.0
VERIFY_FRESH = 1.0             # a kernel read-back this recent is answered as it is


class NetworkError(RuntimeError):
    """netsetup could not put the network state in place."""


async def run_netjob(operation: str, spec) -> dict:
    """One netsetup operation in a child; its Report as a dict, or NetworkError."""
    try:
        # Cancelled, it kills and reaps the child: left alone it could re-add rules after teardown.
        done = await child.run([sys.executable, "-m", "supervisor.netjob", operation, spec_json(spec)],
                               NETJOB_TIMEOUT)
    except ChildTimeout:
        raise NetworkError(f"netsetup {operation} did not finish in {NETJOB_TIMEOUT:g} s") from None
    try:
        result = json.loads(done.stdout)
    except ValueError:
        raise NetworkError(f"netsetup {operation} failed (exit {done.returncode}): "
                           f"{done.last_error_line() or 'no output'}") from None
    if "error" in result:
        raise NetworkError(result["error"])
    return result


class NetworkState:
    def __init__(self, config: Config, keep: bool = False) -> None:
        self.config = config
        # The state outlives this process: a unit of its own (twindns-net.service) removes it
        # when the service stops, or a successor supervisor took it over.
        self.keep = keep
        self.backend: str | None = None
        self.problems: list[str] = []
        self.last_repair: tuple[float, list[str]] | None = None   # (wall time, changes)
        self.repairs = 0
        self.next_resync = 0.0
        self.ensured = False
        self.attempted = False      # an ensure ran (maybe partly): teardown has something to look at
        self.busy = False
        self.checked_at: float | None = None     # monotonic time the kernel's state was last read
        self._lock: asyncio.Lock | None = None

    @property
    def managed(self) -> bool:
        return self.config.interface.manage or self.config.firewall.manage

    async def ensure(self) -> None:
        """Put the network state in place; raises NetworkError at start only (later: logged, shown)."""
        self.next_resync = time.monotonic() + self.config.firewall.resync_interval
        if not self.managed:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        # One at a time, and a caller never skips its turn: a reload arriving during a
        # periodic resync must still get its (new) listen IPs put in place.
        async with self._lock:
            await self._ensure_once()

    async def _ensure_once(self) -> None:
        if not self.managed:
            return
        self.busy = True
        self.attempted = True
        try:
            report = await run_netjob("ensure", self.config.net_spec())
        except NetworkError as e:
            if not self.ensured:
                raise
            self.problems = [str(e)]
            logs.event(log, "netsetup_failed", logging.ERROR, error=str(e))
            return
        finally:
            self.busy = False
        self.backend = report["backend"]
        self.problems = list(report.get("problems") or [])
        self.checked_at = time.monotonic()
        changes = report.get("changes") or []
        if changes and self.ensured:
            self.last_repair = (time.time(), list(changes))
            self.repairs += 1
            logs.event(log, "netsetup_repaired", logging.WARNING, changes="; ".join(changes))
        elif changes:
            logs.event(log, "netsetup_ensured", changes="; ".join(changes))
        self.ensured = True

    async def verify(self) -> None:
        """Read back what the kernel holds now (changes nothing); problems and checked_at follow."""
        if not self.managed or not self.ensured:
            return
        if self.checked_at is not None and time.monotonic() - self.checked_at < VERIFY_FRESH:
            return                  # status polled in a loop must not fork a netjob each time
        async with self._lock:
            try:
                report = await run_netjob("verify", self.config.net_spec())
                self.problems = list(report.get("problems") or [])
            except NetworkError as e:
                self.problems = [str(e)]
            self.checked_at = time.monotonic()

    def due(self, now: float) -> bool:
        return now >= self.next_resync and not self.busy

    async def teardown(self) -> None:
        # Also after an ensure that failed or was cut short: it may have done part of its work,
        # and teardown removes only what carries our marks.
        if not self.managed or not self.attempted:
            return
        if not self.config.interface.teardown:
            logs.event(log, "netsetup_kept", reason="interface.teardown = false")
            return
        if self.keep:
            logs.event(log, "netsetup_kept", reason="held by another owner (--keep-network, or handed over)")
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:          # after an ensure still running, never before it
            try:
                report = await run_netjob("teardown", self.config.net_spec())
                logs.event(log, "netsetup_teardown", changes="; ".join(report.get("changes") or []) or "nothing")
            except NetworkError as e:
                logs.event(log, "netsetup_teardown_failed", logging.ERROR, error=str(e))

    def status(self) -> dict:
        c = self.config
        return {"interface": c.interface.name if c.interface.manage else None,
                "addresses": list(c.listen), "port": c.port,
                "managed": self.managed, "backend": self.backend,
                "rules_ok": (not self.problems) if c.firewall.manage else None,
                "problems": list(self.problems),
                "checked_ago": (round(time.monotonic() - self.checked_at, 1)
                                if self.checked_at is not None else None),
                "repairs": self.repairs,
                "last_repair": ({"at": self.last_repair[0], "changes": self.last_repair[1]}
                                if self.last_repair else None)}
