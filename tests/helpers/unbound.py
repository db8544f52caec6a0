"""A real unbound serving local data: the upstream every integration test uses.

Zones it serves (all under `test.`):
  * `*.hit.test.`     A 192.0.2.1, TTL 3600  (redirect zone: any name answers)
  * `*.short.test.`   A 192.0.2.2, TTL 1     (misses always in flight)
  * `*.ttl.test.`     A 192.0.2.3, TTL 60
  * `a.test.` A 192.0.2.10 TTL 300, `aaaa-only.test.` AAAA, `big.test.` 30 TXT
    records (> 1232 bytes on the wire, forces TC over small UDP payloads)
  * `test.` SOA with TTL 3600 and MINIMUM 30: NXDOMAIN/NODATA under `test.`
  * `refused.test.` REFUSED
Statistics (queries received) through unbound-control over a unix socket.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

SOA = "test. 3600 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 30"


def _base_zone() -> list[str]:
    lines = [
        'local-zone: "test." static',
        f'local-data: "{SOA}"',
        'local-data: "ns.test. 3600 IN A 192.0.2.53"',
        'local-data: "a.test. 300 IN A 192.0.2.10"',
        'local-data: "aaaa-only.test. 300 IN AAAA 2001:db8::10"',
        'local-zone: "hit.test." redirect',
        'local-data: "hit.test. 3600 IN A 192.0.2.1"',
        'local-zone: "short.test." redirect',
        'local-data: "short.test. 1 IN A 192.0.2.2"',
        'local-zone: "ttl.test." redirect',
        'local-data: "ttl.test. 60 IN A 192.0.2.3"',
        'local-zone: "refused.test." refuse',
    ]
    for i in range(30):
        lines.append(f'local-data: \'big.test. 300 IN TXT "{"record-%02d-" % i}{"x" * 40}"\'')
    return lines


class Unbound:
    """unbound listening on `addr:port` inside `netns` (or the current
    namespace when netns is None)."""

    def __init__(self, workdir: Path, addr: str = "127.0.0.2", port: int = 53,
                 netns=None, extra: list[str] | None = None, threads: int = 1,
                 cache: bool = False) -> None:
        self.addr, self.port, self.netns = addr, port, netns
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.conf = self.dir / "unbound.conf"
        self.ctl = self.dir / "ctl.sock"
        server = [
            f"interface: {addr}@{port}",
            "do-daemonize: no", "use-syslog: no", 'logfile: ""', 'username: ""',
            'chroot: ""', f'directory: "{self.dir}"', 'pidfile: ""',
            "access-control: 0.0.0.0/0 allow", "access-control: ::/0 allow",
            f"num-threads: {threads}", "verbosity: 0", 'module-config: "iterator"',
            "do-not-query-localhost: no", "so-reuseport: no",
            "extended-statistics: yes", "statistics-cumulative: yes",
            "minimal-responses: yes", "do-ip6: no",
        ]
        if not cache:
            # The upstream must answer from its data every time.
            server += ["msg-cache-size: 0", "rrset-cache-size: 0"]
        server += _base_zone() + (extra or [])
        text = "server:\n" + "".join(f"    {l}\n" for l in server)
        text += ("remote-control:\n    control-enable: yes\n"
                 f'    control-interface: "{self.ctl}"\n    control-use-cert: no\n')
        self.conf.write_text(text)
        argv = ["unbound", "-d", "-p", "-c", str(self.conf)]
        self.log = open(self.dir / "unbound.log", "wb")
        if netns is not None:
            self.proc = netns.popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        else:
            self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._wait_up()

    def _control(self, *args: str) -> str:
        argv = ["unbound-control", "-c", str(self.conf), *args]
        if self.netns is not None:
            argv = self.netns.cmd(argv)
        return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout

    def _wait_up(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"unbound exited: {(self.dir / 'unbound.log').read_text()}")
            try:
                self._control("status")
                return
            except subprocess.CalledProcessError:
                time.sleep(0.1)
        raise RuntimeError("unbound did not come up")

    def queries(self) -> int:
        """Queries unbound has received so far."""
        out = self._control("stats_noreset")
        m = re.search(r"^total\.num\.queries=(\d+)$", out, re.M)
        return int(m.group(1)) if m else 0

    @property
    def server(self) -> str:
        return f"{self.addr}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def available() -> bool:
    return shutil.which("unbound") is not None and shutil.which("unbound-control") is not None
