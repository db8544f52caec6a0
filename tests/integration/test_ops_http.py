"""/health and /metrics served for real over TCP inside a network namespace."""
from __future__ import annotations

import json
import sys
import textwrap

import pytest

pytestmark = pytest.mark.netns

# Runs inside the namespace: the real server with the real judge and aggregator.
SERVER = textwrap.dedent("""
    import asyncio, sys
    from supervisor.config import Endpoint
    from supervisor.health import HealthJudge
    from supervisor.http import HttpServer, bind_listener, plan, text_response
    from supervisor.metrics import MetricsAggregator

    async def main():
        metrics = MetricsAggregator("9.9.9")
        metrics.update_worker("A", 1, {"queries": [["udp", "A", "NOERROR", 42]], "cache_hits": 40})
        judge = HealthJudge(drop_window=30)
        ready = {"n": 1}
        def health():
            v = judge.observe(0.0, ready["n"], [], {})
            ready["n"] = 0          # the next request sees no ready worker
            return text_response(v.status, v.body)
        def metrics_page():
            body, ctype = metrics.render()
            return 200, ctype, body
        routes = {"/health": health, "/metrics": metrics_page}
        servers = []
        for ep, paths in plan(Endpoint("127.0.0.1", 8080), Endpoint("127.0.0.1", 9253)):
            s = HttpServer({p: routes[p] for p in paths}, read_timeout=1.0, max_request_head=1024)
            await s.start(bind_listener(ep))
            servers.append(s)
        print("listening", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")

CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    def raw(data, wait_close=True):
        s = socket.create_connection(("127.0.0.1", 8080), timeout=5)
        t0 = time.monotonic()
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out.decode("latin-1"), time.monotonic() - t0
    res = {}
    res["post"] = raw(b"POST /health HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")[0]
    res["huge"] = raw(b"GET /health HTTP/1.1\\r\\nX: " + b"a" * 5000 + b"\\r\\n\\r\\n")[0]
    res["slow"] = raw(b"GET /hea")
    res["head"] = raw(b"HEAD /health HTTP/1.1\\r\\n\\r\\n")[0]
    print(json.dumps(res))
""")


@pytest.fixture
def http_server(netns):
    p = netns.popen([sys.executable, "-c", SERVER], stdout=-1, stderr=-1, text=True)
    line = p.stdout.readline()
    assert line.strip() == "listening", p.stderr.read()
    yield netns
    p.kill()


def curl(netns, url: str) -> tuple[int, str, str]:
    out = netns.run(["curl", "-sS", "-D", "-", "--max-time", "5", url]).stdout
    head, _, body = out.partition("\n\n")   # text mode turned CRLF into LF
    return int(head.split()[1]), head, body


def test_health_and_metrics_answer_over_http(http_server):
    status, head, body = curl(http_server, "http://127.0.0.1:8080/health")
    assert status == 200 and body == "ok\n"
    assert "Connection: close" in head
    status, head, body = curl(http_server, "http://127.0.0.1:8080/health")
    assert status == 503 and body == "unhealthy\nno worker is ready\n"
    status, head, body = curl(http_server, "http://127.0.0.1:9253/metrics?x=1")
    assert status == 200
    assert "text/plain; version=0.0.4" in head
    assert 'twindns_queries_total{protocol="udp",qtype="A",rcode="NOERROR"} 42.0' in body
    assert 'twindns_build_info{version="9.9.9"} 1.0' in body
    # each path only where it is configured
    assert curl(http_server, "http://127.0.0.1:8080/metrics")[0] == 404
    assert curl(http_server, "http://127.0.0.1:9253/health")[0] == 404


def test_bad_requests_get_a_clear_answer(http_server):
    res = json.loads(http_server.run([sys.executable, "-c", CLIENT], timeout=30).stdout)
    assert res["post"].startswith("HTTP/1.1 405 ") and "Allow: GET, HEAD" in res["post"]
    assert res["huge"].startswith("HTTP/1.1 431 ")
    slow, elapsed = res["slow"]
    assert slow.startswith("HTTP/1.1 408 ") and 0.8 < elapsed < 3
    assert res["head"].startswith("HTTP/1.1 200 ") and res["head"].endswith("\r\n\r\n")
