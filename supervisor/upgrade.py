"""`twindns upgrade`: re-execute the supervisor in place on the code now on
disk, keeping the workers serving, then roll them onto the new code.

The workers are the supervisor's children and stay so across execve(2), so
the new image can reap and steer them. What it needs travels in a memfd
whose number is in $TWINDNS_UPGRADE_FD: a supervisor/snapshot.py
SupervisorSnapshot (workers with their socket/channel/pidfd numbers, the
config that runs, metrics so counters never go backwards, the HTTP listeners
so no scrape or probe is refused, and `reply_fd`, the `twindns upgrade`
client's connection, answered by the new image).

Every fd named there has FD_CLOEXEC cleared just before the exec.

Old image (control op `upgrade`, under the restart lock):
    begin(supervisor, progress) -> refuses unless both workers are ready, runs
    the pre-flight check of the new code in a subprocess (imports, config
    accepted by the new supervisor and worker), then re-executes. Returns (an
    error reply) only if nothing was changed.
New image (`twindns run` again, same pid, same argv):
    handoff = take_handoff()    in run_main, before anything else
    ... Arbiter(config, snapshot=handoff.supervisor) adopts the workers ...
    await finish(supervisor, handoff)   once serving: rolling restart, reply to the client

`supervisor` is what the Upgradable protocol below names, not a whole Arbiter.

Termination signals are blocked across the exec (the mask survives execve)
and unblocked by the new image once its handlers are installed, so a
`systemctl stop` that lands mid-upgrade is delayed, not lost.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
from typing import Awaitable, Callable, Protocol

from contract import child
from contract.child import ChildTimeout
from supervisor import logs, version
from supervisor.snapshot import ListenerRecord, SnapshotError, SupervisorSnapshot

HANDOFF_ENV = "TWINDNS_UPGRADE_FD"
PREFLIGHT_TIMEOUT = 60.0
REPLY_TIMEOUT = 5.0
MAX_HANDOFF = 16 * 1024 * 1024
BLOCKED_ACROSS_EXEC = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

log = logging.getLogger("twindns.upgrade")


class UpgradeError(RuntimeError):
    """The upgrade was refused or the new code failed its check; nothing changed."""


class UpgradeHandoffError(RuntimeError):
    """The state handed over by the previous supervisor image is unreadable."""


class Upgradable(Protocol):
    """What an upgrade needs of the running supervisor."""

    def busy_slots(self) -> list[str]:
        """Slots whose worker is not ready, or that are being replaced or drained."""

    def snapshot(self) -> SupervisorSnapshot:
        """The whole state, for the image that takes over."""

    def rolling_restart(self, progress: Callable[[str], None]) -> Awaitable[dict]:
        """Replace both workers (serialised with every other restart)."""


# -- old image -------------------------------------------------------------------
async def preflight(config_text: str, config_path: str, env: dict[str, str] | None = None) -> str:
    """Check the code on disk in a fresh interpreter; return its version."""
    env = dict(os.environ if env is None else env)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", HANDOFF_ENV):
        env.pop(key, None)
    try:
        done = await child.run([sys.executable, "-m", "supervisor.upgrade", "--preflight", config_path],
                               PREFLIGHT_TIMEOUT, input=config_text.encode(), env=env, cwd="/")
    except ChildTimeout:
        raise UpgradeError(f"the new code did not pass its check within {PREFLIGHT_TIMEOUT:g} s") from None
    if done.returncode != 0:
        raise UpgradeError(f"the new code failed its check: {done.last_error_line() or f'exit {done.returncode}'}")
    try:
        return json.loads(done.stdout)["version"]
    except (ValueError, KeyError, TypeError):
        raise UpgradeError(f"the new code's check printed {done.stdout[:200]!r}, not its version") from None


def write_handoff(state: SupervisorSnapshot) -> int:
    """The state in an inheritable memfd, read position at 0."""
    fd = os.memfd_create("twindns-upgrade", 0)      # 0: no MFD_CLOEXEC, it must cross the exec
    data = state.to_json()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def reexec_argv() -> list[str]:
    """The exact interpreter invocation that started us (`-m supervisor run ...`
    or the `twindns` script), so the new image runs as the old one did."""
    return [sys.executable, *sys.orig_argv[1:]]


def reexec(state: SupervisorSnapshot) -> None:
    """Replace this process image; returns only by raising UpgradeError."""
    fds = state.fds()             # every one must survive the exec
    handoff = write_handoff(state)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED_ACROSS_EXEC)
    try:
        for fd in fds:
            os.set_inheritable(fd, True)
        env = dict(os.environ, **{HANDOFF_ENV: str(handoff)})
        sys.stdout.flush()
        sys.stderr.flush()                 # log lines written so far must not die with the image
        os.execve(sys.executable, reexec_argv(), env)
    except OSError as e:
        for fd in fds:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
        os.close(handoff)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        raise UpgradeError(f"exec of {sys.executable} failed: {e}") from None


def connection_fd(progress) -> int | None:
    """A duplicate of the requesting client's connection, if the control server
    exposes it (`progress.connection`), so the new image can answer it."""
    conn = getattr(progress, "connection", None)
    if conn is None:
        return None
    return os.dup(conn.fileno())


async def begin(running: Upgradable, progress: Callable[[str], None]) -> dict:
    """The `upgrade` control op in the running image. Call with the restart lock held."""
    not_ready = running.busy_slots()
    if not_ready:
        return {"ok": False, "error": f"upgrade needs both workers ready and idle; slot {', '.join(not_ready)} "
                                      "is not (see `twindns status`)"}
    checked = running.snapshot()
    try:
        new_version = await preflight(checked.config_text, checked.config_path)
    except UpgradeError as e:
        logs.event(log, "upgrade_refused", logging.ERROR, error=str(e))
        return {"ok": False, "error": f"{e}; still running {version()}"}
    progress(f"new code checked: version {new_version}")
    state = dataclasses.replace(running.snapshot(), to_version=new_version, reply_fd=connection_fd(progress))
    progress(f"re-executing supervisor pid {os.getpid()}: {version()} -> {new_version}")
    logs.event(log, "upgrade_reexec", pid=os.getpid(), old=version(), new=new_version)
    await asyncio.sleep(0)                 # let the progress line reach the client
    try:
        reexec(state)
    except UpgradeError as e:
        if state.reply_fd is not None:
            os.close(state.reply_fd)
        logs.event(log, "upgrade_failed", logging.ERROR, error=str(e))
        return {"ok": False, "error": f"{e}; still running {version()}"}
    raise AssertionError("execve returned")


# -- new image -------------------------------------------------------------------
def take_handoff(environ: dict[str, str] | None = None) -> SupervisorSnapshot | None:
    """The previous image's state, or None on a normal start. Removes the
    variable and closes the memfd so neither leaks into workers or a later exec."""
    environ = os.environ if environ is None else environ
    raw = environ.pop(HANDOFF_ENV, None)
    if raw is None:
        return None
    try:
        fd = int(raw)
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_HANDOFF + 1)
    except (ValueError, OSError) as e:
        raise UpgradeHandoffError(f"${HANDOFF_ENV}={raw!r}: {e}") from None
    if len(data) > MAX_HANDOFF:
        raise UpgradeHandoffError(f"${HANDOFF_ENV}: handoff larger than {MAX_HANDOFF} bytes")
    try:
        state = SupervisorSnapshot.from_json(data)
    except SnapshotError as e:
        raise UpgradeHandoffError(f"${HANDOFF_ENV}: malformed handoff: {e}") from None
    for fd in state.fds():
        os.set_inheritable(fd, False)      # ours again: workers spawned later must not get them
    return state


def _listeners(handoff: SupervisorSnapshot | None) -> tuple[ListenerRecord, ...]:
    return handoff.listeners if handoff is not None else ()


def inherited_listener(handoff: SupervisorSnapshot | None, endpoint) -> socket.socket | None:
    """The previous image's HTTP listener on `endpoint`, if it handed one over."""
    for h in _listeners(handoff):
        if (h.host, h.port) == (endpoint.host, endpoint.port):
            return socket.socket(fileno=h.fd)
    return None


