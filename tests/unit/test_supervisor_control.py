"""The control socket protocol and the CLI's rendering of status, over a
real unix socket (no root needed)."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import threading

import pytest

from supervisor import client
from supervisor.control import ControlServer, ControlSocketBusy, bind_control_socket


def sample_status(ready=("ready", "ready"), problems=()) -> dict:
    workers = []
    for slot, state in zip("AB", ready):
        workers.append({"slot": slot, "pid": 100 if state == "ready" else None, "state": state,
                        "generation": 3 if state == "ready" else None, "uptime": 75.0 if state == "ready" else None,
                        "restarts": 2, "restarts_by_cause": {"rolling": 1, "crash": 1, "hang": 0, "boot": 0},
                        "last_probe_latency": 0.0004, "queries": 1234, "cache_entries": 56,
                        "hit_ratio": 0.9, "respawn_in": None if state == "ready" else 3.5,
                        "given_up": None, "replacing": None, "draining": []})
    n = sum(1 for s in ready if s == "ready")
    return {"healthy": n == 2 and not problems, "ready_workers": n, "state": "running", "version": "0.1.0",
            "supervisor": {"pid": 42, "uptime": 3700.0, "config": "/etc/twindns/twindns.toml"},
            "workers": workers,
            "network": {"interface": "nodelocaldns", "addresses": ["169.254.20.10"], "port": 53, "managed": True,
                        "backend": "nft", "rules_ok": not problems, "problems": list(problems), "repairs": 1,
                        "last_repair": {"at": 1_700_000_000.0, "changes": ["added 169.254.20.10/32"]}},
            "health": "ok\n"}


def test_status_exit_codes():
    assert client.status_exit(sample_status()) == 0
    assert client.status_exit(sample_status(("ready", "failed"))) == 1
    assert client.status_exit(sample_status(problems=("rule missing",))) == 1
    assert client.status_exit(sample_status(("failed", "failed"))) == 2


def test_render_shows_what_an_operator_asks_for():
    text = client.render(sample_status(("ready", "failed")))
    assert "supervisor pid 42" in text and "up 61m40s" in text and "0.1.0" in text
    header = next(l for l in text.splitlines() if l.startswith("slot"))
    for column in ("pid", "state", "gen", "uptime", "restarts", "probe", "queries", "cache", "hit ratio"):
        assert column in header
    row_a = next(l for l in text.splitlines() if l.startswith("A "))
    assert "ready" in row_a and "rolling 1, crash 1" in row_a and "0.4ms" in row_a and "90.0%" in row_a
    assert "slot B: crash loop, respawn in 3.5s" in text
    assert "interface nodelocaldns" in text and "backend nft" in text and "rules ok" in text
    assert "last repair: " in text and "added 169.254.20.10/32" in text


def run_server(tmp_path, handlers):
    """A ControlServer on its own loop in a thread (the test plays the CLI)."""
    path = str(tmp_path / "ctl.sock")
    loop = asyncio.new_event_loop()
    server = ControlServer(handlers)
    loop.run_until_complete(server.start(path))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def stop():
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    return path, stop


def test_requests_replies_and_progress(tmp_path):
    async def status(req, progress):
        return {"ok": True, "healthy": True}

    async def restart(req, progress):
        progress("slot A: done")
        progress("slot B: done")
        return {"ok": True}

    path, stop = run_server(tmp_path, {"status": status, "restart": restart})
    try:
        assert oct(os.stat(path).st_mode & 0o777) == "0o660"
        assert client.request(path, "status", 5) == {"ok": True, "healthy": True}
        seen = []
        assert client.request(path, "restart", 5, seen.append) == {"ok": True}
        assert seen == ["slot A: done", "slot B: done"]
        reply = client.request(path, "frobnicate", 5)
        assert reply["ok"] is False and "unknown op 'frobnicate'" in reply["error"] and "status" in reply["error"]
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b"{not json\n")
            reply = json.loads(s.makefile("rb").readline())
        assert reply["ok"] is False and reply["error"].startswith("not JSON")
        # Deeply nested (a RecursionError in json) and 10 MB lines get a clear error too.
        for line, expected in ((b"[" * 30000 + b"]" * 30000 + b"\n", "nested too deeply"),
                               (b'{"op": "' + b"x" * (10 << 20) + b'"}\n', "longer than 65536 bytes")):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                s.settimeout(10)
                sender = threading.Thread(target=s.sendall, args=(line,))
                sender.start()
                reply = json.loads(s.makefile("rb").readline())
                sender.join(10)
            assert reply["ok"] is False and expected in reply["error"], reply
        assert client.request(path, "status", 5) == {"ok": True, "healthy": True}
        # A second supervisor must not steal a live socket.
        with pytest.raises(ControlSocketBusy):
            bind_control_socket(path)
    finally:
        stop()
    assert not os.path.exists(path)


def test_stale_socket_file_is_replaced(tmp_path):
    path = str(tmp_path / "ctl.sock")
    s = bind_control_socket(path)
    s.close()                        # file left behind, nobody listening
    again = bind_control_socket(path)
    again.close()


def test_unreachable_supervisor_is_exit_2(tmp_path, capsys):
    class Args:
        command, socket, config, json = "status", str(tmp_path / "none.sock"), None, True
    assert client.main(Args()) == 2
    out = capsys.readouterr()
    assert json.loads(out.out)["healthy"] is False
    assert "no supervisor is running" in out.err


def test_a_broken_config_on_disk_does_not_hide_the_running_supervisor(tmp_path, capsys):
    """An operator mid-edit: the running supervisor keeps the config it
    accepted, so status still asks the default socket instead of saying down."""
    broken = tmp_path / "twindns.toml"
    broken.write_text('port = "fifty-three"\n')

    class Args:
        command, socket, config, json = "status", None, str(broken), True
    assert client.socket_path(Args()) == "/run/twindns/control.sock"
    err = capsys.readouterr().err
    assert "port" in err and "trying the default control socket" in err


@pytest.mark.parametrize("turns", range(6))
def test_close_leaves_no_connection_behind_whenever_a_client_came_in(tmp_path, turns):
    """A client that connects just before the supervisor stops (at any turn
    of the loop before close()) is not left served by a task that outlives
    the loop: one would end against a closed loop (an unraisable
    RuntimeError at garbage collection, seen in CI)."""
    async def scenario():
        server = ControlServer({})
        await server.start(str(tmp_path / f"ctl{turns}.sock"))
        client_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client_sock.connect(str(tmp_path / f"ctl{turns}.sock"))
        for _ in range(turns):
            await asyncio.sleep(0)
        await server.close()
        for _ in range(6):          # what close() let through would have started by now
            await asyncio.sleep(0)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        client_sock.close()
        return left

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(scenario()) == []
    finally:
        loop.close()
