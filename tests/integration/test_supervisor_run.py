"""`twindns run` in a network namespace with a real unbound upstream: both
workers serve 169.254.20.10:53 without privileges, restart and reload behave
as an operator expects, SIGTERM leaves nothing behind."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import pytest

from helpers.twindns import LISTEN, Supervisor, reachable_python, write_config
from helpers.worker import query as ns_query

pytestmark = pytest.mark.netns


def query(netns, name: str = "a.test", timeout: float = 2.0):
    """Ask LISTEN:53 from inside the namespace with dig; returns (rcode text, answers)."""
    p = netns.run(["dig", "+tries=1", f"+time={int(timeout)}", "+short", f"@{LISTEN}", name, "A"], check=False)
    return p.returncode, p.stdout.split()


@pytest.fixture
def sup(netns, upstream, tmp_path):
    s = Supervisor(netns, write_config(tmp_path / "twindns.toml"))
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            s.terminate()


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def test_both_workers_serve_unprivileged(sup, netns):
    status = sup.wait_ready()
    assert status["healthy"] is True
    # The fields DESIGN.md promises to tools reading `status --json`.
    assert isinstance(status["version"], str)
    assert {"pid", "uptime"} <= set(status["supervisor"])
    for w in status["workers"]:
        assert {"slot", "pid", "state", "generation", "restarts", "queries", "cache_entries"} <= set(w)
    assert {"interface", "addresses", "backend", "rules_ok"} <= set(status["network"])
    assert [w["state"] for w in status["workers"]] == ["ready", "ready"]
    assert status["network"]["interface"] == "nodelocaldns"
    assert status["network"]["addresses"] == [LISTEN] and status["network"]["rules_ok"] is True
    for w in status["workers"]:
        st = proc_status(w["pid"])
        assert int(st["CapEff"], 16) == 0, st["CapEff"]
        assert int(st["CapPrm"], 16) == 0
        assert st["Uid"].split()[0] != "0" and st["Uid"].split()[1] != "0"
        assert st["Groups"] == "" or "0" not in st["Groups"].split()
    rc, answers = query(netns)
    assert rc == 0 and answers == ["192.0.2.10"]
    p = sup.cli("status")
    assert p.returncode == 0, p.stderr
    assert "ready" in p.stdout and "nodelocaldns" in p.stdout and "rules ok" in p.stdout
    assert http_get(netns, 8080, "/health") == (200, "ok")
    code, body = http_get(netns, 9253, "/metrics")
    assert code == 200 and "twindns_" in body


def http_get(netns, port: int, path: str) -> tuple[int, str]:
    code = ("import urllib.request, urllib.error, sys\n"
            f"try: r = urllib.request.urlopen('http://{LISTEN}:{port}{path}', timeout=5)\n"
            "except urllib.error.HTTPError as e: r = e\n"
            "print(r.status); print(r.read().decode().strip().splitlines()[0])\n")
    out = netns.run([sys.executable, "-c", code]).stdout.splitlines()
    return int(out[0]), out[1]


def test_network_state_is_repaired_and_reported(netns, upstream, tmp_path):
    s = Supervisor(netns, write_config(tmp_path / "twindns.toml", top="[firewall]\nresync_interval = 1\n"))
    try:
        assert s.wait_ready()["network"]["last_repair"] is None
        netns.run(["ip", "addr", "del", f"{LISTEN}/32", "dev", "nodelocaldns"])
        st = s.wait(lambda st: st["network"]["last_repair"] is not None, 10, "repair")
        assert any(LISTEN in c for c in st["network"]["last_repair"]["changes"])
        assert "netsetup_repaired" in s.output()
        assert "last repair: " in s.cli("status").stdout
    finally:
        s.terminate()


def test_rolling_restart_replaces_both_slots_one_at_a_time(sup, netns):
    before = {w["slot"]: w for w in sup.wait_ready()["workers"]}
    p = sup.cli("restart")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    # Slot A is fully done before slot B starts, and it says so as it goes.
    a_done = next(i for i, l in enumerate(lines) if l.startswith("slot A: done"))
    b_start = next(i for i, l in enumerate(lines) if l.startswith("slot B: started"))
    assert a_done < b_start
    assert lines[-1] == "restart: done"
    after = {w["slot"]: w for w in sup.status()["workers"]}
    for slot in "AB":
        assert after[slot]["state"] == "ready"
        assert after[slot]["pid"] != before[slot]["pid"]
        assert after[slot]["generation"] > before[slot]["generation"]
        assert after[slot]["restarts_by_cause"]["rolling"] == 1
        assert not os.path.exists(f"/proc/{before[slot]['pid']}")
    assert query(netns) == (0, ["192.0.2.10"])


def cache_in_both_workers(sup, netns, names: list[str]) -> None:
    """Each worker has its own cache, and the kernel picks the worker by the
    client's source port: asks from fresh sockets, 16 per name at a time,
    until both workers report every name cached."""
    def both(st: dict) -> bool:
        return all((w["cache_entries"] or 0) >= len(names) for w in st["workers"])
    for _ in range(6):
        for name in names * 16:
            assert ns_query(netns, (LISTEN, 53), dns.message.make_query(name, "A")).answer
        try:
            sup.wait(both, 3, "every name cached in both workers")
            return
        except AssertionError:
            continue        # one name kept missing a worker: ask again
    sup.wait(both, 1, "every name cached in both workers")


def wait_for_handoffs(sup, count: int, seen_before: int) -> None:
    deadline = time.monotonic() + 5      # a receiving worker logs when the stream has ended
    while sup.output().count("cache handoff: stored") < seen_before + count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sup.output().count("cache handoff: stored") >= seen_before + count, sup.output()[-3000:]


def asked_upstream_for(netns, upstream, names: list[str], rounds: int) -> int:
    before = upstream.queries()
    for name in names * rounds:
        reply = ns_query(netns, (LISTEN, 53), dns.message.make_query(name, "A"))
        assert reply.answer[0][0].address == "192.0.2.1"
    return upstream.queries() - before


def test_rolling_restart_hands_the_cache_to_the_new_workers(sup, netns, upstream):
    """Names cached before `twindns restart` are still hits after it: each
    old worker streams its cache to its successor."""
    sup.wait_ready()
    names = [f"keep{i}.hit.test" for i in range(40)]
    cache_in_both_workers(sup, netns, names)
    seen = sup.output().count("cache handoff: stored")
    p = sup.cli("restart")
    assert p.returncode == 0, p.stderr
    wait_for_handoffs(sup, 2, seen)
    assert asked_upstream_for(netns, upstream, names, 1) == 0, "every name answered from a handed-over cache"


def test_a_killed_workers_replacement_copies_the_other_workers_cache(sup, netns, upstream):
    sup.wait_ready()
    names = [f"copy{i}.hit.test" for i in range(40)]
    cache_in_both_workers(sup, netns, names)
    assert "cache handoff" not in sup.output(), "workers started together copy nothing"
    victim = sup.workers()["A"]["pid"]
    os.kill(victim, signal.SIGKILL)
    sup.wait(lambda st: st["workers"][0]["pid"] not in (None, victim) and st["workers"][0]["state"] == "ready",
             15, "slot A replaced")
    wait_for_handoffs(sup, 1, 0)
    # 4 asks per name from fresh sockets reach the replacement too (all but
    # 2**-4 of the names): none of them goes upstream.
    assert asked_upstream_for(netns, upstream, names, 4) == 0


def test_reload_refuses_an_invalid_config_and_applies_a_valid_one(sup, netns):
    gens = {w["slot"]: w["generation"] for w in sup.wait_ready()["workers"]}
    good = sup.config.read_text()
    sup.config.write_text(good.replace("probe_interval = 0.5", 'probe_interval = "fast"'))
    p = sup.cli("reload")
    assert p.returncode != 0
    assert 'supervisor.probe_interval = "fast": expected a number of seconds > 0' in p.stderr
    # A mistake in a worker section is caught too (by the worker's own check).
    sup.config.write_text(good + '[cache]\ncapacity = "lots"\n')
    p = sup.cli("reload")
    assert p.returncode != 0 and "cache.capacity" in p.stderr
    status = sup.status()
    assert {w["slot"]: w["generation"] for w in status["workers"]} == gens, "old workers keep serving"
    assert query(netns) == (0, ["192.0.2.10"])
    # ... but not called healthy: the file on disk would be refused at the next start
    assert not status["healthy"] and status["config"]["file_valid"] is False
    assert "cache.capacity" in status["config"]["file_error"]
    assert sup.cli("status").returncode == 1
    # A valid file: rolling restart onto it. `.hit.test` names now answer with a header rule applied.
    sup.config.write_text(good + '[[header]]\nzone = "."\nclear = ["ra"]\n')
    p = sup.cli("reload")
    assert p.returncode == 0, p.stderr
    status = sup.status()
    assert all(w["generation"] > gens[w["slot"]] for w in status["workers"])
    assert status["healthy"] and status["config"]["file_valid"] and not status["config"]["file_differs"]
    flags = netns.run(["dig", "+tries=1", "+time=2", f"@{LISTEN}", "a.test", "A"]).stdout
    assert "flags: qr rd;" in flags or ("flags: qr" in flags and " ra" not in flags.split("flags:")[1].split(";")[0])


def test_reload_adds_and_removes_a_listen_address(sup, netns):
    """A reload onto a second address serves it; a reload back takes it off
    the interface and stops answering there, and is not rolled back (it
    was: steering the old workers' sockets of the removed address failed
    with 'Network is unreachable')."""
    second = "169.254.20.11"
    sup.wait_ready()
    one = sup.config.read_text()
    sup.config.write_text(one.replace(f'listen = ["{LISTEN}"]', f'listen = ["{LISTEN}", "{second}"]'))
    p = sup.cli("reload")
    assert p.returncode == 0, p.stderr
    dig = ["dig", "+tries=1", "+time=2", "+short", "a.test", "A"]
    assert netns.run([*dig, f"@{second}"], check=False).stdout.split() == ["192.0.2.10"]
    sup.config.write_text(one)
    p = sup.cli("reload")
    assert p.returncode == 0, p.stderr + sup.log_path.read_text(errors="replace")[-3000:]
    assert second not in netns.run(["ip", "addr"]).stdout
    assert netns.run([*dig, f"@{second}"], check=False).returncode != 0
    assert query(netns) == (0, ["192.0.2.10"])
    assert sup.status()["healthy"]


def test_sighup_with_invalid_config_keeps_serving(sup, netns):
    gens = [w["generation"] for w in sup.wait_ready()["workers"]]
    sup.config.write_text(sup.config.read_text() + "bogus = 1\n")
    sup.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload_refused" not in sup.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "bogus: unknown key" in sup.output()
    assert [w["generation"] for w in sup.status()["workers"]] == gens
    assert query(netns) == (0, ["192.0.2.10"])


def test_crash_loop_backs_off_while_the_other_slot_serves(netns, upstream, tmp_path):
    config = write_config(tmp_path / "twindns.toml", supervisor="backoff_initial = 2.0\nbackoff_max = 8.0\n")
    s = Supervisor(netns, config)
    try:
        s.wait_ready()
        for n in range(1, 4):
            pid = s.wait(lambda st: st["workers"][0]["state"] == "ready", 15, "slot A ready")["workers"][0]["pid"]
            os.kill(pid, signal.SIGKILL)
            st = s.wait(lambda st: st["workers"][0]["restarts_by_cause"]["crash"] == n, 5, f"crash {n} seen")
            assert query(netns) == (0, ["192.0.2.10"]), "slot B answers throughout"
        # First crash: respawned at once; later quick crashes: 2 s, then 4 s.
        a = s.status()["workers"][0]
        assert a["state"] == "failed" and a["respawn_in"] is not None and 2.0 < a["respawn_in"] <= 4.0
        p = s.cli("status")
        assert p.returncode == 1, "one slot down is degraded"
        assert "crash loop, respawn in" in p.stdout
        st = s.wait(lambda st: st["workers"][0]["state"] == "ready", 10, "slot A back")
        assert st["healthy"]
    finally:
        s.terminate()


def test_both_workers_crashing_queues_clients_instead_of_refusing_them(sup, netns):
    """With no other worker serving, a crashed worker's sockets stay in the
    reuseport group: queries sent before the replacements are bound queue
    there and are answered, instead of being refused (ICMP port unreachable)."""
    import dns.message
    from helpers.worker import ns_socket
    sup.wait_ready()
    assert query(netns) == (0, ["192.0.2.10"])
    pids = [w["pid"] for w in sup.status()["workers"]]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)                 # both exits handled; the replacements are still starting
    with ns_socket(netns) as client:
        ids = set()
        for i in range(20):
            q = dns.message.make_query("a.test", "A")
            q.id = 1000 + i
            ids.add(q.id)
            client.sendto(q.to_wire(), (LISTEN, 53))
        got = set()
        deadline = time.monotonic() + 10
        while got != ids and time.monotonic() < deadline:
            client.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                got.add(dns.message.from_wire(client.recv(4096)).id)
            except (TimeoutError, OSError):
                break
    assert got == ids, f"answered {len(got)} of {len(ids)} queries sent while no worker served"
    sup.wait_ready()


def our_rules(netns) -> list[str]:
    out = netns.run(["iptables-nft-save"]).stdout + netns.run(["iptables-legacy-save"]).stdout
    return [l for l in out.splitlines() if "twindns" in l]


def test_sigterm_drains_tears_down_and_exits_0(sup, netns):
    sup.wait_ready()
    assert our_rules(netns)
    sock = sup.config.parent / "control.sock"
    assert oct(os.stat(sock).st_mode & 0o777) == "0o660"
    pids = [w["pid"] for w in sup.status()["workers"]]
    assert sup.terminate() == 0
    out = sup.output()
    assert out.count("worker_stopped") == 2 and 'how="exit 0"' in out
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)
    assert netns.run(["ip", "link", "show", "nodelocaldns"], check=False).returncode != 0
    assert our_rules(netns) == []
    assert not sock.exists()


def test_second_sigterm_stops_at_once(sup, netns):
    sup.wait_ready()
    pids = [w["pid"] for w in sup.status()["workers"]]
    os.kill(pids[0], signal.SIGSTOP)          # this one cannot drain: the first SIGTERM would wait
    sup.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert sup.proc.poll() is None, "still draining"
    start = time.monotonic()
    assert sup.terminate(timeout=10) == 0
    assert time.monotonic() - start < 3.0
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)
    assert netns.run(["ip", "link", "show", "nodelocaldns"], check=False).returncode != 0


def test_status_for_anyone_mutations_for_root_only(netns, upstream, tmp_path):
    # The socket must sit where uid 65534 may reach it: a private 0755 dir in /tmp.
    sockdir = Path(tempfile.mkdtemp(prefix="twctl", dir="/tmp"))
    os.chmod(sockdir, 0o755)
    sock = sockdir / "control.sock"
    s = Supervisor(netns, write_config(tmp_path / "twindns.toml", control_socket=sock))
    try:
        s.wait_ready()
        # gid 0 may open the 0660 socket; uid 65534 is not root.
        base = ["setpriv", "--reuid=65534", "--regid=0", "--clear-groups", sys.executable, "-m", "supervisor"]
        st = netns.run(reachable_python(base + ["status", "--socket", str(sock)]), check=False)
        assert st.returncode == 0, st.stderr
        assert "ready" in st.stdout
        r = netns.run(reachable_python(base + ["restart", "--socket", str(sock)]), check=False)
        assert r.returncode == 1 and "restart needs root (uid 0); you are uid 65534" in r.stderr
        # Others (not uid 0, not gid 0) cannot even connect.
        other = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "supervisor"]
        o = netns.run(reachable_python(other + ["status", "--socket", str(sock)]), check=False)
        assert o.returncode == 2 and "permission denied" in o.stderr
    finally:
        s.terminate()
        shutil.rmtree(sockdir, ignore_errors=True)


def test_worker_config_error_stops_respawning_and_says_why(netns, upstream, tmp_path):
    # `ip netns exec` shows /etc/netns/NAME/resolv.conf as /etc/resolv.conf to
    # what runs in the namespace: the workers' "resolv.conf" upstream.
    etc = Path("/etc/netns") / netns.name
    etc.mkdir(parents=True)
    resolv = etc / "resolv.conf"
    try:
        resolv.write_text("nameserver 127.0.0.2\n")
        config = write_config(tmp_path / "twindns.toml")
        config.write_text(config.read_text().replace('servers = ["127.0.0.2:53"]', 'servers = ["resolv.conf"]'))
        s = Supervisor(netns, config)
        try:
            s.wait_ready()
            # Now resolv.conf names only our own address: a respawned worker
            # must refuse to forward to itself (exit 78), and must not be
            # respawned in a loop.
            with open(resolv, "r+") as f:          # same inode: the bind mount shows it
                f.truncate(0)
                f.write(f"nameserver {LISTEN}\n")
            os.kill(s.workers()["A"]["pid"], signal.SIGKILL)
            st = s.wait(lambda st: st["workers"][0]["given_up"] is not None, 10, "slot A given up")
            a = st["workers"][0]
            assert a["state"] == "failed" and "exited 78 (configuration error)" in a["given_up"]
            time.sleep(1.5)
            assert s.workers()["A"]["restarts_by_cause"] == st["workers"][0]["restarts_by_cause"], "no respawn"
            p = s.cli("status")
            assert p.returncode == 1 and "configuration error" in p.stdout
            assert query(netns) == (0, ["192.0.2.10"]), "slot B still serves"
        finally:
            s.terminate()
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def test_unready_replacement_aborts_and_the_old_worker_keeps_serving(sup, netns):
    before = {w["slot"]: w for w in sup.wait_ready()["workers"]}
    # Valid, but no worker can answer its first probe within 10 ms.
    sup.config.write_text(sup.config.read_text().replace("ready_timeout = 10.0", "ready_timeout = 0.01"))
    p = sup.cli("reload")
    assert p.returncode == 1
    assert "slot A: new worker" in p.stderr and "did not become ready" in p.stderr
    assert "the old worker keeps serving" in p.stderr
    after = {w["slot"]: w for w in sup.status()["workers"]}
    assert {s: (w["pid"], w["state"]) for s, w in after.items()} == \
        {s: (w["pid"], "ready") for s, w in before.items()}
    assert after["A"]["replacing"] is None, "the failed replacement is gone"
    assert query(netns) == (0, ["192.0.2.10"])


def test_concurrent_restarts_are_serialised(sup, netns):
    gens = {w["slot"]: w["generation"] for w in sup.wait_ready()["workers"]}
    argv = netns.cmd([sys.executable, "-m", "supervisor", "restart", "--config", str(sup.config)])
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    st = sup.status()
    assert all(w["restarts_by_cause"]["rolling"] == 2 for w in st["workers"])
    # Each slot went through exactly two new generations; at no point were
    # both replaced at once (the log shows A, B, A, B).
    order = [l.split("slot=")[1][0] for l in sup.output().splitlines() if "worker_stopped" in l]
    assert order == ["A", "B", "A", "B"]
    assert st["healthy"] and all(w["generation"] > gens[w["slot"]] for w in st["workers"])


def test_workers_unprivileged_even_when_python_is_below_a_closed_directory(netns, upstream, tmp_path):
    """No test-side help: if this machine's Python sits below a directory the
    worker user may not enter (pyenv in /root), each worker gets a private
    mount namespace exposing only the interpreter's tree there."""
    s = Supervisor(netns, write_config(tmp_path / "twindns.toml"), reachable=False)
    try:
        status = s.wait_ready()
        for w in status["workers"]:
            st = proc_status(w["pid"])
            assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0
            assert st["Uid"].split()[:2] == ["65534", "65534"]
        assert query(netns) == (0, ["192.0.2.10"])
        closed = [d for d in Path(sys.executable).resolve().parents if not os.stat(d).st_mode & 0o001]
        if closed:
            assert "each worker gets a private mount namespace" in s.output()
            w = status["workers"][0]
            st = proc_status(w["pid"])
            assert st["NoNewPrivs"] == "1" and int(st["CapBnd"], 16) == 0
        assert s.cli("restart").returncode == 0
    finally:
        assert s.terminate() == 0


def test_a_second_supervisor_refuses_and_leaves_the_first_alone(sup, netns, tmp_path):
    sup.wait_ready()
    second = netns.run(reachable_python([sys.executable, "-m", "supervisor", "run", "--config", str(sup.config)]),
                       check=False, timeout=30)
    assert second.returncode == 1
    assert "another twindns supervisor is running" in second.stderr
    st = sup.status()
    assert st["healthy"] and st["network"]["rules_ok"]
    assert our_rules(netns), "the first supervisor's rules are still there"
    assert query(netns) == (0, ["192.0.2.10"])
