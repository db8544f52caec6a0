"""Replacing a whole supervisor without losing a query (README, "Replacing
the service"): the successor's workers join the reuseport group first, and
only then do the predecessor's workers leave it, handing their cache over.

Two predecessors:

* a live supervisor (`twindns run --takeover`): the successor asks it, over
  its control socket, to step down (op `step_down`, root only). The old one
  connects back to the abstract AF_UNIX SOCK_SEQPACKET address the request
  names (checked: the same pid as the requester) and sends one pipe read
  end per slot, whose write end its own worker of that slot fills with its
  cache (`cache_send`), and, when the request says `"tcp": true`, one end
  of a socketpair whose other end that worker hands its open TCP
  connections into when it drains (`tcp_send`); then it steers and drains
  its workers and exits 0, leaving the address and rules to the successor.
* orphaned workers of a supervisor that died (worker/orphan.py): each
  listens on `@twindns-orphan.<pid>` in this network namespace; the
  successor connects (checked: SO_PEERCRED pid, and that the process is a
  supervised worker), streams its cache into the new worker of its slot,
  links the two for its open TCP connections (`tcp_send` / `tcp_receive`),
  drains it and waits for it to exit.

Network state is not touched by either: `ensure()` finds it in place.
"""
from __future__ import annotations

import array
import asyncio
import json
import logging
import os
import socket
import struct
from pathlib import Path

from supervisor import logs
from supervisor.channel import ChannelClosed, ControlChannel
from supervisor.rolling import link_tcp, take_tcp_from
from supervisor.states import SlotState

log = logging.getLogger("twindns.successor")

ORPHAN_PREFIX = "@twindns-orphan."
STEP_DOWN_TIMEOUT = 10.0         # for the old supervisor to answer and send its cache pipes
EXIT_GRACE = 10.0                # past drain_timeout, for a predecessor to be gone


class TakeoverFailed(RuntimeError):
    """The running supervisor did not step down; it keeps serving."""


def _creds(sock: socket.socket) -> tuple[int, int, int]:
    return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))


def orphan_pids(proc_net_unix: str = "/proc/net/unix") -> list[int]:
    """Workers of a dead supervisor waiting in this network namespace."""
    pids = []
    try:
        lines = Path(proc_net_unix).read_text().splitlines()[1:]
    except OSError:
        return []
    for line in lines:
        path = line.split()[-1] if len(line.split()) >= 8 else ""
        if path.startswith(ORPHAN_PREFIX) and path[len(ORPHAN_PREFIX):].isdigit():
            pids.append(int(path[len(ORPHAN_PREFIX):]))
    return sorted(set(pids))


