"""A throwaway Debian container booted with a real systemd as its PID 1, for
tests of what only a real service manager exercises (`twindns install --now`,
`Type=notify`, the watchdog, `systemctl restart|reload|stop`, socket units).

    root = debian_root()              # debootstrap once, cached between runs
    with Container.boot(root) as c:   # systemd-nspawn -b, private network
        c.copy_in(local_path, "/opt/x")
        c.run(["systemctl", "is-system-running"])
        c.host_cmd(["dnsperf", ...])  # a host binary inside the container's netns only

The root file system is made by `debootstrap` from the Debian mirror apt
uses on this host, once, under CACHE_DIR (keyed by the package list), and
never changed afterwards: each boot runs on a tmpfs overlay of it
(`--volatile=overlay`), so concurrent test sessions share one cached root
and every boot starts clean. The container has no network of its own (only
`lo`); Python packages reach it as wheels built on the host
(`wheels_for_twindns()`), installed with `pip --no-index`.

Commands run inside through `nsenter` into every namespace of the
container's PID 1 (with its root), with a clean environment.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

CACHE_DIR = Path(os.environ.get("TWINDNS_CI_CACHE", "/var/cache/twindns-ci"))
SUITE = "bookworm"
PACKAGES = ("systemd", "dbus", "iproute2", "iptables", "nftables", "python3", "python3-venv", "unbound")
FALLBACK_MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_TIMEOUT = 1800
BOOT_TIMEOUT = 90
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REPO = Path(__file__).resolve().parents[2]


class ContainerError(RuntimeError):
    """The container could not be built, booted, or asked to do something."""


def apt_mirror(paths: tuple[str, ...] = ("/etc/apt/sources.list", "/etc/apt/sources.list.d")) -> str:
    """The Debian archive this host's apt uses (one-line or deb822 format)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.suffix in (".list", ".sources"))
        elif p.is_file():
            files.append(p)
    for f in files:
        text = f.read_text(errors="replace")
        for line in text.splitlines():
            line = line.strip()
            m = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m and not m.group(2).endswith("-security") and "security" not in m.group(1):
                return m.group(1)
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split() and "security" not in uris.group(1):
                return uris.group(1)
    return FALLBACK_MIRROR


def _root_key() -> str:
    return hashlib.sha256(" ".join((SUITE, *PACKAGES)).encode()).hexdigest()[:12]


def debian_root(cache: Path = CACHE_DIR) -> Path:
    """The cached root file system, made by debootstrap if it is not there yet.
    Several test sessions may ask at once: one builds, the others wait."""
    root = cache / f"{SUITE}-{_root_key()}"
    if (root / "usr/lib/systemd/systemd").exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "usr/lib/systemd/systemd").exists():
            return root
        partial = cache / f".{root.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(partial),
                apt_mirror()]
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT)
        except FileNotFoundError:
            raise ContainerError("debootstrap is not installed (apt-get install debootstrap)") from None
        if p.returncode != 0:
            tail = (p.stdout + p.stderr).strip().splitlines()[-15:]
            raise ContainerError(f"{' '.join(argv)} failed ({p.returncode}):\n" + "\n".join(tail))
        # What a booted image needs and debootstrap does not do: a machine id is made at boot
        # (empty file = "first boot" semantics are not wanted), no getty on a console we lack.
        (partial / "etc/machine-id").write_text("")
        for unit in ("getty.target", "console-getty.service", "systemd-networkd-wait-online.service"):
            link = partial / "etc/systemd/system" / unit
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
        os.rename(partial, root)
    return root


