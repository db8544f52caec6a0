"""Worker pool, network state and reload logic, with fakes in place of worker
processes and netsetup children (no root, no namespaces)."""
from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

import supervisor.netstate as netstate
from supervisor import restarts as restarts_mod
from supervisor.arbiter import Arbiter
from supervisor.config import Endpoint, parse
from supervisor.pool import RestartAborted, WorkerPool
from supervisor.slot import Runtime, Worker
from supervisor.sockets import SocketSet, is_bound
from supervisor.states import RestartCause, SlotState


class Stub:
    def close(self) -> None:
        pass


class FakeHandles:
    def __init__(self, sockets: SocketSet | None = None) -> None:
        self.sockets = sockets or SocketSet()
        self.adopted = None
        self.closed = False

    def release_adopted(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        self.sockets.close()


def free_udp_endpoint() -> Endpoint:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return Endpoint("127.0.0.1", s.getsockname()[1])


def attach(worker: Worker, loop) -> Runtime:
    worker.runtime = Runtime(prober=Stub(), channel=Stub(), ready=loop.create_future(),
                             exited=loop.create_future())
    return worker.runtime


# -- finding 4: a probe answer after SIGKILL ---------------------------------
def test_probe_answer_after_kill_neither_readies_nor_binds():
    async def scenario():
        loop = asyncio.get_running_loop()
        pool = WorkerPool(loop, parse("", "x.toml"), None)
        sockets = SocketSet.open((free_udp_endpoint(),))
        w = Worker(slot="A", generation=1, pid=4242, started_at=time.monotonic(), handles=FakeHandles(sockets))
        pool.slots["A"].serve(w)
        rt = attach(w, loop)
        w.kill_cause = RestartCause.BOOT        # SIGKILL sent; its answer was already queued
        pool.probe_answered(w, 0.001, "slot=A")
        try:
            assert w.state is SlotState.STARTING
            assert not any(is_bound(s) for s in sockets.udp)
            assert not rt.ready.done()
        finally:
            sockets.close()
    asyncio.run(scenario())


def test_steered_only_when_every_udp_socket_was_connected():
    sockets = SocketSet.open((free_udp_endpoint(),))
    try:
        sockets.steer_away()                    # not bound yet: nothing to connect
        assert not sockets.steered
        sockets.bind_udp()
        sockets.steer_away()
        assert sockets.steered
        s = sockets.udp[0]
        assert s.getpeername() == s.getsockname()
    finally:
        sockets.close()


# -- finding 5: replacement ready, then gone before replace() resumes ---------
def test_replacement_exiting_right_after_ready_aborts_the_restart():
    async def scenario():
        loop = asyncio.get_running_loop()
        def fake_launch(name, adopt=None):
            w = Worker(slot=name, generation=2, pid=200, started_at=time.monotonic(), handles=FakeHandles())
            attach(w, loop)
            return w
        pool = WorkerPool(loop, parse("", "x.toml"), None, launch=fake_launch)
        old = Worker(slot="A", generation=1, pid=100, started_at=time.monotonic(),
                     state=SlotState.READY, handles=FakeHandles())
        pool.slots["A"].serve(old)
        attach(old, loop)
        task = loop.create_task(pool.replace("A", lambda text: None))
        await asyncio.sleep(0.01)
        new = pool.slots["A"].incoming
        pool.slots["A"].change_state(new, SlotState.READY, "probe answered")
        new.runtime.ready.set_result(True)
        pool.worker_exited(new, -9)             # its exit is handled before replace() resumes
        with pytest.raises(RestartAborted, match="exited after it became ready"):
            await task
        assert pool.slots["A"].current is old and old.state is SlotState.READY
        assert pool.slots["A"].incoming is None
    asyncio.run(scenario())


# -- findings 2 and 3: network state ----------------------------------------
MANAGED = '[interface]\nmanage = true\n[firewall]\nmanage = false\n'


def test_run_netjob_cancelled_kills_and_reaps_its_child(monkeypatch, tmp_path):
    pidfile = tmp_path / "pid"
    real_exec = asyncio.create_subprocess_exec

    async def fake_exec(*argv, **kw):
        return await real_exec("sh", "-c", f"echo $$ > {pidfile}; exec sleep 30", **kw)
    monkeypatch.setattr(netstate.asyncio, "create_subprocess_exec", fake_exec)
    monkeypatch.setattr(netstate, "spec_json", lambda spec: "{}")

    async def scenario():
        task = asyncio.get_running_loop().create_task(netstate.run_netjob("ensure", None))
        deadline = time.monotonic() + 5
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        pid = int(pidfile.read_text())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pid
    pid = asyncio.run(scenario())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_ensure_waits_for_a_running_one_instead_of_skipping(monkeypatch):
    calls = []

    async def fake_netjob(operation, spec):
        calls.append((operation, spec.addresses))
        await asyncio.sleep(0.05)
        return {"backend": "none", "changes": [], "problems": []}
    monkeypatch.setattr(netstate, "run_netjob", fake_netjob)

    async def scenario():
        state = netstate.NetworkState(parse(MANAGED, "x.toml"))
        first = asyncio.get_running_loop().create_task(state.ensure())     # a periodic resync
        await asyncio.sleep(0.01)
        state.config = parse('listen = ["169.254.20.10", "169.254.20.11"]\n' + MANAGED, "y.toml")
        await state.ensure()                                                # a reload's
        await first
    asyncio.run(scenario())
    assert calls == [("ensure", ("169.254.20.10",)), ("ensure", ("169.254.20.10", "169.254.20.11"))]


def test_teardown_runs_after_an_ensure_that_failed(monkeypatch):
    calls = []

    async def fake_netjob(operation, spec):
        calls.append(operation)
        if operation == "ensure":
            raise netstate.NetworkError("half done")
        return {"changes": []}
    monkeypatch.setattr(netstate, "run_netjob", fake_netjob)

    async def scenario():
        state = netstate.NetworkState(parse(MANAGED, "x.toml"))
        with pytest.raises(netstate.NetworkError):
            await state.ensure()
        await state.teardown()
    asyncio.run(scenario())
    assert calls == ["ensure", "teardown"]


# -- finding 2: a failed reload goes back to the previous config --------------
def test_reload_that_fails_to_restart_restores_the_previous_config(monkeypatch):
    old = parse("", "/etc/old.toml")
    new = parse('listen = ["169.254.20.11"]\n', "/etc/new.toml")
    monkeypatch.setattr(restarts_mod, "load", lambda arg: new)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    async def scenario():
        arb = Arbiter(old)
        arb._restart_lock = asyncio.Lock()
        arb.pool = WorkerPool(asyncio.get_running_loop(), old, None)
        arb.pool.run_as = "old-user"
        ensured = []

        async def fake_ensure():
            ensured.append(arb.network.config.path)

        async def fake_check(config):
            pass

        async def fake_replace_both(progress):
            return {"ok": False, "error": "slot A: new worker did not become ready"}
        arb.network.ensure = fake_ensure
        arb._worker_check = fake_check
        arb._replace_both = fake_replace_both
        arb._resolve_user = lambda name: "old-user"
        reply = await arb._reload(lambda text: None)
        return arb, reply, ensured
    arb, reply, ensured = asyncio.run(scenario())
    assert reply["ok"] is False
    assert arb.config is old and arb.pool.config is old and arb.network.config is old
    assert arb.pool.run_as == "old-user"
    assert ensured == ["/etc/new.toml", "/etc/old.toml"]


# -- finding 1: a crash while no other worker serves ---------------------------
def crash_with_other(other_state: SlotState | None) -> tuple[WorkerPool, SocketSet]:
    async def scenario():
        loop = asyncio.get_running_loop()
        pool = WorkerPool(loop, parse("", "x.toml"), None)
        if other_state is not None:
            other = Worker(slot="B", generation=1, pid=101, started_at=time.monotonic(),
                           state=other_state, handles=FakeHandles())
            pool.slots["B"].serve(other)
        sockets = SocketSet.open((free_udp_endpoint(),))
        sockets.bind_udp()
        dead = Worker(slot="A", generation=2, pid=102, started_at=time.monotonic(),
                      state=SlotState.READY, handles=FakeHandles(sockets))
        pool.slots["A"].serve(dead)
        attach(dead, loop)
        pool.slots["A"].backoff.failures = 1        # a respawn after backoff: no spawn here
        pool.worker_exited(dead, -9)
        return pool, pool.slots["A"].orphans
    return asyncio.run(scenario())


def connected(s: socket.socket) -> bool:
    try:
        s.getpeername()
        return True
    except OSError:
        return False


def test_crash_steers_away_only_when_another_worker_serves():
    _, orphan = crash_with_other(SlotState.READY)
    try:
        assert all(connected(s) for s in orphan.udp) and orphan.steered
    finally:
        orphan.close()
    for other in (None, SlotState.STARTING):
        _, orphan = crash_with_other(other)
        try:
            # Left in the group: datagrams queue for the replacement instead of being refused.
            assert orphan.udp and not any(connected(s) for s in orphan.udp) and not orphan.steered
        finally:
            orphan.close()


def test_replacement_binding_steers_the_adopted_sockets_before_releasing_them():
    async def scenario():
        loop = asyncio.get_running_loop()
        pool = WorkerPool(loop, parse("", "x.toml"), None)
        ep = free_udp_endpoint()
        adopted = SocketSet.open((ep,))
        adopted.bind_udp()                          # a dead worker's, left in the group
        seen = []

        class Handles(FakeHandles):
            def release_adopted(self) -> None:
                seen.extend(connected(s) for s in self.adopted.udp)
                self.adopted.close()
                self.adopted = None
        own = SocketSet.open((ep,))
        w = Worker(slot="A", generation=3, pid=103, started_at=time.monotonic(), handles=Handles(own))
        w.handles.adopted = adopted
        pool.slots["A"].serve(w)
        attach(w, loop)
        pool.probe_answered(w, 0.001, "slot=A")
        try:
            assert w.state is SlotState.READY
            assert all(is_bound(s) and not connected(s) for s in own.udp)
            assert seen == [True]
        finally:
            own.close()
    asyncio.run(scenario())