def _is_worker(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"worker" in argv and b"--supervised" in argv


async def _exited(pid: int, timeout: float) -> bool:
    """Whether process `pid` (not our child) is gone within `timeout`."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    gone = loop.create_future()
    loop.add_reader(fd, lambda: gone.done() or gone.set_result(True))
    try:
        await asyncio.wait_for(gone, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _serving(pool, slot: str):
    """The READY worker serving `slot` (else any READY one), to receive a cache."""
    ready = [s.current for s in pool.slots.values() if s.current is not None and s.current.state is SlotState.READY]
    return next((w for w in ready if w.slot == slot), ready[0] if ready else None)


async def _give(worker, op: str, fd: int) -> None:
    """`fd` to `worker` with `op` (cache_receive, tcp_receive); a failure is logged."""
    try:
        await worker.runtime.channel.request(op, 2.0, fds=(fd,))
    except (ChannelClosed, TimeoutError, AttributeError) as e:
        logs.event(log, "cache_handoff_failed" if op == "cache_receive" else "tcp_handoff_failed", logging.WARNING,
                   to_pid=worker.pid, error=str(e) or "timeout")


# -- orphaned workers ---------------------------------------------------------------
async def adopt_orphans(pool, pids: list[int], drain_timeout: float) -> int:
    """Drain the orphans `pids` once our workers serve; returns how many are gone."""
    loop = asyncio.get_running_loop()
    gone = 0
    for pid in pids:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, f"\0{ORPHAN_PREFIX[1:]}{pid}")
            peer = _creds(sock)[0]
        except OSError as e:
            sock.close()
            logs.event(log, "orphan_unreachable", logging.WARNING, pid=pid, error=str(e))
            continue
        if peer != pid or not _is_worker(pid):
            sock.close()
            logs.event(log, "orphan_refused", logging.WARNING, pid=pid, peer=peer,
                       reason="not the supervised worker its name claims")
            continue
        channel = ControlChannel(sock, loop, lambda msg: None)
        try:
            stats = (await channel.request("stats", 2.0)).get("stats") or {}
            target = _serving(pool, str(stats.get("slot", "")))
            if target is not None:
                read_end, write_end = os.pipe()
                try:
                    await _give(target, "cache_receive", read_end)
                    await channel.request("cache_send", 2.0, fds=(write_end,))
                finally:
                    os.close(read_end)
                    os.close(write_end)
                # Its open TCP connections go to our worker when it drains (an older orphan refuses: FIN).
                if target.runtime is not None:
                    await link_tcp(channel, target.runtime.channel)
            await channel.request("drain", 2.0, timeout=drain_timeout)
        except (ChannelClosed, TimeoutError) as e:
            logs.event(log, "orphan_drain_failed", logging.WARNING, pid=pid, error=str(e) or "timeout")
        if await _exited(pid, drain_timeout + EXIT_GRACE):
            gone += 1
            logs.event(log, "orphan_taken_over", pid=pid, slot=stats.get("slot"), generation=stats.get("generation"))
        else:
            logs.event(log, "orphan_still_running", logging.ERROR, pid=pid)
        channel.close()
        sock.close()
    return gone


# -- a live supervisor: the successor's side ------------------------------------------
async def check_same_service(control_path: str, config, old_pid: int) -> None:
    """A takeover replaces a supervisor of the same addresses and port: one serving others
    would leave them without DNS when it steps down. Checked before we touch anything."""
    try:
        reader, writer = await asyncio.open_unix_connection(control_path)
        try:
            writer.write(json.dumps({"op": "status"}).encode() + b"\n")
            await writer.drain()
            status = json.loads(await asyncio.wait_for(reader.readline(), STEP_DOWN_TIMEOUT))
        finally:
            writer.close()
    except (OSError, ValueError, TimeoutError) as e:
        raise TakeoverFailed(f"takeover from pid {old_pid}: its status: {e}") from None
    net = status.get("network") or {}
    theirs = (sorted(net.get("addresses") or []), net.get("port"))
    ours = (sorted(config.listen), config.port)
    if theirs != ours:
        raise TakeoverFailed(f"pid {old_pid} serves {theirs[0]} port {theirs[1]}, we would serve {ours[0]} "
                             f"port {ours[1]}: a takeover needs the same listen addresses and port")


async def request_step_down(control_path: str, pool, old_pid: int, drain_timeout: float) -> None:
    """Ask the supervisor on `control_path` to step down; feed its cache pipes to our
    workers; return once it has exited. TakeoverFailed if it refuses or stays."""
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    name = f"twindns-takeover.{os.getpid()}"
    listener.bind(b"\0" + name.encode())
    listener.listen(1)
    try:
        reader, writer = await asyncio.open_unix_connection(control_path)
        # "tcp": send us, per slot, a socketpair end its worker hands its open TCP connections into.
        writer.write(json.dumps({"op": "step_down", "channel": name, "tcp": True}).encode() + b"\n")
        await writer.drain()
        try:
            conn, _ = await asyncio.wait_for(loop.sock_accept(listener), STEP_DOWN_TIMEOUT)
        except TimeoutError:
            line = await asyncio.wait_for(reader.readline(), 1.0)
            raise TakeoverFailed(f"pid {old_pid} did not connect back: {line.decode(errors='replace').strip()}")
        try:
            if _creds(conn)[0] != old_pid:
                raise TakeoverFailed(f"the handover channel's peer is not pid {old_pid}")
            while True:
                msg, fds = await asyncio.wait_for(_recv_fds(loop, conn), STEP_DOWN_TIMEOUT)
                if not msg:
                    break
                note = json.loads(msg)
                if note.get("done"):
                    break
                target = _serving(pool, str(note.get("slot", "")))
                for fd in fds:
                    if target is not None:
                        await _give(target, "tcp_receive" if note.get("tcp") else "cache_receive", fd)
                    os.close(fd)
        finally:
            conn.close()
        while True:
            line = await asyncio.wait_for(reader.readline(), STEP_DOWN_TIMEOUT)
            if not line:
                break
            reply = json.loads(line)
            if "progress" not in reply:
                if not reply.get("ok"):
                    raise TakeoverFailed(f"pid {old_pid} refused to step down: {reply.get('error')}")
                break
        writer.close()
    except (OSError, ValueError, TimeoutError) as e:
        raise TakeoverFailed(f"takeover from pid {old_pid}: {e}") from None
    finally:
        listener.close()
    if not await _exited(old_pid, drain_timeout + EXIT_GRACE):
        raise TakeoverFailed(f"pid {old_pid} said it steps down but is still running")


async def _recv_fds(loop, sock: socket.socket) -> tuple[bytes, list[int]]:
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())
    msg, fds, _flags, _addr = socket.recv_fds(sock, 65536, 8)
    return msg, fds


# -- a live supervisor: the one stepping down ---------------------------------------
async def hand_over(pool, requester_pid: int, channel_name: str, tcp: bool = False) -> None:
    """Connect to the successor's handover channel and send it, per slot, a pipe our
    worker of that slot fills with its cache, and with `tcp` a socketpair end that
    worker hands its open TCP connections into when it drains. Raises OSError/TakeoverFailed."""
    loop = asyncio.get_running_loop()
    if not channel_name.startswith("twindns-takeover.") or "\0" in channel_name:
        raise TakeoverFailed(f"channel {channel_name!r} is not a takeover channel")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, b"\0" + channel_name.encode())
        if _creds(sock)[0] != requester_pid:
            raise TakeoverFailed("the handover channel does not belong to the requester")
        for slot in pool.slots.values():
            worker = slot.current
            if worker is None or worker.state is not SlotState.READY or worker.runtime is None:
                continue
            read_end, write_end = os.pipe()
            try:
                reply = await worker.runtime.channel.request("cache_send", 2.0, fds=(write_end,))
                if reply.get("ok"):
                    sock.sendmsg([json.dumps({"slot": slot.name}).encode()],
                                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [read_end]))])
            except (ChannelClosed, TimeoutError) as e:
                logs.event(log, "cache_handoff_failed", logging.WARNING, from_pid=worker.pid, error=str(e))
            finally:
                os.close(read_end)
                os.close(write_end)
            if tcp:
                await _hand_tcp_end(sock, slot.name, worker)
        sock.send(json.dumps({"done": True}).encode())
    finally:
        sock.close()


async def _hand_tcp_end(sock: socket.socket, slot: str, worker) -> None:
    """Our worker of `slot` gets one end of a socketpair (`tcp_send`), the successor the other."""
    receive_end = await take_tcp_from(worker.runtime.channel)
    if isinstance(receive_end, str):
        logs.event(log, "tcp_handoff_failed", logging.WARNING, from_pid=worker.pid, error=receive_end)
        return
    try:
        sock.sendmsg([json.dumps({"slot": slot, "tcp": True}).encode()],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [receive_end.fileno()]))])
    finally:
        receive_end.close()


# -- orchestration, on the arbiter's loop -----------------------------------------------
async def _all_ready(pool, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pool.ready_count() < len(pool.slots):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def succeed(arbiter, orphans: list[int]) -> None:
    """Once both our workers serve: take over from the running supervisor (--takeover)
    and from orphaned workers, then claim what the predecessor held."""
    sup = arbiter.config.supervisor
    if not await _all_ready(arbiter.pool, sup.ready_timeout * 2):
        logs.event(log, "takeover_aborted", logging.ERROR, predecessor=arbiter.predecessor, orphans=len(orphans),
                   error="our workers did not become ready; the predecessor keeps serving")
        if arbiter.predecessor is not None:
            arbiter.begin_stop(1)
        return
    if arbiter.predecessor is not None:
        try:
            await request_step_down(arbiter.config.control_socket, arbiter.pool, arbiter.predecessor,
                                    sup.drain_timeout)
        except TakeoverFailed as e:
            logs.event(log, "takeover_failed", logging.ERROR, error=str(e))
            arbiter.begin_stop(1)           # without teardown: the network state is not ours
            return
        await arbiter.claim_services()
        logs.event(log, "takeover_done", predecessor=arbiter.predecessor)
        arbiter.predecessor = None
    if orphans:
        gone = await adopt_orphans(arbiter.pool, orphans, sup.drain_timeout)
        logs.event(log, "orphans_taken_over", found=len(orphans), gone=gone)


async def step_down(arbiter, request: dict, progress) -> dict:
    """The `step_down` control op: hand the cache and the network state to the
    requester, then drain and exit 0 without teardown."""
    from supervisor.control import peer_pid
    from supervisor.states import SupervisorState
    if arbiter.state is not SupervisorState.RUNNING:
        return {"ok": False, "error": f"supervisor is {arbiter.state.value}"}
    if arbiter.keep_network or arbiter.pool.held is not None:
        # Under systemd the held sockets (fd store) and twindns-net.service outlive us: our exit
        # would close the one and stop the other, under the successor's feet.
        return {"ok": False, "error": "this supervisor is the systemd service (its fd store and twindns-net.service "
                                      "hold the sockets and network state): replace it with `systemctl restart "
                                      "twindns`"}
    conn = getattr(progress, "connection", None)
    requester = peer_pid(conn) if conn is not None else -1
    try:
        await hand_over(arbiter.pool, requester, str(request.get("channel", "")), request.get("tcp") is True)
    except (OSError, TakeoverFailed) as e:
        return {"ok": False, "error": f"step down refused: {e}"}
    arbiter.network.keep = True             # the successor owns the address and rules now
    logs.event(log, "stepping_down", successor=requester)
    progress(f"pid {os.getpid()}: draining both workers, leaving the network state to pid {requester}")
    arbiter.begin_stop(0)
    return {"ok": True, "pid": os.getpid()}
