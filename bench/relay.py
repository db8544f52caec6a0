#!/usr/bin/env python3
"""A floor for bench_cache.py's miss latency: the least a uvloop process
can do per query, relaying bytes to the upstream and back (no cache, no
parsing, no checks, nothing a resolver must do).

    python3 bench/relay.py PORT UPSTREAM [--keep]

Listens on 127.0.0.1:PORT. Each query goes to UPSTREAM:53 from a new
connected socket (a new port per query, as unbound does), or with --keep
from one socket kept open, its answers matched by ID. Not a server: for
`bench_cache.py --only twindns unbound relay` only.
"""
from __future__ import annotations

import argparse
import asyncio
import socket

import uvloop


async def relay(port: int, upstream: tuple[str, int], keep: bool) -> None:
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.setblocking(False)
    listener.bind(("127.0.0.1", port))
    kept = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    kept.setblocking(False)
    kept.connect(upstream)
    waiting: dict[bytes, tuple] = {}         # query ID -> client, for --keep

    def kept_readable() -> None:
        while True:
            try:
                answer = kept.recv(65535)
            except BlockingIOError:
                return
            client = waiting.pop(answer[:2], None)
            if client is not None:
                listener.sendto(answer, client)

    def fresh_readable(sock: socket.socket, client: tuple) -> None:
        try:
            answer = sock.recv(65535)
        except BlockingIOError:
            return
        loop.remove_reader(sock.fileno())
        sock.close()
        listener.sendto(answer, client)

    def query_readable() -> None:
        while True:
            try:
                query, client = listener.recvfrom(65535)
            except BlockingIOError:
                return
            if keep:
                waiting[query[:2]] = client
                kept.send(query)
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(upstream)
            sock.send(query)
            loop.add_reader(sock.fileno(), fresh_readable, sock, client)

    loop.add_reader(kept.fileno(), kept_readable)
    loop.add_reader(listener.fileno(), query_readable)
    await asyncio.Future()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port", type=int)
    ap.add_argument("upstream")
    ap.add_argument("--keep", action="store_true", help="one upstream socket kept open, not one per query")
    args = ap.parse_args()
    uvloop.run(relay(args.port, (args.upstream, 53), args.keep))


if __name__ == "__main__":
    main()
