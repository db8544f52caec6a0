"""Start one worker: `python -m worker --supervised ...` exec'd directly as
the unprivileged user, with its sockets, a config pipe, a probe socketpair
and a control socketpair as inherited fds (docs/internals.md).

The worker needs no privilege: the supervisor already bound the sockets.
It is started with user=/group=/extra_groups=[] (setuid before exec drops
every capability), or through supervisor/reach.py's namespace when that
user could not otherwise run our Python. The pool checks CapEff is 0 once
the worker answers its first probe (`effective_caps`).
"""
from __future__ import annotations

import fcntl
import grp
import logging
import os
import pwd
import socket
import subprocess
import sys
from dataclasses import dataclass

from supervisor.reach import Reach, InterpreterUnreachable, plan, wrap
from supervisor.snapshot import WorkerFds
from supervisor.sockets import HeldSockets, SocketSet

log = logging.getLogger("twindns.spawn")

SHARED_USER = "nobody"
# systemd's DynamicUser range: uids no distribution hands to accounts.
DYNAMIC_UIDS = range(61184, 65520)
# The worker must not talk to systemd or inherit socket activation meant for us.
SCRUBBED_ENV = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID")


class SpawnError(RuntimeError):
    """A worker process could not be started, or started with privileges."""


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int
    reach: Reach | None = None     # how it gets at our Python, when that is below a closed directory


def resolve_user(name: str) -> tuple[RunAs | None, str | None]:
    """The account workers run as and a warning to log, if any. None: keep our
    own ids (only when not root, i.e. development).

    Always an account of their own: a user that does not exist is created (a
    system account without home or shell, as `twindns install` makes it); if
    that fails (no useradd, read-only /etc), workers get a uid no account and
    no process uses, from systemd's DynamicUser range. Never the shared
    `nobody` as a fallback: its other processes could signal or trace them."""
    if os.geteuid() != 0:
        return None, f"not running as root: workers run as uid {os.geteuid()}, not as {name!r}"
    warning = None
    try:
        pw = pwd.getpwnam(name)
        uid, gid = pw.pw_uid, pw.pw_gid
        if name == SHARED_USER:
            warning = (f"user {name!r} is shared with other services; set `user` to an account of "
                       "twindns' own (a missing one is created)")
    except KeyError:
        why = create_system_user(name)
        if why is None:
            pw = pwd.getpwnam(name)
            uid, gid = pw.pw_uid, pw.pw_gid
            warning = f"user {name!r} did not exist: created it (uid {uid}, system account, no home, no shell)"
        else:
            uid = gid = dynamic_uid()
            warning = (f"user {name!r} does not exist and could not be created ({why}): "
                       f"workers run as uid {uid}, which no account and no process uses")
    if uid == 0:
        raise SpawnError(f"user {name!r} is uid 0: workers must not run as root")
    try:
        reach = plan(uid, gid, name)
    except InterpreterUnreachable as e:
        raise SpawnError(str(e)) from None
    if reach is not None:
        notice = (f"user {name!r} may not enter {reach.covered}: each worker gets a private mount "
                  f"namespace showing only {reach.exposed} there")
        warning = f"{warning}; {notice}" if warning else notice
    return RunAs(name, uid, gid, reach), warning


def create_system_user(name: str) -> str | None:
    """useradd a system account for the workers; None on success, else why not."""
    argv = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", "/usr/sbin/nologin", "--user-group", "--comment", "twindns DNS cache worker", name]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"useradd: {e}"
    if p.returncode != 0:
        return f"useradd exit {p.returncode}: {p.stderr.strip() or p.stdout.strip()}"
    try:
        pwd.getpwnam(name)
    except KeyError:
        return "useradd succeeded but the account is not visible"
    return None


