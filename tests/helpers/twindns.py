"""Run `twindns run` (the supervisor) inside a test's network namespace and
talk to it with the real CLI (waiting loops ask the control socket directly).

Workers run as `nobody`. When the test machine's Python lives below a
directory `nobody` may not enter (pyenv under /root, mode 0700), the
supervisor would rightly refuse to start; `reachable_python()` then makes
that interpreter reachable *inside the test's private mount namespace only*
(ip netns exec gives every command its own, slave to the host's): a tmpfs
over the closed directory with the interpreter's tree bind-mounted back.
The host's filesystem is left as it was.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

LISTEN = "169.254.20.10"
WORKER_USER = "nobody"


def _closed_ancestor(path: str) -> tuple[str, str] | None:
    """(first ancestor others may not search, its child on the way to `path`), or None."""
    parts = Path(path).parts
    for i in range(2, len(parts)):
        d = os.path.join(*parts[:i])
        if not os.stat(d).st_mode & 0o001:
            return d, os.path.join(d, parts[i])
    return None


def reachable_python(argv: list[str]) -> list[str]:
    """`argv` wrapped so an unprivileged user can run sys.executable (see module doc)."""
    closed = _closed_ancestor(os.path.realpath(sys.executable))
    if closed is None:
        return argv
    parent, child = closed
    script = ('set -e; t=$(mktemp -d /tmp/twpy.XXXXXX); mount --bind "$1" "$t"; '
              'mount -t tmpfs -o mode=0755,size=1m tmpfs "$2"; mkdir -p "$1"; '
              'mount --move "$t" "$1"; rmdir "$t"; shift 2; exec "$@"')
    return ["sh", "-c", script, "sh", child, parent, *argv]


def write_config(path: Path, extra: str = "", supervisor: str = "", top: str = "",
                 control_socket: Path | None = None) -> Path:
    """A config serving LISTEN:53 and forwarding to the `upstream` fixture."""
    path.write_text(
        f'listen = ["{LISTEN}"]\n'
        f'user = "{WORKER_USER}"\n'
        f'control_socket = "{control_socket or path.parent / "control.sock"}"\n'
        f'health_listen = "{LISTEN}:8080"\n'
        f'metrics_listen = "{LISTEN}:9253"\n'
        f"{top}"
        "[supervisor]\nprobe_interval = 0.5\nprobe_failures = 3\ndrain_timeout = 2.0\n"
        f"ready_timeout = 10.0\n{supervisor}"
        '[[upstream]]\nzone = "."\nservers = ["127.0.0.2:53"]\n'
        f"{extra}")
    return path


class Supervisor:
    """`twindns run --config F` in `netns`, output in F's directory/run.log."""

    def __init__(self, netns, config: Path, env: dict | None = None, cwd: str | None = None,
                 prefix: tuple[str, ...] = (), reachable: bool = True, args: tuple[str, ...] = (),
                 log_name: str = "run.log") -> None:
        self.netns = netns
        self.config = config
        self.log_path = config.parent / log_name
        self._control: str | None = None       # control socket path, found on first quick_status()
        self.log = open(self.log_path, "ab")
        # `prefix` (e.g. setpriv) runs after reachable_python's mounts, right before python
        # reachable=False: leave our Python where it is (twindns must cope itself)
        argv = [*prefix, sys.executable, "-m", "supervisor", "run", *args, "--config", str(config)]
        argv = reachable_python(argv) if reachable else argv
        self.proc = netns.popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                env={"TWINDNS_STATE_DIR": str(config.parent / "state"), **os.environ, **(env or {})},
                                cwd=cwd)

    @staticmethod
    def cli_argv(*args: str) -> list[str]:
        return [sys.executable, "-m", "supervisor", *args]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.netns.run([*self.cli_argv(*args), "--config", str(self.config)], check=False, timeout=timeout)

    def status(self) -> dict:
        p = self.cli("status", "--json", timeout=10)
        return json.loads(p.stdout)

    def workers(self) -> dict[str, dict]:
        return {w["slot"]: w for w in self.status()["workers"]}

    def quick_status(self) -> dict:
        """What `status --json` prints, asked over the control socket from this
        process (supervisor/client.py, the CLI's own request): a waiting loop
        that started a Python per poll cost ~40% of a CPU on 2 cores, taken
        from the workers under test."""
        from supervisor import client
        if self._control is None:       # as the CLI finds it (a config being edited falls back to the default)
            self._control = client.socket_path(SimpleNamespace(socket=None, config=str(self.config)))
        try:
            reply = client.request(self._control, "status", client.STATUS_TIMEOUT)
        except client.SupervisorUnreachable as e:
            return {"healthy": False, "error": str(e)}
        reply.pop("ok", None)
        return reply

    def wait(self, predicate, timeout: float = 20, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited {self.proc.returncode}:\n{self.output()}")
            try:
                last = self.quick_status()
                if predicate(last):
                    return last
            except (ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last status: {last}\n{self.output()[-3000:]}")

    def wait_ready(self, timeout: float = 20) -> dict:
        return self.wait(lambda s: s.get("ready_workers") == 2, timeout, "both workers ready")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM the supervisor (not the ip-netns-exec wrapper) and wait for its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.log.close()