def wheels_for_twindns(dest: Path) -> Path:
    """Wheels of this checkout and all its runtime dependencies, for `pip install --no-index`."""
    dest.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(dest), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise ContainerError(f"pip wheel failed: {p.stderr.strip()[-2000:]}")
    return dest


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def _ns_pid1(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    m = re.search(r"^NSpid:\s+(.+)$", status, re.M)
    return bool(m) and m.group(1).split()[-1] == "1" and len(m.group(1).split()) > 1


class ContainerNet:
    """The container's network namespace seen like a helpers.netns.Netns: host
    programs (unbound, dnsperf, dig) started there with the host's files."""

    def __init__(self, container: "Container") -> None:
        self.container = container
        self._procs: list[subprocess.Popen] = []

    def cmd(self, argv: list[str]) -> list[str]:
        return self.container.host_cmd(argv)

    def run(self, argv: list[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.cmd(argv), check=check, timeout=timeout, **kw)

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(self.cmd(argv), **kw)
        self._procs.append(p)
        return p

    def close(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


class Container:
    """One booted container (see module doc). `leader` is the host pid of its PID 1."""

    def __init__(self, root: Path, proc: subprocess.Popen, leader: int, log_path: Path) -> None:
        self.root = root
        self.proc = proc
        self.leader = leader
        self.log_path = log_path
        self.net = ContainerNet(self)

    @classmethod
    def boot(cls, root: Path, log_path: Path | None = None, timeout: float = BOOT_TIMEOUT) -> "Container":
        log_path = log_path or Path(f"/tmp/twindns-nspawn-{os.getpid()}.log")
        log = open(log_path, "wb")
        argv = ["systemd-nspawn", "--quiet", "-b", "--register=no", "--keep-unit", "--private-network",
                "--volatile=overlay", f"--machine=twci{os.getpid()}", "-D", str(root)]
        # Its own session: the nspawn process and its console never see the test's signals.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        leader = None
        while leader is None and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited {proc.returncode}: {log_path.read_text()[-3000:]}")
            leader = next((c for c in _children(proc.pid) if _ns_pid1(c)), None)
            time.sleep(0.05)
        container = cls(root, proc, leader or -1, log_path)
        if leader is None:
            container.close()
            raise ContainerError(f"no container PID 1 under nspawn pid {proc.pid} after {timeout:g} s")
        try:
            container.wait_booted(deadline)
        except ContainerError:
            container.close()
            raise
        return container

    def wait_booted(self, deadline: float) -> str:
        """Until PID 1 has finished starting up (running, or degraded: some unit failed)."""
        state = ""
        while time.monotonic() < deadline:
            state = self.run(["systemctl", "is-system-running"], check=False, timeout=10).stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.2)
        raise ContainerError(f"container did not finish booting (state {state!r}): {self.log_path.read_text()[-3000:]}")

    # -- running things ----------------------------------------------------
    def cmd(self, argv: list[str], env: dict | None = None) -> list[str]:
        """`argv` run inside: every namespace of the container's PID 1, its root, a clean environment."""
        assignments = [f"{k}={v}" for k, v in {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", **(env or {})}.items()]
        return ["nsenter", "-t", str(self.leader), "-a", "-r", "-w", "env", "-i", *assignments, *argv]

    def run(self, argv: list[str], check: bool = True, timeout: float = 120, env: dict | None = None,
            **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        p = subprocess.run(self.cmd(argv, env), timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise ContainerError(f"in container: {' '.join(argv)} exited {p.returncode}:\n"
                                 f"{p.stdout[-2000:] if p.stdout else ''}{p.stderr[-2000:] if p.stderr else ''}")
        return p

    def popen(self, argv: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(argv, env), **kw)

    def host_cmd(self, argv: list[str]) -> list[str]:
        """A host program run in the container's network namespace only (the host's files and tools)."""
        return ["nsenter", "-t", str(self.leader), "-n", *argv]

    def path(self, inside: str) -> Path:
        """Where a path inside the container is reachable from the host."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def copy_in(self, src: Path, dest: str) -> None:
        """Copy a host file or directory tree to `dest` inside the container."""
        target = self.path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(src).is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)

    def write(self, dest: str, text: str, mode: int = 0o644) -> None:
        target = self.path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        os.chmod(target, mode)

    def journal(self, unit: str | None = None, lines: int = 200) -> str:
        argv = ["journalctl", "--no-pager", "-n", str(lines)] + (["-u", unit] if unit else [])
        return self.run(argv, check=False).stdout

    # -- stopping ------------------------------------------------------------
    def install_wheels(self, wheels: Path, venv: str = "/opt/twindns") -> str:
        """A venv at `venv` inside with twindns from `wheels` (no index: the container
        has no network); returns its `twindns` command."""
        self.copy_in(wheels, "/var/tmp/twindns-wheels")
        self.run(["python3", "-m", "venv", venv])
        self.run([f"{venv}/bin/pip", "install", "--quiet", "--no-index", "--disable-pip-version-check",
                  "--find-links", "/var/tmp/twindns-wheels", "twindns"], timeout=600)
        return f"{venv}/bin/twindns"

    def close(self, timeout: float = 30) -> None:
        """Power the container off (SIGRTMIN+4 to its PID 1 = poweroff); kill it if it does not go."""
        self.net.close()
        if self.proc.poll() is None and self.leader > 0:
            try:
                os.kill(self.leader, signal.SIGRTMIN + 4)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
