#!/usr/bin/env python3
"""Microbenchmark of the worker's miss path in-process (no root): worker CPU
microseconds per cache miss, from answer() to the client's reply, against a
trivial upstream in a subprocess (its CPU is not counted).

    python3 bench/micro_miss.py [--misses 20000] [--concurrency 50] [--tcp] [--capacity N] [--pair]
                                [--profile [--profile-sort ncalls]] [--default-gc]

Every query asks a new name, so each one goes upstream (over UDP, or with
--tcp over one reused TCP connection). The client
side (receiving queries, sending replies) is not included: it is the same
for hits and misses, and bench/bench_cache.py measures the whole thing.

With --pair, two workers' resolvers and caches run in the one process,
linked as the supervisor links a pair (worker/peer.py, over a real
socketpair, with a claim table), and the queries alternate between them as the kernel spreads
clients: the CPU per miss is then the pair's, peer messages included
(bench/pair_misses.py measures the real pair, with its client side).
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import resource
import socket
import subprocess
import sys
import time

import dns.message
import uvloop

from contract.claimtable import make_table_fd
from worker.answer import Answerer
from worker.cache import Cache
from worker.config import CacheConfig, UpstreamZone
from worker.claims import ClaimTable
from worker.main import tune_gc
from worker.peer import PeerLink
from worker.resolver import LocalAnswers, Resolver
from worker.stats import Stats
from worker.upstream import Forwarder

# The upstream: answers every query with one A record (TTL 1) and an OPT,
# echoing ID and question. Blocking, one process: it is not what we measure.
RESPONDER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x01\x00\x04\xc0\x00\x02\x01"
opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
while True:
    data, addr = s.recvfrom(4096)
    i = 12
    while data[i]:
        i += data[i] + 1
    q = data[12:i + 5]
    s.sendto(data[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x01" + q + rr + opt, addr)
"""