def dynamic_uid(candidates: range = DYNAMIC_UIDS, proc: str = "/proc") -> int:
    """The first uid of `candidates` that no account, no group and no running
    process has."""
    taken = {pw.pw_uid for pw in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    for entry in os.scandir(proc):
        if entry.name.isdigit():
            try:
                taken.add(os.stat(entry.path).st_uid)
            except OSError:
                continue            # exited meanwhile
    for uid in candidates:
        if uid not in taken:
            return uid
    raise SpawnError(f"no free uid in {candidates.start}-{candidates.stop - 1} for the workers")


@dataclass
class WorkerHandles:
    """The supervisor's side of one worker: its process and our ends of its fds."""
    proc: subprocess.Popen | None      # None for a worker adopted across a re-exec
    pid: int
    pidfd: int
    sockets: SocketSet
    adopted: SocketSet | None          # a crashed predecessor's sockets it drains
    control: socket.socket
    probe: socket.socket
    log: int = -1                      # read end of its stdout/stderr pipe (supervisor/workerlog.py)

    def fd_numbers(self) -> WorkerFds:
        return WorkerFds(self.pidfd, self.control.fileno(), self.probe.fileno(),
                         tuple(self.sockets.udp_fds()), tuple(self.sockets.tcp_fds()),
                         tuple(self.adopted.udp_fds()) if self.adopted else (), self.sockets.steered, self.log)

    @classmethod
    def adopt(cls, pid: int, fds: WorkerFds) -> "WorkerHandles":
        """Our ends of a worker that a previous supervisor started (the fds are ours now)."""
        handles = cls(None, pid, fds.pidfd, SocketSet.adopt(list(fds.udp), list(fds.tcp), fds.steered),
                      SocketSet.adopt(list(fds.adopted_udp), [], True) if fds.adopted_udp else None,
                      socket.socket(fileno=fds.control), socket.socket(fileno=fds.probe), fds.log)
        handles.control.setblocking(False)
        handles.probe.setblocking(False)
        return handles

    def release_adopted(self) -> None:
        if self.adopted is not None:
            self.adopted.close()
            self.adopted = None

    def close(self) -> None:
        """Close every fd we hold for this worker (it has exited)."""
        self.sockets.close()
        self.release_adopted()
        self.control.close()
        self.probe.close()
        if self.log >= 0:
            os.close(self.log)
            self.log = -1
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def _config_pipe(raw: bytes) -> int:
    r, w = os.pipe()
    try:
        if len(raw) > 65536:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, len(raw))
        os.write(w, raw)   # fits in the pipe buffer, so this never blocks
    finally:
        os.close(w)
    return r


def worker_argv(slot: str, generation: int, config_fd: int, sockets: SocketSet,
                adopted: SocketSet | None, control_fd: int, probe_fd: int, listen: list[str],
                shared: HeldSockets | None = None, cache_fd: int | None = None) -> list[str]:
    argv = [sys.executable, "-m", "worker", "--supervised", "--config-fd", str(config_fd)]
    for ep in listen:           # not bound by the worker: its own addresses, for the forwarding-loop check
        argv += ["--listen", ep]
    for fd in sockets.udp_fds():
        argv += ["--udp-fd", str(fd)]
    for fd in sockets.tcp_fds():
        argv += ["--tcp-fd", str(fd)]
    for fd in (adopted.udp_fds() if adopted else []):
        argv += ["--adopt-udp-fd", str(fd)]
    for fd in (shared.udp_fds() if shared else []):
        argv += ["--shared-udp-fd", str(fd)]
    for fd in (shared.tcp_fds() if shared else []):
        argv += ["--shared-tcp-fd", str(fd)]
    if cache_fd is not None:
        argv += ["--cache-fd", str(cache_fd)]
    argv += ["--control-fd", str(control_fd), "--probe-fd", str(probe_fd),
             "--slot", slot, "--generation", str(generation)]
    return argv


def effective_caps(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    raise SpawnError(f"no CapEff line for pid {pid}")


def spawn(slot: str, generation: int, raw_config: bytes, listen: list[str], sockets: SocketSet,
          adopted: SocketSet | None, run_as: RunAs | None, shared: HeldSockets | None = None,
          warm_cache: int | None = None) -> WorkerHandles:
    """Start one worker; `warm_cache`: a restart cache's fd (supervisor/restartcache.py),
    of which the worker gets a read-only open with an offset of its own."""
    probe_ours, probe_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ctl_ours, ctl_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    config_fd = _config_pipe(raw_config)
    cache_fd = os.open(f"/proc/self/fd/{warm_cache}", os.O_RDONLY | os.O_CLOEXEC) if warm_cache is not None else None
    log_read, log_write = os.pipe()
    theirs = [config_fd, ctl_theirs.fileno(), probe_theirs.fileno(), *([cache_fd] if cache_fd is not None else []),
              *sockets.udp_fds(), *sockets.tcp_fds(), *(adopted.udp_fds() if adopted else []),
              *(shared.udp_fds() + shared.tcp_fds() if shared else [])]
    argv = worker_argv(slot, generation, config_fd, sockets, adopted, ctl_theirs.fileno(), probe_theirs.fileno(),
                       listen, shared, cache_fd)
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    ids: dict = {}
    if run_as is not None and run_as.reach is not None:
        argv = wrap(argv, run_as.reach, run_as.uid, run_as.gid)
    elif run_as is not None:
        ids = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    try:
        proc = subprocess.Popen(argv, pass_fds=theirs, stdin=subprocess.DEVNULL, stdout=log_write,
                                stderr=log_write, cwd="/", env=env, close_fds=True, **ids)
    except OSError as e:
        for s in (probe_ours, ctl_ours):
            s.close()
        os.close(log_read)
        raise SpawnError(f"cannot start worker {slot}: {e}") from None
    finally:
        os.close(config_fd)
        if cache_fd is not None:
            os.close(cache_fd)
        os.close(log_write)
        probe_theirs.close()
        ctl_theirs.close()
    handles = WorkerHandles(proc, proc.pid, os.pidfd_open(proc.pid), sockets, adopted, ctl_ours, probe_ours,
                            log_read)
    for s in (ctl_ours, probe_ours):
        s.setblocking(False)
    return handles