def unclaimed_listeners(handoff: SupervisorSnapshot | None, claimed: list[socket.socket]) -> None:
    """Close handed-over listeners the new config no longer serves."""
    taken = {s.fileno() for s in claimed}
    for h in _listeners(handoff):
        if h.fd not in taken:
            try:
                os.close(h.fd)
            except OSError:
                pass


def unblock_signals() -> None:
    """Deliver termination signals that arrived during the exec (handlers are in place)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED_ACROSS_EXEC)


class ClientReply:
    """The `twindns upgrade` client's connection, answered by the new image
    with the same JSON lines the control socket speaks."""

    def __init__(self, fd: int | None) -> None:
        self._sock = socket.socket(fileno=fd) if fd is not None else None
        if self._sock is not None:
            self._sock.setblocking(False)

    def progress(self, text: str) -> None:
        self._send({"progress": text})

    def _send(self, obj: dict) -> None:
        if self._sock is None:
            return
        try:
            self._sock.send(json.dumps(obj).encode() + b"\n")
        except OSError:                    # client gone: the upgrade goes on regardless
            self.close()

    async def final(self, reply: dict) -> None:
        if self._sock is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_sendall(self._sock, json.dumps(reply).encode() + b"\n"),
                                   REPLY_TIMEOUT)
        except (OSError, TimeoutError):
            pass
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def finish(running: Upgradable, handoff: SupervisorSnapshot) -> dict:
    """In the new image, once serving: roll the adopted workers onto the new code."""
    reply = ClientReply(handoff.reply_fd)
    old, new = handoff.from_version, version()
    reply.progress(f"supervisor pid {os.getpid()} now runs {new}; adopted {len(handoff.workers())} workers")
    logs.event(log, "upgrade_adopted", old=old, new=new)
    result = await running.rolling_restart(reply.progress)
    if result.get("ok"):
        result = {"ok": True, "from_version": old, "version": new}
        logs.event(log, "upgrade_done", old=old, new=new)
    else:
        result = {"ok": False, "error": f"supervisor upgraded to {new}, but the workers were not restarted: "
                                        f"{result.get('error')}; run `twindns restart`"}
    await reply.final(result)
    return result


# -- pre-flight, run by the old image on the new code -------------------------------
def _preflight_main(argv: list[str]) -> int:
    """`python -m supervisor.upgrade --preflight CONFIG_PATH` < config text:
    import everything the supervisor and worker run, validate the config with
    the new code, print {"version": ...}."""
    if len(argv) != 2 or argv[0] != "--preflight":
        print("usage: python -m supervisor.upgrade --preflight CONFIG_PATH < config", file=sys.stderr)
        return 2
    import importlib
    for module in ("supervisor.arbiter", "supervisor.pool", "supervisor.rolling", "supervisor.watch",
                   "supervisor.custody", "supervisor.snapshot", "supervisor.control", "supervisor.http",
                   "supervisor.metrics", "supervisor.upgrade", "netsetup", "worker.main"):
        importlib.import_module(module)
    import dataclasses
    import tempfile
    from supervisor.config import ConfigError, check_with_worker, parse
    text, path = sys.stdin.read(), argv[1]
    config = parse(text, path)
    # The worker checks a file: give it the running text, not what is on
    # disk now (it may have been edited since and is not what runs).
    with tempfile.NamedTemporaryFile("w", prefix="twindns-preflight-", suffix=".toml") as f:
        f.write(text)
        f.flush()
        try:
            check_with_worker(dataclasses.replace(config, path=f.name))
        except ConfigError as e:
            raise ConfigError(str(e).replace(f.name, path)) from None
    print(json.dumps({"version": version()}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_preflight_main(sys.argv[1:]))
    except Exception as e:                 # anything: report one line, the old image keeps running
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