# The same over TCP: one connection at a time, queries pipelined.
TCP_RESPONDER = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(8)
print(s.getsockname()[1], flush=True)
rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x01\x00\x04\xc0\x00\x02\x01"
opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
while True:
    conn, _ = s.accept()
    frames = conn.makefile("rb")
    while len(head := frames.read(2)) == 2:
        data = frames.read(head[0] << 8 | head[1])
        i = 12
        while data[i]:
            i += data[i] + 1
        reply = data[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x01" + data[12:i + 5] + rr + opt
        conn.sendall(len(reply).to_bytes(2, "big") + reply)
    frames.close()
    conn.close()
"""


def start_responder(tcp: bool) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", TCP_RESPONDER if tcp else RESPONDER],
                            stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def client_queries(misses: int) -> list[bytes]:
    """One query (RD, EDNS) per unique name; only the first is made by dnspython."""
    first = dns.message.make_query("m0.miss.test.", "A", use_edns=0).to_wire()
    head, tail = first[:12], first[12 + len(b"\x02m0"):]
    return [head + bytes((len(label),)) + label + tail
            for label in (f"m{i}".encode() for i in range(misses))]


def one_worker(port: int, tcp: bool, capacity: int) -> tuple[Answerer, Forwarder]:
    forwarder = Forwarder([UpstreamZone(".", (("127.0.0.1", port),), timeout=2.0, force_tcp=tcp)])
    cache = Cache(capacity)
    return Answerer(cache, Resolver(forwarder, cache, CacheConfig(), (), LocalAnswers("x")), Stats()), forwarder


def link(answerers: list[Answerer]) -> list[PeerLink]:
    """The two resolvers linked as worker/service.py links a pair, with a
    claim table (worker/claims.py) when the C extension is built."""
    ends = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    table = make_table_fd()
    links = []
    for me, (sock, slot, answerer) in enumerate(zip(ends, ("A", "B"), answerers)):
        resolver = answerer.resolver
        claims = ClaimTable.open(os.dup(table), me)
        resolver.peer = PeerLink(sock, slot, b"micro", resolver.peer_asks, resolver.peer_told,
                                 lambda _link: None, resolver.peer_counts, claims)
        resolver.peer.start()
        links.append(resolver.peer)
    os.close(table)
    return links


async def run(port: int, queries: list[bytes], concurrency: int,
              tcp: bool = False, capacity: int = 0, pair: bool = False) -> tuple[float, float, float, dict]:
    misses = len(queries)
    workers = [one_worker(port, tcp, capacity or misses + 10) for _ in range(2 if pair else 1)]
    answerers = [answerer for answerer, _ in workers]
    links = link(answerers) if pair else []
    while links and not all(peer.usable for peer in links):
        await asyncio.sleep(0.01)
    done = asyncio.get_running_loop().create_future()
    state = {"next": 0, "answered": 0}

    def ask() -> None:
        i = state["next"]
        if i >= misses:
            return
        state["next"] = i + 1
        answerer = answerers[i % len(answerers)]
        reply = answerer.answer(queries[i], True, replied, None, time.monotonic())
        if reply:           # answered at once (a SERVFAIL when overloaded)
            replied(reply, None)

    def replied(_reply: bytes, _dest) -> None:
        state["answered"] += 1
        if state["answered"] == misses:
            done.set_result(None)
        else:
            ask()

    collections0 = [g["collections"] for g in gc.get_stats()]
    gc_seconds = [0.0, 0.0]         # total, start of the collection in progress

    def gc_timer(phase: str, _info: dict) -> None:
        if phase == "start":
            gc_seconds[1] = time.perf_counter()
        else:
            gc_seconds[0] += time.perf_counter() - gc_seconds[1]
    gc.callbacks.append(gc_timer)
    usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(concurrency):
        ask()
    await done
    usage, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall0
    user, system = usage.ru_utime - usage0.ru_utime, usage.ru_stime - usage0.ru_stime
    collections = [g["collections"] - c for g, c in zip(gc.get_stats(), collections0)]
    gc.callbacks.remove(gc_timer)
    print(f"garbage collections by generation: {collections}, {gc_seconds[0] / misses * 1e6:.1f} us per miss; "
          f"page faults per miss: {(usage.ru_minflt - usage0.ru_minflt) / misses:.2f}")
    upstream = {"queries": 0, "errors": 0, "rejected": 0}
    for answerer, forwarder in workers:
        server = answerer.stats.snapshot({}, answerer.cache, forwarder)["upstream"][0]
        for count in upstream:
            upstream[count] += server[count]
        await forwarder.close()
    for peer in links:
        peer.close()
    return user, system, wall, upstream


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--misses", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one run")
    ap.add_argument("--profile-sort", default="tottime", help="pstats order of the profile (tottime, ncalls, ...)")
    ap.add_argument("--profile-lines", type=int, default=30, help="functions the profile lists")
    ap.add_argument("--default-gc", action="store_true",
                    help="keep CPython's collector settings instead of the worker's (worker.main.tune_gc)")
    ap.add_argument("--pair", action="store_true", help="two linked workers, queries alternating between them")
    ap.add_argument("--tcp", action="store_true", help="upstream over TCP (force_tcp), one reused connection")
    ap.add_argument("--capacity", type=int, default=0,
                    help="cache entries (default: every miss fits; smaller: puts evict, as a full cache's do)")
    args = ap.parse_args()
    if not args.default_gc:
        tune_gc()
    responder, port = start_responder(args.tcp)
    try:
        uvloop.run(run(port, client_queries(500), args.concurrency, args.tcp, pair=args.pair))     # warm-up
        queries = client_queries(args.misses)
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        user, system, wall, up = uvloop.run(run(port, queries, args.concurrency, args.tcp, args.capacity, args.pair))
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats(args.profile_sort).print_stats(args.profile_lines)
    finally:
        responder.kill()
        responder.wait()
    print(f"{args.misses} misses, {args.concurrency} in flight: {(user + system) / args.misses * 1e6:6.1f} us CPU "
          f"per miss (user {user / args.misses * 1e6:.1f}, system {system / args.misses * 1e6:.1f}), "
          f"{args.misses / wall:7.0f} misses/s; upstream queries {up['queries']} errors {up['errors']} "
          f"rejected {up['rejected']}")


if __name__ == "__main__":
    main()
