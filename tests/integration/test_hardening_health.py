"""Issue 14 item 3: an unprivileged local user holding 100 half-written HTTP
request lines per endpoint (each reopened the moment it is closed) cannot
keep `/health` or `/metrics` from answering a fresh probe within 1 s, so a
kubelet liveness probe does not restart the node's DNS."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from helpers.twindns import LISTEN, Supervisor, reachable_python, write_config

pytestmark = pytest.mark.netns

HOLDER = textwrap.dedent("""
    import selectors, socket, sys, time
    host, ports, per_port = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], int(sys.argv[3])
    sel = selectors.DefaultSelector()
    opened = 0
    def hold(port):
        global opened
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, port))
        sel.register(s, selectors.EVENT_WRITE, port)
        opened += 1
    for port in ports:
        for _ in range(per_port):
            hold(port)
    print("holding", flush=True)
    while True:
        for key, ev in sel.select(1.0):
            s, port = key.fileobj, key.data
            if ev & selectors.EVENT_WRITE:
                try:
                    s.send(b"GET /hea")         # half a request line, never finished
                    sel.modify(s, selectors.EVENT_READ, port)
                    continue
                except OSError:
                    pass
            else:
                try:
                    if s.recv(4096):
                        continue
                except OSError:
                    pass
            sel.unregister(s)                   # closed by the server: take the slot again
            s.close()
            hold(port)
""")


def test_health_and_metrics_answer_while_a_local_user_holds_half_written_requests(netns, upstream, tmp_path):
    sup = Supervisor(netns, write_config(tmp_path / "twindns.toml"))
    holder = None
    try:
        sup.wait_ready()
        argv = reachable_python(["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                                 sys.executable, "-c", HOLDER, LISTEN, "8080,9253", "100"])
        holder = netns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "holding", holder.stderr.read()
        time.sleep(1.0)
        failures = []
        for i in range(8):
            for url in (f"http://{LISTEN}:8080/health", f"http://{LISTEN}:9253/metrics"):
                p = netns.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1", url],
                              check=False)
                if p.stdout.strip() != "200":
                    failures.append((i, url, p.stdout.strip(), p.stderr.strip()))
            time.sleep(0.7)
        assert holder.poll() is None, holder.stderr.read()
        assert not failures, f"{len(failures)} of 16 probes failed: {failures[:4]}"
    finally:
        if holder is not None:
            holder.kill()
        sup.terminate()
